//! What identifies the model a plan belongs to: the config hash, the tokenizer hash,
//! and the round trip of `ModelConfig` through the header.

use crate::config::{LayerKind, ModelConfig};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
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

/// Mirror of `ModelConfig` for reading it back from a plan header (`ModelConfig` only
/// serializes). Building `ModelConfig` with a struct literal below makes a field added
/// there a compile error here, so the two cannot drift apart silently.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigRecord {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_layers: usize,
    layer_kinds: Vec<KindRecord>,
    vocab_size: usize,
    rms_norm_eps: f64,
    tie_word_embeddings: bool,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    rope_theta: f64,
    rotary_dim: usize,
    max_position_embeddings: usize,
    linear_num_key_heads: usize,
    linear_num_value_heads: usize,
    linear_key_head_dim: usize,
    linear_value_head_dim: usize,
    conv_kernel: usize,
    mtp_num_layers: usize,
    eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
enum KindRecord {
    Linear,
    Full,
}

/// Rebuilds a `ModelConfig` from its header JSON and checks it hashes to `expected_hash`.
pub fn config_from_header(v: &serde_json::Value, expected_hash: &str) -> Result<ModelConfig> {
    let r: ConfigRecord =
        serde_json::from_value(v.clone()).context("plan header: `model_config` does not match this kiln's ModelConfig")?;
    let cfg = ModelConfig {
        model_type: r.model_type,
        hidden_size: r.hidden_size,
        intermediate_size: r.intermediate_size,
        num_layers: r.num_layers,
        layer_kinds: r
            .layer_kinds
            .into_iter()
            .map(|k| match k {
                KindRecord::Linear => LayerKind::Linear,
                KindRecord::Full => LayerKind::Full,
            })
            .collect(),
        vocab_size: r.vocab_size,
        rms_norm_eps: r.rms_norm_eps,
        tie_word_embeddings: r.tie_word_embeddings,
        num_heads: r.num_heads,
        num_kv_heads: r.num_kv_heads,
        head_dim: r.head_dim,
        rope_theta: r.rope_theta,
        rotary_dim: r.rotary_dim,
        max_position_embeddings: r.max_position_embeddings,
        linear_num_key_heads: r.linear_num_key_heads,
        linear_num_value_heads: r.linear_num_value_heads,
        linear_key_head_dim: r.linear_key_head_dim,
        linear_value_head_dim: r.linear_value_head_dim,
        conv_kernel: r.conv_kernel,
        mtp_num_layers: r.mtp_num_layers,
        eos_token_ids: r.eos_token_ids,
    };
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
