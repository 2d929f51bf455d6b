//! Model configuration: parses both Hugging Face config shapes of Qwen3.5
//! (`qwen3_5` with the text settings under `text_config`, and the flat
//! `qwen3_5_text`) and validates everything the engine relies on.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LayerKind {
    /// Gated DeltaNet (linear attention with a recurrent state).
    Linear,
    /// Gated full attention with partial RoPE.
    Full,
}

/// Serialized into plan headers and read back from them (unknown fields refused, so
/// a plan written by another ModelConfig shape is refused).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `qwen3_5` (official, multimodal wrapper) or `qwen3_5_text`.
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub layer_kinds: Vec<LayerKind>,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    // Full attention.
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    /// Rotated dims per head: head_dim * partial_rotary_factor.
    pub rotary_dim: usize,
    pub max_position_embeddings: usize,
    // Gated DeltaNet.
    pub linear_num_key_heads: usize,
    pub linear_num_value_heads: usize,
    pub linear_key_head_dim: usize,
    pub linear_value_head_dim: usize,
    pub conv_kernel: usize,
    // Multi-token prediction head.
    pub mtp_num_layers: usize,
    /// `eos_token_id` from config.json (text config first, then top level).
    pub eos_token_ids: Vec<u32>,
}

fn field<'a>(obj: &'a Value, name: &str) -> Result<&'a Value> {
    obj.get(name)
        .with_context(|| format!("config.json: missing field `{name}`"))
}

fn usize_field(obj: &Value, name: &str) -> Result<usize> {
    field(obj, name)?
        .as_u64()
        .map(|v| v as usize)
        .with_context(|| format!("config.json: field `{name}` must be a non-negative integer"))
}

fn f64_field(obj: &Value, name: &str) -> Result<f64> {
    field(obj, name)?
        .as_f64()
        .with_context(|| format!("config.json: field `{name}` must be a number"))
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

/// Whether lm_head is tied to embed_tokens, by transformers' (5.x) rule: a model class
/// reads `tie_word_embeddings` from its own config, default false. Both shapes keep that
/// at the top of config.json: for `qwen3_5` (`Qwen3_5ForConditionalGeneration`) it is the
/// composite config's value, whatever `text_config` says (transformers saves
/// `Qwen3_5Config(..., tie_word_embeddings=True)` with `true` at the top and `false` inside
/// `text_config`, and ties the head); for `qwen3_5_text` (`Qwen3_5ForCausalLM`) the flat
/// config is the text config.
pub fn tie_word_embeddings(root: &Value) -> bool {
    root.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false)
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", path.display()))?;
        Self::from_json(&v)
    }

    pub fn from_json(root: &Value) -> Result<Self> {
        let model_type = field(root, "model_type")?
            .as_str()
            .context("config.json: `model_type` must be a string")?
            .to_string();
        let text = match model_type.as_str() {
            "qwen3_5" => field(root, "text_config")?,
            "qwen3_5_text" => root,
            other => bail!(
                "config.json: model_type `{other}` is not supported (expected `qwen3_5` or `qwen3_5_text`)"
            ),
        };
        let tie = tie_word_embeddings(root);

        let num_layers = usize_field(text, "num_hidden_layers")?;
        let layer_kinds = match text.get("layer_types") {
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    Some("linear_attention") => Ok(LayerKind::Linear),
                    Some("full_attention") => Ok(LayerKind::Full),
                    _ => bail!("config.json: layer_types[{i}] = {t} (expected \"linear_attention\" or \"full_attention\")"),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => bail!("config.json: `layer_types` must be a list"),
            None => {
                // transformers derives the pattern from full_attention_interval (default 4).
                let every = text.get("full_attention_interval").and_then(Value::as_u64).unwrap_or(4) as usize;
                (0..num_layers)
                    .map(|i| if (i + 1) % every == 0 { LayerKind::Full } else { LayerKind::Linear })
                    .collect()
            }
        };

        // RoPE settings: transformers 5 nests them in `rope_parameters`; older exports
        // put rope_theta / partial_rotary_factor at the top of the text config.
        let rope = text.get("rope_parameters").or_else(|| text.get("rope_scaling"));
        let pick = |name: &str| rope.and_then(|r| r.get(name)).or_else(|| text.get(name));
        let rope_theta = pick("rope_theta").and_then(Value::as_f64).unwrap_or(10_000.0);
        // transformers' Qwen3.5 config defaults partial_rotary_factor to 0.25.
        let partial = pick("partial_rotary_factor").and_then(Value::as_f64).unwrap_or(0.25);
        if let Some(rt) = rope.and_then(|r| r.get("rope_type")).and_then(Value::as_str) {
            if rt != "default" {
                bail!("config.json: rope_type `{rt}` is not supported (expected `default`)");
            }
        }

        let head_dim = usize_field(text, "head_dim")?;
        let cfg = ModelConfig {
            model_type,
            hidden_size: usize_field(text, "hidden_size")?,
            intermediate_size: usize_field(text, "intermediate_size")?,
            num_layers,
            layer_kinds,
            vocab_size: usize_field(text, "vocab_size")?,
            rms_norm_eps: f64_field(text, "rms_norm_eps")?,
            tie_word_embeddings: tie,
            num_heads: usize_field(text, "num_attention_heads")?,
            num_kv_heads: usize_field(text, "num_key_value_heads")?,
            head_dim,
            rope_theta,
            rotary_dim: (head_dim as f64 * partial).round() as usize,
            max_position_embeddings: text
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(262_144) as usize,
            linear_num_key_heads: usize_field(text, "linear_num_key_heads")?,
            linear_num_value_heads: usize_field(text, "linear_num_value_heads")?,
            linear_key_head_dim: usize_field(text, "linear_key_head_dim")?,
            linear_value_head_dim: usize_field(text, "linear_value_head_dim")?,
            conv_kernel: text.get("linear_conv_kernel_dim").and_then(Value::as_u64).unwrap_or(4) as usize,
            mtp_num_layers: text.get("mtp_num_hidden_layers").and_then(Value::as_u64).unwrap_or(0) as usize,
            eos_token_ids: {
                let t = ids(text.get("eos_token_id"));
                if t.is_empty() { ids(root.get("eos_token_id")) } else { t }
            },
        };
        cfg.validate(text)?;
        Ok(cfg)
    }

    fn validate(&self, text: &Value) -> Result<()> {
        if self.layer_kinds.len() != self.num_layers {
            bail!(
                "config.json: layer_types has {} entries but num_hidden_layers is {}",
                self.layer_kinds.len(),
                self.num_layers
            );
        }
        if let Some(act) = text.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                bail!("config.json: hidden_act `{act}` is not supported (expected `silu`)");
            }
        }
        if text.get("attn_output_gate").and_then(Value::as_bool) == Some(false) {
            bail!("config.json: attn_output_gate = false is not supported (Qwen3.5 gates attention output)");
        }
        if text.get("attention_bias").and_then(Value::as_bool) == Some(true) {
            bail!("config.json: attention_bias = true is not supported (Qwen3.5 has no attention bias)");
        }
        if let Some(d) = text.get("mamba_ssm_dtype").and_then(Value::as_str) {
            if d != "float32" {
                bail!("config.json: mamba_ssm_dtype `{d}` is not supported (expected `float32`)");
            }
        }
        let nonzero = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("vocab_size", self.vocab_size),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("linear_num_key_heads", self.linear_num_key_heads),
            ("linear_num_value_heads", self.linear_num_value_heads),
            ("linear_key_head_dim", self.linear_key_head_dim),
            ("linear_value_head_dim", self.linear_value_head_dim),
            ("linear_conv_kernel_dim", self.conv_kernel),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                bail!("config.json: `{name}` must be positive, got 0");
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            bail!(
                "config.json: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_heads,
                self.num_kv_heads
            );
        }
        if !self.linear_num_value_heads.is_multiple_of(self.linear_num_key_heads) {
            bail!(
                "config.json: linear_num_value_heads ({}) must be a multiple of linear_num_key_heads ({})",
                self.linear_num_value_heads,
                self.linear_num_key_heads
            );
        }
        if self.rotary_dim == 0 || !self.rotary_dim.is_multiple_of(2) || self.rotary_dim > self.head_dim {
            bail!(
                "config.json: partial_rotary_factor gives {} rotary dims of head_dim {} (must be even, 2..=head_dim)",
                self.rotary_dim,
                self.head_dim
            );
        }
        if !self.layer_kinds.contains(&LayerKind::Full) {
            bail!("config.json: layer_types has no full_attention layer");
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            bail!("config.json: rms_norm_eps must be a positive number, got {}", self.rms_norm_eps);
        }
        Ok(())
    }

    /// Width of the Gated DeltaNet q/k/v projection (conv channels).
    pub fn linear_qkv_dim(&self) -> usize {
        2 * self.linear_num_key_heads * self.linear_key_head_dim
            + self.linear_num_value_heads * self.linear_value_head_dim
    }
    pub fn linear_value_dim(&self) -> usize {
        self.linear_num_value_heads * self.linear_value_head_dim
    }
    pub fn num_full_layers(&self) -> usize {
        self.layer_kinds.iter().filter(|k| **k == LayerKind::Full).count()
    }
    pub fn num_linear_layers(&self) -> usize {
        self.num_layers - self.num_full_layers()
    }
    /// Index of each layer within its own kind (the state / KV pool it uses).
    pub fn kind_index(&self, layer: usize) -> usize {
        let kind = self.layer_kinds[layer];
        self.layer_kinds[..layer].iter().filter(|k| **k == kind).count()
    }
}

#[cfg(test)]
mod tests;
