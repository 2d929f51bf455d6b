//! Refusing a plan that does not fit: each mismatch is one sentence naming the plan,
//! what it was built for, what we have, and the fix.

use super::arch::Arch;
use super::format::{PlanHeader, FORMAT_VERSION, KERNEL_HASH, PLAN_DTYPES};
use super::ident::{config_hash, tokenizer_hash};
use crate::checkpoint::{Checkpoint, Fingerprint};
use crate::config::ModelConfig;
use anyhow::{bail, Result};
use std::path::Path;

/// What the running server needs a plan to be. `None` fields are not checked (the CPU
/// backend needs no kernels, so it leaves `arch` and `kernel_hash` unset).
#[derive(Clone, Debug, PartialEq)]
pub struct Expected {
    pub format_version: u32,
    /// The GPU's architecture; None when no kernels will run.
    pub arch: Option<Arch>,
    pub kernel_hash: Option<String>,
    pub config_hash: Option<String>,
    pub tokenizer_hash: Option<String>,
    /// The checkpoint in the model folder (its weights).
    pub checkpoint: Option<Fingerprint>,
    /// The CUDA version (major, minor) of the installed driver, which must be able to load
    /// the plan's cubins.
    pub driver_cuda: Option<(u32, u32)>,
    /// Where the expected config and tokenizer came from (used in messages only).
    pub model_dir: Option<String>,
}

impl Default for Expected {
    fn default() -> Self {
        Expected {
            format_version: FORMAT_VERSION,
            arch: None,
            kernel_hash: None,
            config_hash: None,
            tokenizer_hash: None,
            checkpoint: None,
            driver_cuda: None,
            model_dir: None,
        }
    }
}

impl Expected {
    /// A plan to run on a GPU of `arch` with this kiln's kernels.
    pub fn for_gpu(arch: Arch) -> Self {
        Expected { arch: Some(arch), kernel_hash: Some(KERNEL_HASH.to_string()), ..Default::default() }
    }

    /// Also require the model in `dir`: its config.json, tokenizer.json and weights.
    pub fn with_model_dir(self, dir: &Path) -> Result<Self> {
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        Ok(Expected {
            config_hash: Some(config_hash(&cfg)),
            tokenizer_hash: Some(tokenizer_hash(&dir.join("tokenizer.json"))?),
            checkpoint: Some(Checkpoint::open(dir)?.fingerprint()),
            model_dir: Some(dir.display().to_string()),
            ..self
        })
    }
}

/// Whether a driver supporting CUDA `driver` (major, minor) loads cubins compiled by NVRTC
/// `nvrtc`. Within a CUDA major, minor version compatibility lets an older driver load
/// cubins (not PTX) of a newer toolkit, and newer drivers load older cubins; across majors
/// an older driver cannot (CUDA 13 cubins need a CUDA 13 driver, 580+).
pub fn driver_loads_cubins(nvrtc: (u32, u32), driver: (u32, u32)) -> bool {
    nvrtc.0 <= driver.0
}

/// The pip packages of an NVRTC a CUDA `major` driver can use, for the fix in a refusal.
pub fn nvrtc_for_driver(major: u32) -> String {
    match major {
        12 => "pip install nvidia-cuda-nvrtc-cu12==12.8.* nvidia-cuda-runtime-cu12==12.8.*".into(),
        13 => "pip install nvidia-cuda-nvrtc==13.0.* nvidia-cuda-runtime==13.0.*".into(),
        m => format!("an NVRTC of CUDA {m}.x"),
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

impl PlanHeader {
    /// Refuses a plan that does not match `want`, with one sentence. `plan` names the
    /// file in the message.
    pub fn check_named(&self, plan: &str, want: &Expected) -> Result<()> {
        let model = want.model_dir.as_deref().unwrap_or("the model");
        if self.format_version != want.format_version {
            bail!(
                "{plan} has plan format version {} but this kiln reads version {}; rebuild it with kiln-build",
                self.format_version,
                want.format_version
            );
        }
        if !PLAN_DTYPES.contains(&self.dtype.as_str()) {
            bail!(
                "{plan} holds {} GEMM weights but this kiln runs {}; rebuild it with kiln-build",
                self.dtype,
                PLAN_DTYPES.join(" or ")
            );
        }
        if let Some(arch) = want.arch {
            match self.arch {
                None => bail!(
                    "{plan} was built without CUDA kernels (--no-kernels) but this GPU is {arch}; \
                     rebuild it with kiln-build --arch {arch}"
                ),
                Some(a) if a != arch => {
                    bail!("{plan} was built for {a} but this GPU is {arch}; rebuild it with kiln-build")
                }
                Some(_) => {}
            }
        }
        if let Some(k) = &want.kernel_hash {
            if &self.kernel_hash != k {
                bail!(
                    "{plan} was built from other CUDA kernel sources (kernel hash {}, this kiln has {}); \
                     rebuild it with kiln-build",
                    short(&self.kernel_hash),
                    short(k)
                );
            }
        }
        if let (Some(driver), Some(nvrtc)) = (want.driver_cuda, self.nvrtc_version) {
            if !driver_loads_cubins(nvrtc, driver) {
                bail!(
                    "{plan} holds kernels compiled by NVRTC {}.{} but the NVIDIA driver here supports CUDA {}.{} and \
                     cannot load them; rebuild it with kiln-build using a CUDA {}.x NVRTC ({}), or upgrade the driver \
                     to one for CUDA {}.{}",
                    nvrtc.0,
                    nvrtc.1,
                    driver.0,
                    driver.1,
                    driver.0,
                    nvrtc_for_driver(driver.0),
                    nvrtc.0,
                    nvrtc.1
                );
            }
        }
        if let Some(c) = &want.config_hash {
            if &self.model_config_hash != c {
                bail!(
                    "{plan} was built for another model config (config hash {}, {model}'s config.json gives {}); \
                     rebuild it with kiln-build",
                    short(&self.model_config_hash),
                    short(c)
                );
            }
        }
        if let Some(t) = &want.tokenizer_hash {
            if &self.tokenizer_hash != t {
                bail!(
                    "{plan} was built with another tokenizer.json (hash {}, {model}'s is {}); \
                     rebuild it with kiln-build",
                    short(&self.tokenizer_hash),
                    short(t)
                );
            }
        }
        if let Some(f) = &want.checkpoint {
            if self.checkpoint.digest != f.digest {
                bail!(
                    "{plan} was built from other weights than {model} (checkpoint fingerprint {}, {model}'s is {}: {}); \
                     rebuild it with kiln-build",
                    short(&self.checkpoint.digest),
                    short(&f.digest),
                    self.checkpoint.difference(f)
                );
            }
        }
        Ok(())
    }

    /// [`check_named`](Self::check_named) with "the plan" as the name.
    pub fn check(&self, want: &Expected) -> Result<()> {
        self.check_named("the plan", want)
    }
}
