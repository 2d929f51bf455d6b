//! The model's weights as f32 host tensors (the CPU backend's input), loaded from a
//! validated checkpoint. Layouts are Hugging Face's: a linear weight is [out, in].

use super::{expected_tensors, Checkpoint};
use crate::config::{LayerKind, ModelConfig};
use anyhow::{bail, Result};
use std::path::Path;

#[derive(Clone, Debug)]
pub struct MlpWeights {
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct LinearAttnWeights {
    pub in_qkv: Vec<f32>,
    pub in_z: Vec<f32>,
    pub in_b: Vec<f32>,
    pub in_a: Vec<f32>,
    /// [channels, kernel] (the singleton group dim dropped).
    pub conv: Vec<f32>,
    pub dt_bias: Vec<f32>,
    pub a_log: Vec<f32>,
    /// Gated RMSNorm weight over one value head (plain w, not 1 + w).
    pub norm: Vec<f32>,
    pub out: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct FullAttnWeights {
    /// [heads * 2 * head_dim, hidden]: per head, head_dim query rows then head_dim gate rows.
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub o: Vec<f32>,
    pub q_norm: Vec<f32>,
    pub k_norm: Vec<f32>,
}

#[derive(Clone, Debug)]
pub enum Mixer {
    Linear(LinearAttnWeights),
    Full(FullAttnWeights),
}

#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub input_norm: Vec<f32>,
    pub post_norm: Vec<f32>,
    pub mixer: Mixer,
    pub mlp: MlpWeights,
}

#[derive(Clone, Debug)]
pub struct MtpWeights {
    pub pre_fc_norm_embedding: Vec<f32>,
    pub pre_fc_norm_hidden: Vec<f32>,
    pub fc: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct Weights {
    /// [vocab, hidden]; also the lm_head when tied.
    pub embed: Vec<f32>,
    /// Untied lm_head [vocab, hidden], or None when tied to `embed`.
    pub lm_head: Option<Vec<f32>>,
    pub norm: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    pub mtp: Option<MtpWeights>,
}

impl Weights {
    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }
}

fn mlp(ck: &Checkpoint, p: &str) -> Result<MlpWeights> {
    Ok(MlpWeights {
        gate: ck.to_f32(&format!("{p}.mlp.gate_proj.weight"))?,
        up: ck.to_f32(&format!("{p}.mlp.up_proj.weight"))?,
        down: ck.to_f32(&format!("{p}.mlp.down_proj.weight"))?,
    })
}

fn full(ck: &Checkpoint, p: &str) -> Result<FullAttnWeights> {
    let g = |n: &str| ck.to_f32(&format!("{p}.self_attn.{n}.weight"));
    Ok(FullAttnWeights {
        q: g("q_proj")?,
        k: g("k_proj")?,
        v: g("v_proj")?,
        o: g("o_proj")?,
        q_norm: g("q_norm")?,
        k_norm: g("k_norm")?,
    })
}

fn linear(ck: &Checkpoint, p: &str) -> Result<LinearAttnWeights> {
    let g = |n: &str| ck.to_f32(&format!("{p}.linear_attn.{n}"));
    Ok(LinearAttnWeights {
        in_qkv: g("in_proj_qkv.weight")?,
        in_z: g("in_proj_z.weight")?,
        in_b: g("in_proj_b.weight")?,
        in_a: g("in_proj_a.weight")?,
        conv: g("conv1d.weight")?,
        dt_bias: g("dt_bias")?,
        a_log: g("A_log")?,
        norm: g("norm.weight")?,
        out: g("out_proj.weight")?,
    })
}

fn layer(ck: &Checkpoint, p: &str, kind: LayerKind) -> Result<LayerWeights> {
    Ok(LayerWeights {
        input_norm: ck.to_f32(&format!("{p}.input_layernorm.weight"))?,
        post_norm: ck.to_f32(&format!("{p}.post_attention_layernorm.weight"))?,
        mixer: match kind {
            LayerKind::Linear => Mixer::Linear(linear(ck, p)?),
            LayerKind::Full => Mixer::Full(full(ck, p)?),
        },
        mlp: mlp(ck, p)?,
    })
}

/// Whether the checkpoint holds the MTP head; a partial head is an error.
pub fn has_mtp(ck: &Checkpoint, cfg: &ModelConfig) -> Result<bool> {
    let mtp: Vec<_> = expected_tensors(cfg).into_iter().filter(|s| s.name.starts_with("mtp.")).collect();
    let present = mtp.iter().filter(|s| ck.tensors.contains_key(&s.name)).count();
    if present != 0 && present != mtp.len() {
        let missing: Vec<_> = mtp.iter().filter(|s| !ck.tensors.contains_key(&s.name)).map(|s| s.name.as_str()).collect();
        bail!("checkpoint has a partial MTP head: missing {}", missing.join(", "));
    }
    Ok(present != 0 && cfg.mtp_num_layers > 0)
}

/// Loads f32 weights from an opened checkpoint after validating it.
pub fn load_weights(ck: &Checkpoint, cfg: &ModelConfig) -> Result<Weights> {
    ck.validate(&expected_tensors(cfg))?;
    let mtp = if has_mtp(ck, cfg)? {
        Some(MtpWeights {
            pre_fc_norm_embedding: ck.to_f32("mtp.pre_fc_norm_embedding.weight")?,
            pre_fc_norm_hidden: ck.to_f32("mtp.pre_fc_norm_hidden.weight")?,
            fc: ck.to_f32("mtp.fc.weight")?,
            layers: (0..cfg.mtp_num_layers)
                .map(|i| layer(ck, &format!("mtp.layers.{i}"), LayerKind::Full))
                .collect::<Result<_>>()?,
            norm: ck.to_f32("mtp.norm.weight")?,
        })
    } else {
        None
    };
    Ok(Weights {
        embed: ck.to_f32("embed_tokens.weight")?,
        lm_head: if ck.tensors.contains_key("lm_head.weight") && !cfg.tie_word_embeddings {
            Some(ck.to_f32("lm_head.weight")?)
        } else {
            None
        },
        norm: ck.to_f32("norm.weight")?,
        layers: cfg
            .layer_kinds
            .iter()
            .enumerate()
            .map(|(i, k)| layer(ck, &format!("layers.{i}"), *k))
            .collect::<Result<_>>()?,
        mtp,
    })
}

/// Reads `config.json` and the checkpoint in `dir`: the CPU backend's entry point.
pub fn load(dir: &Path) -> Result<(ModelConfig, Weights)> {
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let ck = Checkpoint::open(dir)?;
    let w = load_weights(&ck, &cfg)?;
    Ok((cfg, w))
}
