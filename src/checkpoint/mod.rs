//! Checkpoint loader: maps the safetensors shards of a Hugging Face Qwen3.5 checkpoint,
//! checks every tensor against the names and shapes the config implies, and hands out
//! tensors by their canonical (layout-independent) name.
//!
//! Canonical names drop the layout prefix: `model.language_model.layers.0.mlp.up_proj.weight`
//! (official) and `model.layers.0.mlp.up_proj.weight` (text-only) both become
//! `layers.0.mlp.up_proj.weight`; `mtp.*` and `lm_head.weight` keep their names.

mod fingerprint;
mod spec;
mod weights;

pub use fingerprint::{Fingerprint, ShardPrint};
pub use spec::{expected_tensors, TensorSpec};
pub use weights::{load, load_weights, FullAttnWeights, LayerWeights, LinearAttnWeights, Mixer, MlpWeights, MtpWeights, Weights};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where one tensor lives: shard index, dtype, shape, byte range in the shard.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub shard: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
    /// Name as stored in the file.
    pub stored_name: String,
}

pub struct Checkpoint {
    pub dir: PathBuf,
    shards: Vec<Mmap>,
    /// The shard files, in `shards` order.
    pub shard_paths: Vec<PathBuf>,
    /// Canonical name -> location.
    pub tensors: BTreeMap<String, TensorInfo>,
}

/// Maps a stored tensor name to its canonical name, or None for tensors the text
/// model never uses (the vision tower).
pub fn canonical_name(stored: &str) -> Option<String> {
    if stored.starts_with("model.visual.") || stored.starts_with("visual.") {
        return None;
    }
    for prefix in ["model.language_model.", "model."] {
        if let Some(rest) = stored.strip_prefix(prefix) {
            return Some(rest.to_string());
        }
    }
    Some(stored.to_string())
}

impl Checkpoint {
    /// Opens `model.safetensors.index.json` (sharded) or `model.safetensors` in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let v: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?,
            )
            .with_context(|| format!("parsing {}", index.display()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| format!("{}: missing `weight_map`", index.display()))?;
            let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            bail!(
                "{}: no model.safetensors.index.json or model.safetensors found",
                dir.display()
            );
        };

        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = BTreeMap::new();
        for (si, path) in files.iter().enumerate() {
            let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: the file is opened read-only and we never write through the map;
            // a checkpoint modified while we run is outside what we support.
            let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
            let (header_len, meta) = SafeTensors::read_metadata(&mmap)
                .with_context(|| format!("reading safetensors header of {}", path.display()))?;
            let data_start = 8 + header_len;
            for (name, info) in meta.tensors() {
                let Some(canon) = canonical_name(&name) else { continue };
                let (start, end) = info.data_offsets;
                if let Some(prev) = tensors.insert(
                    canon.clone(),
                    TensorInfo {
                        shard: si,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: data_start + start,
                        end: data_start + end,
                        stored_name: name.clone(),
                    },
                ) {
                    bail!("tensor `{canon}` appears twice (`{}` and `{name}`)", prev.stored_name);
                }
            }
            shards.push(mmap);
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), shards, shard_paths: files, tensors })
    }

    /// Reads only what the shard headers say (names, dtypes, shapes, offsets, and that
    /// each file is exactly as long as its header implies) and keeps no mapping, so no
    /// tensor byte can be read afterwards: `bytes` and `to_f32` then fail. Parsing a
    /// header touches only the header's pages of the map.
    pub fn open_headers(dir: &Path) -> Result<Self> {
        let mut ck = Self::open(dir)?;
        ck.shards.clear();
        Ok(ck)
    }

    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .with_context(|| format!("checkpoint {}: missing tensor `{name}`", self.dir.display()))
    }

    /// Raw little-endian bytes of a tensor as stored.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let i = self.info(name)?;
        let shard = self.shards.get(i.shard).with_context(|| {
            format!("tensor `{}`: checkpoint {} was opened for its headers only", i.stored_name, self.dir.display())
        })?;
        Ok(&shard[i.start..i.end])
    }

    /// A tensor converted to f32 (from bf16, f16 or f32).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        let b = self.bytes(name)?;
        Ok(match info.dtype {
            Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            other => bail!("tensor `{}`: dtype {other:?} is not supported (expected bf16, f16 or f32)", info.stored_name),
        })
    }

    /// Checks the checkpoint against the tensors the config implies: every expected
    /// tensor present with its shape and a float dtype, nothing unknown left over.
    pub fn validate(&self, specs: &[TensorSpec]) -> Result<()> {
        let mut problems = Vec::new();
        for s in specs {
            match self.tensors.get(&s.name) {
                None if s.optional => {}
                None => problems.push(format!("missing tensor `{}` (expected shape {:?})", s.name, s.shape)),
                Some(i) if i.shape != s.shape => problems.push(format!(
                    "tensor `{}` has shape {:?}, expected {:?}",
                    i.stored_name, i.shape, s.shape
                )),
                Some(i) if !matches!(i.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) => problems.push(format!(
                    "tensor `{}` has dtype {:?}, expected bf16, f16 or f32",
                    i.stored_name, i.dtype
                )),
                Some(_) => {}
            }
        }
        let known: std::collections::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        for (canon, info) in &self.tensors {
            if !known.contains(canon.as_str()) {
                problems.push(format!("unknown tensor `{}` (shape {:?})", info.stored_name, info.shape));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let shown = problems.len().min(10);
        bail!(
            "checkpoint {} does not match its config ({} problem{}): {}{}",
            self.dir.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems[..shown].join("; "),
            if problems.len() > shown { "; ..." } else { "" }
        )
    }
}

#[cfg(test)]
mod tests;
