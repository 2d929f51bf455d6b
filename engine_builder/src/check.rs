//! `kiln-build --check-only --model DIR`: everything a build decides, without the build.
//! Reads config.json, the tokenizer files and the safetensors headers (never a tensor
//! byte: the checkpoint is opened for its headers only), checks every tensor's name,
//! shape and dtype against the config, decides what each becomes in a plan (packed,
//! converted, or skipped), writes nothing, and prints one line.

use anyhow::{bail, Context, Result};
use kiln::checkpoint::Checkpoint;
use kiln::config::ModelConfig;
use kiln::plan::{plan_packing_as, tokenizer_hash, DType, Packing};
use kiln::tokenizer::Tokenizer;
use std::collections::BTreeMap;
use std::path::Path;

/// What a check found, for the summary line.
#[derive(Debug)]
pub struct CheckReport {
    pub model_type: String,
    /// Checkpoint tensors the text model reads (vision tower excluded).
    pub tensors: usize,
    /// Tensors in the plan, and the checkpoint tensors packed into them.
    pub plan_tensors: usize,
    pub packed_sources: usize,
    pub skipped: usize,
    /// (stored dtype -> plan dtype) -> tensors converted that way.
    pub conversions: BTreeMap<String, usize>,
    pub plan_bytes: u64,
    pub tokenizer_vocab: usize,
    pub tokenizer_hash: String,
}

impl CheckReport {
    pub fn summary(&self, dir: &Path) -> String {
        let conv: Vec<String> = self.conversions.iter().map(|(k, n)| format!("{n} {k}")).collect();
        format!(
            "check-only: {} ({}) is buildable: {} tensors checked, {} packed into {} plan tensors ({}), {} skipped, \
             {:.2} GiB of plan weights, tokenizer {} tokens (sha256 {}); no tensor data read, nothing written",
            dir.display(),
            self.model_type,
            self.tensors,
            self.packed_sources,
            self.plan_tensors,
            conv.join(", "),
            self.skipped,
            self.plan_bytes as f64 / (1u64 << 30) as f64,
            self.tokenizer_vocab,
            &self.tokenizer_hash[..12.min(self.tokenizer_hash.len())],
        )
    }
}

/// Checks the checkpoint in `dir` as a build with GEMM weights in `gemm` would, without
/// reading tensor data (so an fp16 plan's range check is left to the build).
pub fn check(dir: &Path, gemm: DType) -> Result<CheckReport> {
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        bail!("{} has no tokenizer.json (the plan records its hash, and the server needs it)", dir.display());
    }
    let tokenizer_hash = tokenizer_hash(&tok_path)?;
    let tok = Tokenizer::from_dir(dir)?;
    if tok.vocab_size() > cfg.vocab_size {
        bail!("the tokenizer has {} tokens but the model's vocab_size is {}", tok.vocab_size(), cfg.vocab_size);
    }
    let ck = Checkpoint::open_headers(dir)?;
    let packing = plan_packing_as(&ck, &cfg, gemm).with_context(|| format!("checking {}", dir.display()))?;
    Ok(CheckReport {
        model_type: cfg.model_type.clone(),
        tensors: ck.tensors.len(),
        plan_tensors: packing.specs.len(),
        packed_sources: packing.specs.iter().map(|s| s.sources.len()).sum(),
        skipped: packing.skipped.len(),
        conversions: conversions(&ck, &packing)?,
        plan_bytes: packing.tensor_bytes(),
        tokenizer_vocab: tok.vocab_size(),
        tokenizer_hash,
    })
}

/// How many checkpoint tensors go into the plan from each stored dtype to each plan dtype.
fn conversions(ck: &Checkpoint, packing: &Packing) -> Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for spec in &packing.specs {
        for (src, _) in &spec.sources {
            let from = format!("{:?}", ck.info(src)?.dtype).to_lowercase();
            let to = format!("{:?}", spec.dtype).to_lowercase();
            let key = if from == to { format!("{from} as is") } else { format!("{from}->{to}") };
            *out.entry(key).or_default() += 1;
        }
    }
    Ok(out)
}
