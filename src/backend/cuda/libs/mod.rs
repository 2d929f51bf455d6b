//! The CUDA libraries kiln loads at run time (libcuda, libnvrtc, libcublasLt): where they
//! are looked for (`search`, a pure function of a fake-able environment), loading the one
//! found before cudarc's first use (`load`), and what the driver says about the GPUs
//! (`probe`, with the pure decision whether one is usable).

pub mod load;
pub mod probe;
pub mod search;

pub use load::{loaded, require, require_each, Loaded};
pub use probe::{describe, probe, usable_gpu, DeviceFacts, GpuInfo};
pub use search::{CudaLib, Place};

#[cfg(test)]
mod tests;
