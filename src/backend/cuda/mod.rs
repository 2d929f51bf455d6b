//! The `cuda` backend: NVRTC-compiled kernels, their launchers, and (elsewhere in this
//! folder) the device backend.

pub mod compile;
pub mod kernels;
