//! What identifies the model a plan belongs to: the config hash, the tokenizer hash,
//! and the round trip of `ModelConfig` through the header.

use crate::config::ModelConfig;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The canonical serialization of a config: compact JSON of `ModelConfig`, fields in
/// declaration order. A field added to `ModelConfig` changes every hash, which is what
/// we want: old plans are refused and rebuilt.
pub fn canonical_config(cfg: &ModelConfig) -> Vec<u8> {
    serde_json::to_vec(cfg).expect("ModelConfig serializes")
}

/// SHA-256 (hex) of the canonical serialization of `cfg`.
pub fn config_hash(cfg: &ModelConfig) -> String {
    sha256_hex(&canonical_config(cfg))
}

/// SHA-256 (hex) of a tokenizer.json file's bytes.
pub fn tokenizer_hash(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(sha256_hex(&bytes))
}

/// Rebuilds a `ModelConfig` from its header JSON and checks it hashes to `expected_hash`.
pub fn config_from_header(v: &serde_json::Value, expected_hash: &str) -> Result<ModelConfig> {
    let cfg: ModelConfig =
        serde_json::from_value(v.clone()).context("plan header: `model_config` does not match this kiln's ModelConfig")?;
    let got = config_hash(&cfg);
    if got != expected_hash {
        bail!(
            "plan header: `model_config` hashes to {} but the header records {}; the header is damaged",
            &got[..12],
            &expected_hash[..expected_hash.len().min(12)]
        );
    }
    Ok(cfg)
}
