//! What the CUDA driver says about this machine (`probe`), and the pure decision whether
//! kiln can run on it (`usable_gpu`), each refusal one sentence. `kiln probe` and
//! launch_server.sh use this instead of nvidia-smi, which containers often lack.

use super::load::require;
use super::search::CudaLib;
use crate::plan::Arch;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{result, sys};

/// One GPU as the driver reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuInfo {
    pub index: usize,
    pub name: String,
    /// (major, minor).
    pub compute_capability: (i32, i32),
    pub total_mib: u64,
}

/// Everything the decision needs; tests build it by hand.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceFacts {
    /// The driver's CUDA version (major, minor), or the sentence saying it is missing.
    pub driver: std::result::Result<(u32, u32), String>,
    /// cuInit's error, when the driver is there but does not start.
    pub init_error: Option<String>,
    pub gpus: Vec<GpuInfo>,
    /// `CUDA_VISIBLE_DEVICES`, for the message when no GPU is visible.
    pub visible_devices: Option<String>,
}

/// Asks the driver (loading it through the library search first).
pub fn probe() -> DeviceFacts {
    let visible_devices = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let driver = match require(CudaLib::Driver) {
        Ok(l) => l.version,
        Err(e) => return DeviceFacts { driver: Err(e.to_string()), init_error: None, gpus: vec![], visible_devices },
    };
    let mut facts = DeviceFacts { driver: Ok(driver), init_error: None, gpus: vec![], visible_devices };
    if let Err(e) = result::init() {
        facts.init_error = Some(format!("{e:?}"));
        return facts;
    }
    let n = match result::device::get_count() {
        Ok(n) => n,
        Err(e) => {
            facts.init_error = Some(format!("cuDeviceGetCount: {e:?}"));
            return facts;
        }
    };
    for i in 0..n {
        let Ok(dev) = result::device::get(i) else { continue };
        // SAFETY: `dev` came from cuDeviceGet.
        let attr = |a| unsafe { result::device::get_attribute(dev, a) }.unwrap_or(-1);
        let cc = (
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
        );
        // SAFETY: as above.
        let total = unsafe { result::device::total_mem(dev) }.unwrap_or(0);
        facts.gpus.push(GpuInfo {
            index: i as usize,
            name: result::device::get_name(dev).unwrap_or_else(|_| "an unnamed GPU".into()),
            compute_capability: cc,
            total_mib: (total >> 20) as u64,
        });
    }
    facts
}

/// GPU 0 and its kernel architecture, or one sentence saying why kiln cannot run here.
pub fn usable_gpu(f: &DeviceFacts) -> Result<(GpuInfo, Arch)> {
    let driver = match &f.driver {
        Ok((a, b)) => format!("{a}.{b}"),
        Err(sentence) => bail!("{sentence}"),
    };
    let visible = match &f.visible_devices {
        Some(v) => format!("CUDA_VISIBLE_DEVICES={v}"),
        None => "CUDA_VISIBLE_DEVICES unset".into(),
    };
    if let Some(e) = &f.init_error {
        bail!(
            "the NVIDIA driver (CUDA {driver}) is installed but does not start ({e}), so no GPU is usable; \
             check that this process can see a GPU ({visible}; in a container, start it with --gpus all)"
        );
    }
    let Some(gpu) = f.gpus.first() else {
        bail!("the NVIDIA driver (CUDA {driver}) sees no GPU ({visible}; in a container, start it with --gpus all)");
    };
    let (major, minor) = gpu.compute_capability;
    let arch = Arch::from_compute_capability(major, minor).map_err(|e| anyhow!("GPU {} ({}) cannot run kiln: {e}", gpu.index, gpu.name))?;
    Ok((gpu.clone(), arch))
}

/// Lines describing the facts, for `kiln probe` and start-up logs.
pub fn describe(f: &DeviceFacts) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok((a, b)) = f.driver {
        out.push(format!("driver: CUDA {a}.{b}"));
    }
    for g in &f.gpus {
        let (ma, mi) = g.compute_capability;
        out.push(format!("gpu {}: {} (compute capability {ma}.{mi}, {} MiB)", g.index, g.name, g.total_mib));
    }
    out
}
