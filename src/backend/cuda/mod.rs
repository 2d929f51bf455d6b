//! The `cuda` backend: NVRTC-compiled kernels, their launchers, and (elsewhere in this
//! folder) the device backend.

pub mod compile;
pub mod kernels;
pub mod libs;
pub mod backend;
mod blaslt;
mod memory;
mod model;
mod pools;
mod snapshots;
pub mod registry;
pub mod sizing;
pub mod timeline;
mod weights;

pub use backend::{CudaBackend, CudaOptions};
pub use weights::DraftHeadKind;
