//! `--arch auto`: asks the CUDA driver (found by kiln's library search, not nvidia-smi)
//! for GPU 0's compute capability.

use anyhow::{anyhow, Result};
use kiln::backend::cuda::libs::{probe, require, usable_gpu, CudaLib};
use kiln::plan::Arch;

/// GPU 0 as the driver reports it.
pub struct Gpu {
    pub arch: Arch,
    pub name: String,
    /// The driver's CUDA version (major, minor).
    pub driver_cuda: (u32, u32),
}

/// GPU 0's architecture and the driver's version, or one sentence saying why there is none
/// to ask.
pub fn detect() -> Result<Gpu> {
    let facts = probe();
    let (gpu, arch) =
        usable_gpu(&facts).map_err(|e| anyhow!("{e}; to build without asking a GPU, pass --arch sm_90a or --arch sm_100a"))?;
    let driver_cuda = require(CudaLib::Driver)?.version;
    Ok(Gpu { arch, name: gpu.name, driver_cuda })
}
