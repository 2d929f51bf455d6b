//! `--arch auto`: asks the CUDA driver for GPU 0's compute capability.

use anyhow::{bail, Context, Result};
use cudarc::driver::{result, sys};
use kiln::plan::Arch;

/// The architecture of GPU 0, or an error saying why there is none to ask.
pub fn detect_arch() -> Result<Arch> {
    // SAFETY: only probes whether libcuda can be loaded.
    if !unsafe { sys::is_culib_present() } {
        bail!("no CUDA driver found (libcuda is not loadable), so the GPU architecture cannot be detected; pass --arch sm_90a or --arch sm_100a");
    }
    result::init()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .context("initialising the CUDA driver (is a GPU visible? otherwise pass --arch sm_90a or --arch sm_100a)")?;
    let n = result::device::get_count().map_err(|e| anyhow::anyhow!("cuDeviceGetCount: {e:?}"))?;
    if n == 0 {
        bail!("the CUDA driver sees no GPU; pass --arch sm_90a or --arch sm_100a");
    }
    let dev = result::device::get(0).map_err(|e| anyhow::anyhow!("cuDeviceGet(0): {e:?}"))?;
    let attr = |a| {
        // SAFETY: `dev` came from cuDeviceGet.
        unsafe { result::device::get_attribute(dev, a) }.map_err(|e| anyhow::anyhow!("cuDeviceGetAttribute: {e:?}"))
    };
    let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    Arch::from_compute_capability(major, minor)
}
