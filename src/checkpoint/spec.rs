//! The tensors a Qwen3.5 text checkpoint must hold, by canonical name, derived from
//! the config alone.

use crate::config::{LayerKind, ModelConfig};

#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Absent is fine: lm_head when tied, the MTP head (all-or-nothing, checked by the loader).
    pub optional: bool,
}

fn t(name: impl Into<String>, shape: &[usize]) -> TensorSpec {
    TensorSpec { name: name.into(), shape: shape.to_vec(), optional: false }
}

fn full_attention(p: &str, c: &ModelConfig) -> Vec<TensorSpec> {
    let (h, hd) = (c.hidden_size, c.head_dim);
    vec![
        // q_proj emits query and output gate interleaved per head: [head][q hd, gate hd].
        t(format!("{p}.self_attn.q_proj.weight"), &[2 * c.num_heads * hd, h]),
        t(format!("{p}.self_attn.k_proj.weight"), &[c.num_kv_heads * hd, h]),
        t(format!("{p}.self_attn.v_proj.weight"), &[c.num_kv_heads * hd, h]),
        t(format!("{p}.self_attn.o_proj.weight"), &[h, c.num_heads * hd]),
        t(format!("{p}.self_attn.q_norm.weight"), &[hd]),
        t(format!("{p}.self_attn.k_norm.weight"), &[hd]),
    ]
}

fn linear_attention(p: &str, c: &ModelConfig) -> Vec<TensorSpec> {
    let (h, nv) = (c.hidden_size, c.linear_num_value_heads);
    let qkv = c.linear_qkv_dim();
    let vd = c.linear_value_dim();
    vec![
        t(format!("{p}.linear_attn.in_proj_qkv.weight"), &[qkv, h]),
        t(format!("{p}.linear_attn.in_proj_z.weight"), &[vd, h]),
        t(format!("{p}.linear_attn.in_proj_b.weight"), &[nv, h]),
        t(format!("{p}.linear_attn.in_proj_a.weight"), &[nv, h]),
        t(format!("{p}.linear_attn.conv1d.weight"), &[qkv, 1, c.conv_kernel]),
        t(format!("{p}.linear_attn.dt_bias"), &[nv]),
        t(format!("{p}.linear_attn.A_log"), &[nv]),
        t(format!("{p}.linear_attn.norm.weight"), &[c.linear_value_head_dim]),
        t(format!("{p}.linear_attn.out_proj.weight"), &[h, vd]),
    ]
}

fn mlp_and_norms(p: &str, c: &ModelConfig) -> Vec<TensorSpec> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    vec![
        t(format!("{p}.input_layernorm.weight"), &[h]),
        t(format!("{p}.post_attention_layernorm.weight"), &[h]),
        t(format!("{p}.mlp.gate_proj.weight"), &[i, h]),
        t(format!("{p}.mlp.up_proj.weight"), &[i, h]),
        t(format!("{p}.mlp.down_proj.weight"), &[h, i]),
    ]
}

/// Every tensor of the text model and its MTP head, by canonical name.
pub fn expected_tensors(c: &ModelConfig) -> Vec<TensorSpec> {
    let (h, v) = (c.hidden_size, c.vocab_size);
    let mut out = vec![t("embed_tokens.weight", &[v, h]), t("norm.weight", &[h])];
    out.push(TensorSpec { optional: c.tie_word_embeddings, ..t("lm_head.weight", &[v, h]) });
    for (i, kind) in c.layer_kinds.iter().enumerate() {
        let p = format!("layers.{i}");
        out.extend(match kind {
            LayerKind::Linear => linear_attention(&p, c),
            LayerKind::Full => full_attention(&p, c),
        });
        out.extend(mlp_and_norms(&p, c));
    }
    let mut mtp = vec![
        t("mtp.pre_fc_norm_embedding.weight", &[h]),
        t("mtp.pre_fc_norm_hidden.weight", &[h]),
        t("mtp.fc.weight", &[h, 2 * h]),
        t("mtp.norm.weight", &[h]),
    ];
    for i in 0..c.mtp_num_layers {
        let p = format!("mtp.layers.{i}");
        mtp.extend(full_attention(&p, c));
        mtp.extend(mlp_and_norms(&p, c));
    }
    out.extend(mtp.into_iter().map(|s| TensorSpec { optional: true, ..s }));
    out
}
