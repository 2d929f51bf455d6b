//! Refusing a plan that does not fit: each mismatch is one sentence naming the plan,
//! what it was built for, what we have, and the fix.

use super::arch::Arch;
use super::format::{PlanHeader, FORMAT_VERSION, KERNEL_HASH, PLAN_DTYPE};
use super::ident::{config_hash, tokenizer_hash};
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
            model_dir: None,
        }
    }
}

impl Expected {
    /// A plan to run on a GPU of `arch` with this kiln's kernels.
    pub fn for_gpu(arch: Arch) -> Self {
        Expected { arch: Some(arch), kernel_hash: Some(KERNEL_HASH.to_string()), ..Default::default() }
    }

    /// Also require the model in `dir`: its config.json and tokenizer.json.
    pub fn with_model_dir(self, dir: &Path) -> Result<Self> {
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        Ok(Expected {
            config_hash: Some(config_hash(&cfg)),
            tokenizer_hash: Some(tokenizer_hash(&dir.join("tokenizer.json"))?),
            model_dir: Some(dir.display().to_string()),
            ..self
        })
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
        if self.dtype != PLAN_DTYPE {
            bail!("{plan} holds {} weights but this kiln runs {PLAN_DTYPE}; rebuild it with kiln-build", self.dtype);
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
        Ok(())
    }

    /// [`check_named`](Self::check_named) with "the plan" as the name.
    pub fn check(&self, want: &Expected) -> Result<()> {
        self.check_named("the plan", want)
    }
}
