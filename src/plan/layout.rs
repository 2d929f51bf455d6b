//! The packed tensors of a plan: names, dtypes, shapes, and which checkpoint tensors
//! (canonical names) fill them, in which row order. This is the one definition of the
//! layouts the kernels read; `docs/plan.md` describes it for people.
//!
//! Rules:
//! - every matrix is row-major [out, in] as in Hugging Face (`y = W x`); the GEMM weights
//!   (and the embedding, the tied lm_head) in the plan's GEMM dtype: bf16, or f16 for the
//!   fp16 GEMM contract (docs/numerics.md);
//! - fused matrices are row concatenations of whole checkpoint matrices, each keeping
//!   its stored row order (so a fused GEMM's output is the concatenation of the
//!   separate outputs);
//! - the Gated DeltaNet conv taps are bf16 [channels, kernel];
//! - norm weights are bf16 (the kernels widen them to fp32); A_log and dt_bias are f32;
//! - norm weights are stored raw, as in the checkpoint: the decoder norms
//!   (`input_norm`, `post_attention_norm`, `norm`, `attn.q_norm`, `attn.k_norm`, the MTP
//!   norms) are applied as (1 + w), computed in fp32 by the kernel exactly as HF's
//!   `1.0 + w.float()`; `gdn.norm` is applied as plain w.

use super::format::DType;
use crate::config::{LayerKind, ModelConfig};

/// One tensor of the plan and where its rows come from.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedSpec {
    pub name: String,
    pub dtype: DType,
    /// Packed shape; dim 0 is the concatenation axis.
    pub shape: Vec<usize>,
    /// Checkpoint tensors (canonical names) and the rows each gives, concatenated along
    /// dim 0 in this order.
    pub sources: Vec<(String, usize)>,
    /// The stored values are the checkpoint's times 2^scale_log2 (exact): the down
    /// projection of an fp16 plan (`DOWN_SCALE_LOG2`), 0 everywhere else.
    pub scale_log2: i32,
}

impl PackedSpec {
    /// Elements per row (1 for vectors).
    pub fn row_width(&self) -> usize {
        self.shape[1..].iter().product()
    }
    /// Bytes of the packed tensor.
    pub fn byte_len(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.dtype.size()) as u64
    }
}

fn spec(name: String, dtype: DType, shape: &[usize], sources: Vec<(String, usize)>) -> PackedSpec {
    PackedSpec { name, dtype, shape: shape.to_vec(), sources, scale_log2: 0 }
}

/// In an fp16 plan the down projection's weights are stored times 2^DOWN_SCALE_LOG2 and its
/// input is written times 2^-DOWN_SCALE_LOG2 (kernels/common.cuh GOP_DOWN_LOG2, the same
/// number): silu(gate) * up has no bound like a normalised input's, and this keeps it
/// within fp16's range up to ~1M. Powers of two, so the products are unchanged.
pub const DOWN_SCALE_LOG2: i32 = 4;

/// A GEMM weight in dtype `g`: row concatenation of `sources` (name, rows).
fn matrix(g: DType, name: String, shape: &[usize], sources: Vec<(String, usize)>) -> PackedSpec {
    spec(name, g, shape, sources)
}

/// A GEMM weight with one source.
fn matrix1(g: DType, name: String, shape: &[usize], source: String) -> PackedSpec {
    spec(name, g, shape, vec![(source, shape[0])])
}

/// A norm weight: bf16 (as the checkpoint stores it; the kernels read bf16 norm
/// weights and widen them to fp32), raw w (applied as (1 + w) or w, see the module doc).
fn norm(name: String, n: usize, source: String) -> PackedSpec {
    spec(name, DType::Bf16, &[n], vec![(source, n)])
}

/// An f32 vector or small table with one source.
fn vector(name: String, shape: &[usize], source: String) -> PackedSpec {
    spec(name, DType::F32, shape, vec![(source, shape[0])])
}

/// Packed tensor names. `p` is a layer prefix: `layers.{i}` or `mtp.layers.{j}`.
pub mod names {
    pub const EMBED: &str = "embed";
    pub const NORM: &str = "norm";
    pub const LM_HEAD: &str = "lm_head";
    pub const MTP_PRE_FC_NORM_EMBEDDING: &str = "mtp.pre_fc_norm_embedding";
    pub const MTP_PRE_FC_NORM_HIDDEN: &str = "mtp.pre_fc_norm_hidden";
    pub const MTP_FC: &str = "mtp.fc";
    pub const MTP_NORM: &str = "mtp.norm";

    pub fn layer(i: usize) -> String {
        format!("layers.{i}")
    }
    pub fn mtp_layer(j: usize) -> String {
        format!("mtp.layers.{j}")
    }
    pub fn input_norm(p: &str) -> String {
        format!("{p}.input_norm")
    }
    pub fn post_attention_norm(p: &str) -> String {
        format!("{p}.post_attention_norm")
    }
    pub fn gate_up(p: &str) -> String {
        format!("{p}.mlp.gate_up")
    }
    pub fn down(p: &str) -> String {
        format!("{p}.mlp.down")
    }
    pub fn qgkv(p: &str) -> String {
        format!("{p}.attn.qgkv")
    }
    pub fn o(p: &str) -> String {
        format!("{p}.attn.o")
    }
    pub fn q_norm(p: &str) -> String {
        format!("{p}.attn.q_norm")
    }
    pub fn k_norm(p: &str) -> String {
        format!("{p}.attn.k_norm")
    }
    pub fn qkvzba(p: &str) -> String {
        format!("{p}.gdn.qkvzba")
    }
    pub fn conv(p: &str) -> String {
        format!("{p}.gdn.conv")
    }
    pub fn a_log(p: &str) -> String {
        format!("{p}.gdn.A_log")
    }
    pub fn dt_bias(p: &str) -> String {
        format!("{p}.gdn.dt_bias")
    }
    pub fn gdn_norm(p: &str) -> String {
        format!("{p}.gdn.norm")
    }
    pub fn gdn_out(p: &str) -> String {
        format!("{p}.gdn.out")
    }
}

/// Gated full attention: `p` is the packed prefix, `src` the checkpoint prefix.
fn full_attention(g: DType, p: &str, src: &str, c: &ModelConfig) -> Vec<PackedSpec> {
    let (h, hd) = (c.hidden_size, c.head_dim);
    let a = |n: &str| format!("{src}.self_attn.{n}.weight");
    vec![
        // [q_proj rows as stored: per head, hd query rows then hd gate rows | k_proj | v_proj]
        matrix(
            g,
            names::qgkv(p),
            &[(2 * c.num_heads + 2 * c.num_kv_heads) * hd, h],
            vec![(a("q_proj"), 2 * c.num_heads * hd), (a("k_proj"), c.num_kv_heads * hd), (a("v_proj"), c.num_kv_heads * hd)],
        ),
        matrix1(g, names::o(p), &[h, c.num_heads * hd], a("o_proj")),
        norm(names::q_norm(p), hd, a("q_norm")),
        norm(names::k_norm(p), hd, a("k_norm")),
    ]
}

/// Gated DeltaNet.
fn linear_attention(g: DType, p: &str, src: &str, c: &ModelConfig) -> Vec<PackedSpec> {
    let (h, nv) = (c.hidden_size, c.linear_num_value_heads);
    let (qkv, vd) = (c.linear_qkv_dim(), c.linear_value_dim());
    let a = |n: &str| format!("{src}.linear_attn.{n}");
    vec![
        // [in_proj_qkv rows as stored (q: key heads x dk, k: key heads x dk, v: value heads x dv)
        //  | in_proj_z | in_proj_b | in_proj_a (one row per value head each)]: one GEMM.
        matrix(
            g,
            names::qkvzba(p),
            &[qkv + vd + 2 * nv, h],
            vec![(a("in_proj_qkv.weight"), qkv), (a("in_proj_z.weight"), vd), (a("in_proj_b.weight"), nv), (a("in_proj_a.weight"), nv)],
        ),
        // bf16 [channels, kernel]: the stored [channels, 1, kernel] without its singleton dim
        spec(names::conv(p), DType::Bf16, &[qkv, c.conv_kernel], vec![(a("conv1d.weight"), qkv)]),
        vector(names::a_log(p), &[nv], a("A_log")),
        vector(names::dt_bias(p), &[nv], a("dt_bias")),
        // applied as plain w (not 1 + w)
        norm(names::gdn_norm(p), c.linear_value_head_dim, a("norm.weight")),
        matrix1(g, names::gdn_out(p), &[h, vd], a("out_proj.weight")),
    ]
}

fn layer(g: DType, p: &str, src: &str, kind: LayerKind, c: &ModelConfig) -> Vec<PackedSpec> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut out = vec![norm(names::input_norm(p), h, format!("{src}.input_layernorm.weight"))];
    out.extend(match kind {
        LayerKind::Linear => linear_attention(g, p, src, c),
        LayerKind::Full => full_attention(g, p, src, c),
    });
    out.push(norm(names::post_attention_norm(p), h, format!("{src}.post_attention_layernorm.weight")));
    out.push(matrix(
        g,
        names::gate_up(p),
        &[2 * i, h],
        vec![(format!("{src}.mlp.gate_proj.weight"), i), (format!("{src}.mlp.up_proj.weight"), i)],
    ));
    let mut down = matrix1(g, names::down(p), &[h, i], format!("{src}.mlp.down_proj.weight"));
    if g == DType::F16 {
        down.scale_log2 = DOWN_SCALE_LOG2;
    }
    out.push(down);
    out
}

/// Every packed tensor, in payload order. `lm_head`: the checkpoint has an untied
/// lm_head to pack; `mtp`: it has the MTP head; `g`: the GEMM weights' dtype (bf16 or f16).
pub fn packed_specs(c: &ModelConfig, lm_head: bool, mtp: bool, g: DType) -> Vec<PackedSpec> {
    let (h, v) = (c.hidden_size, c.vocab_size);
    let mut out = vec![matrix1(g, names::EMBED.into(), &[v, h], "embed_tokens.weight".into())];
    for (i, kind) in c.layer_kinds.iter().enumerate() {
        let p = names::layer(i);
        out.extend(layer(g, &p, &p, *kind, c));
    }
    out.push(norm(names::NORM.into(), h, "norm.weight".into()));
    if lm_head {
        out.push(matrix1(g, names::LM_HEAD.into(), &[v, h], "lm_head.weight".into()));
    }
    if mtp {
        out.push(norm(names::MTP_PRE_FC_NORM_EMBEDDING.into(), h, "mtp.pre_fc_norm_embedding.weight".into()));
        out.push(norm(names::MTP_PRE_FC_NORM_HIDDEN.into(), h, "mtp.pre_fc_norm_hidden.weight".into()));
        // [hidden, 2 * hidden]: input is concat(norm_embedding(embed), norm_hidden(hidden)) as stored
        out.push(matrix1(g, names::MTP_FC.into(), &[h, 2 * h], "mtp.fc.weight".into()));
        for j in 0..c.mtp_num_layers {
            let p = names::mtp_layer(j);
            out.extend(layer(g, &p, &p, LayerKind::Full, c));
        }
        out.push(norm(names::MTP_NORM.into(), h, "mtp.norm.weight".into()));
    }
    out
}
