//! The plan's packed weights on the device (one upload), resolved to per-layer
//! addresses the forward pass reads.

use super::kernels::{DevPtr, GemmWeight, Kernels};
use super::memory::{upload, DevBuf};
use crate::config::{LayerKind, ModelConfig};
use crate::backend::weight_pack;
use crate::plan::{self, names, Plan};
use anyhow::{ensure, Context, Result};
use cudarc::driver::CudaStream;
use std::collections::HashMap;

pub struct LinearPtrs {
    /// Fused [qkv | z | b | a] projection rows.
    pub qkvzba: GemmWeight,
    pub conv: DevPtr,
    pub a_log: DevPtr,
    pub dt_bias: DevPtr,
    pub norm: DevPtr,
    pub out: GemmWeight,
}

pub struct FullPtrs {
    pub qgkv: GemmWeight,
    pub o: GemmWeight,
    pub q_norm: DevPtr,
    pub k_norm: DevPtr,
}

pub enum MixerPtrs {
    Linear(LinearPtrs),
    Full(FullPtrs),
}

pub struct LayerPtrs {
    pub input_norm: DevPtr,
    pub post_norm: DevPtr,
    pub mixer: MixerPtrs,
    pub gate_up: GemmWeight,
    pub down: GemmWeight,
}

/// The MTP head (`mtp.*`): the fc input norms, fc, its one decoder layer (full
/// attention) and its final norm; the lm_head is the model's.
pub struct MtpPtrs {
    pub norm_embedding: DevPtr,
    pub norm_hidden: DevPtr,
    /// [hidden][2 * hidden]: the embedding half first.
    pub fc: GemmWeight,
    pub layer: LayerPtrs,
    pub norm: DevPtr,
}

pub struct DeviceWeights {
    buf: DevBuf,
    pub embed: DevPtr,
    pub lm_head: GemmWeight,
    pub norm: DevPtr,
    pub layers: Vec<LayerPtrs>,
    /// The MTP head, when the plan packs one.
    pub mtp: Option<MtpPtrs>,
    /// The int8 or int4 copy of the lm_head the MTP drafts read (`CudaOptions::draft_head`).
    pub draft_head: Option<DraftHead>,
    /// The packed copies of the GEMM weights (`pack`), when made.
    _packed: Option<DevBuf>,
}

/// Which table MTP drafts take their logits from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DraftHeadKind {
    /// The bf16 lm_head itself.
    Bf16,
    /// Per row, bytes 128 + q and one fp32 scale: half the bf16 table's bytes.
    Int8,
    /// Nibbles 8 + q and one fp32 scale per 128 k: 0.53 bytes a weight.
    Int4,
}

impl DraftHeadKind {
    /// `bf16`, `int8` or `int4` (env KILN_DRAFT_HEAD, `--speculative-draft-head`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bf16" => Some(Self::Bf16),
            "int8" => Some(Self::Int8),
            "int4" => Some(Self::Int4),
            _ => None,
        }
    }
}

/// The MTP draft's quantized copy of the (tied) lm_head (kernels/draft_head.cu). Made
/// once at start-up from the bf16 table; drafts are checked by verification, so its
/// rounding never reaches an output token.
pub struct DraftHead {
    _buf: DevBuf,
    pub kind: DraftHeadKind,
    pub q: DevPtr,
    pub scale: DevPtr,
}

impl DraftHead {
    /// Quantizes `lm_head` ([vocab][hidden] bf16) into a new device buffer (`kind` Int8 or
    /// Int4).
    pub fn build(k: &Kernels, stream: &CudaStream, lm_head: DevPtr, cfg: &ModelConfig, kind: DraftHeadKind) -> Result<Self> {
        let (n, h) = (cfg.vocab_size, cfg.hidden_size);
        let (qbytes, scales) = match kind {
            DraftHeadKind::Int8 => (n * h, n),
            DraftHeadKind::Int4 => (n * h / 2, n * Kernels::i4_scale_stride(h)),
            DraftHeadKind::Bf16 => anyhow::bail!("the bf16 draft head is the lm_head itself"),
        };
        let qbytes = qbytes.div_ceil(256) * 256;
        let buf = DevBuf::zeroed(qbytes + scales * 4, "the quantized draft lm_head")?;
        let (q, scale) = (buf.ptr, buf.at(qbytes));
        match kind {
            DraftHeadKind::Int4 => k.quant_rows_i4(stream, lm_head, q, scale, n, h)?,
            _ => k.quant_rows_i8(stream, lm_head, q, scale, n, h)?,
        }
        stream.synchronize().map_err(|e| anyhow::anyhow!("quantizing the draft lm_head: {e:?}"))?;
        Ok(DraftHead { _buf: buf, kind, q, scale })
    }
}

impl DeviceWeights {
    /// Uploads every packed tensor in one copy and checks each tensor's dtype against
    /// what the kernels read.
    pub fn upload(stream: &CudaStream, plan: &Plan, cfg: &ModelConfig) -> Result<Self> {
        let bytes = plan.weights();
        let buf = DevBuf::zeroed(bytes.len(), "the model weights")?;
        upload(stream, buf.ptr, bytes)?;
        stream.synchronize().map_err(|e| anyhow::anyhow!("uploading weights: {e:?}"))?;
        let base = plan.header.weights_offset;
        let ptr = |name: &str, dtype: plan::DType| -> Result<DevPtr> {
            let t = plan.tensor(name)?;
            ensure!(
                t.entry.dtype == dtype,
                "plan tensor `{name}` is {:?}, the kernels read {:?}; rebuild the plan with this kiln-build",
                t.entry.dtype,
                dtype
            );
            Ok(buf.ptr + (t.entry.offset - base))
        };
        use plan::DType::{Bf16, F32};
        // The GEMM weights' (and the embedding's) dtype is the plan's: bf16, or f16 with
        // kernels compiled for fp16 GEMM operands (docs/numerics.md).
        let g = if plan.header.gemm_f16() { plan::DType::F16 } else { Bf16 };
        let layer = |p: &str, kind: &LayerKind| -> Result<LayerPtrs> {
            let mixer = match kind {
                LayerKind::Linear => MixerPtrs::Linear(LinearPtrs {
                    qkvzba: ptr(&names::qkvzba(p), g)?.into(),
                    conv: ptr(&names::conv(p), Bf16)?,
                    a_log: ptr(&names::a_log(p), F32)?,
                    dt_bias: ptr(&names::dt_bias(p), F32)?,
                    norm: ptr(&names::gdn_norm(p), Bf16)?,
                    out: ptr(&names::gdn_out(p), g)?.into(),
                }),
                LayerKind::Full => MixerPtrs::Full(FullPtrs {
                    qgkv: ptr(&names::qgkv(p), g)?.into(),
                    o: ptr(&names::o(p), g)?.into(),
                    q_norm: ptr(&names::q_norm(p), Bf16)?,
                    k_norm: ptr(&names::k_norm(p), Bf16)?,
                }),
            };
            Ok(LayerPtrs {
                input_norm: ptr(&names::input_norm(p), Bf16)?,
                post_norm: ptr(&names::post_attention_norm(p), Bf16)?,
                mixer,
                gate_up: ptr(&names::gate_up(p), g)?.into(),
                down: ptr(&names::down(p), g)?.into(),
            })
        };
        let layers = cfg.layer_kinds.iter().enumerate().map(|(i, kind)| layer(&names::layer(i), kind)).collect::<Result<Vec<_>>>()?;
        let mtp = if plan.has_tensor(names::MTP_FC) {
            Some(MtpPtrs {
                norm_embedding: ptr(names::MTP_PRE_FC_NORM_EMBEDDING, Bf16)?,
                norm_hidden: ptr(names::MTP_PRE_FC_NORM_HIDDEN, Bf16)?,
                fc: ptr(names::MTP_FC, g)?.into(),
                // Qwen3.5 ships one MTP layer, a full-attention decoder layer.
                layer: layer(&names::mtp_layer(0), &LayerKind::Full).context("the MTP layer")?,
                norm: ptr(names::MTP_NORM, Bf16)?,
            })
        } else {
            None
        };
        let embed = ptr(names::EMBED, g)?;
        let lm_head = if plan.has_tensor(names::LM_HEAD) { ptr(names::LM_HEAD, g)? } else { embed }.into();
        let norm = ptr(names::NORM, Bf16).context("final norm")?;
        Ok(DeviceWeights { buf, embed, lm_head, norm, layers, mtp, draft_head: None, _packed: None })
    }

    /// Every weight a decode GEMM reads.
    fn gemm_weights_mut(&mut self) -> Vec<&mut GemmWeight> {
        fn layer<'a>(l: &'a mut LayerPtrs, v: &mut Vec<&'a mut GemmWeight>) {
            match &mut l.mixer {
                MixerPtrs::Linear(g) => v.extend([&mut g.qkvzba, &mut g.out]),
                MixerPtrs::Full(a) => v.extend([&mut a.qgkv, &mut a.o]),
            }
            v.extend([&mut l.gate_up, &mut l.down]);
        }
        let mut v = Vec::new();
        for l in &mut self.layers {
            layer(l, &mut v);
        }
        if let Some(m) = &mut self.mtp {
            layer(&mut m.layer, &mut v);
            v.push(&mut m.fc);
        }
        v.push(&mut self.lm_head);
        v
    }

    /// Packs every decode GEMM weight whose shape allows it into one new buffer
    /// (`CudaOptions::packed_weights`; `backend::weight_pack`): the skinny kernels then read
    /// the packed copy, the tiled kernel and cuBLASLt the row-major one. Returns the bytes,
    /// or None (nothing packed) when they would exceed `budget`.
    pub fn pack(&mut self, k: &Kernels, stream: &CudaStream, plan: &Plan, budget: usize) -> Result<Option<usize>> {
        // The 2-D plan tensors' shapes by device address (where `upload` put them).
        let (base, buf_ptr) = (plan.header.weights_offset, self.buf.ptr);
        let shapes: HashMap<DevPtr, (usize, usize)> =
            plan.header.tensors.iter().filter(|t| t.shape.len() == 2).map(|t| (buf_ptr + (t.offset - base), (t.shape[0], t.shape[1]))).collect();
        let mut todo: Vec<(&mut GemmWeight, usize, usize)> = Vec::new();
        for w in self.gemm_weights_mut() {
            let &(n, kd) = shapes.get(&w.rows).context("a GEMM weight that is no plan tensor")?;
            if weight_pack::packable(n, kd) {
                todo.push((w, n, kd));
            }
        }
        let bytes: usize = todo.iter().map(|(_, n, kd)| n * kd * 2).sum();
        if bytes > budget {
            return Ok(None);
        }
        let buf = DevBuf::zeroed(bytes, "the packed GEMM weights")?;
        let mut at = 0;
        for (w, n, kd) in todo {
            w.packed = buf.at(at);
            k.pack_weight(stream, w.rows, w.packed, n, kd)?;
            at += n * kd * 2;
        }
        stream.synchronize().map_err(|e| anyhow::anyhow!("packing the GEMM weights: {e:?}"))?;
        self._packed = Some(buf);
        Ok(Some(bytes))
    }
}
