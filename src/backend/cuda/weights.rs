//! The plan's packed weights on the device (one upload), resolved to per-layer
//! addresses the forward pass reads.

use super::kernels::{DevPtr, Kernels};
use super::memory::{upload, DevBuf};
use crate::config::{LayerKind, ModelConfig};
use crate::plan::{self, names, Plan};
use anyhow::{ensure, Context, Result};
use cudarc::driver::CudaStream;

pub struct LinearPtrs {
    /// Fused [qkv | z | b | a] projection rows.
    pub qkvzba: DevPtr,
    pub conv: DevPtr,
    pub a_log: DevPtr,
    pub dt_bias: DevPtr,
    pub norm: DevPtr,
    pub out: DevPtr,
}

pub struct FullPtrs {
    pub qgkv: DevPtr,
    pub o: DevPtr,
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
    pub gate_up: DevPtr,
    pub down: DevPtr,
}

/// The MTP head (`mtp.*`): the fc input norms, fc, its one decoder layer (full
/// attention) and its final norm; the lm_head is the model's.
pub struct MtpPtrs {
    pub norm_embedding: DevPtr,
    pub norm_hidden: DevPtr,
    /// [hidden][2 * hidden]: the embedding half first.
    pub fc: DevPtr,
    pub layer: LayerPtrs,
    pub norm: DevPtr,
}

pub struct DeviceWeights {
    _buf: DevBuf,
    pub embed: DevPtr,
    pub lm_head: DevPtr,
    pub norm: DevPtr,
    pub layers: Vec<LayerPtrs>,
    /// The MTP head, when the plan packs one.
    pub mtp: Option<MtpPtrs>,
    /// The int8 copy of the lm_head the MTP drafts read (`CudaOptions::draft_head_i8`).
    pub draft_head: Option<DraftHeadI8>,
}

/// The MTP draft's int8 copy of the (tied) lm_head: per row, bytes 128 + q and one fp32
/// scale (kernels/draft_head.cu). Made once at start-up from the bf16 table; drafts are
/// checked by verification, so its rounding never reaches an output token.
pub struct DraftHeadI8 {
    _buf: DevBuf,
    pub q: DevPtr,
    pub scale: DevPtr,
}

impl DraftHeadI8 {
    /// Quantizes `lm_head` ([vocab][hidden] bf16) into a new device buffer.
    pub fn build(k: &Kernels, stream: &CudaStream, lm_head: DevPtr, cfg: &ModelConfig) -> Result<Self> {
        let (n, h) = (cfg.vocab_size, cfg.hidden_size);
        let qbytes = (n * h).div_ceil(256) * 256;
        let buf = DevBuf::zeroed(qbytes + n * 4, "the int8 draft lm_head")?;
        let (q, scale) = (buf.ptr, buf.at(qbytes));
        k.quant_rows_i8(stream, lm_head, q, scale, n, h)?;
        stream.synchronize().map_err(|e| anyhow::anyhow!("quantizing the draft lm_head: {e:?}"))?;
        Ok(DraftHeadI8 { _buf: buf, q, scale })
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
        let layer = |p: &str, kind: &LayerKind| -> Result<LayerPtrs> {
            let mixer = match kind {
                LayerKind::Linear => MixerPtrs::Linear(LinearPtrs {
                    qkvzba: ptr(&names::qkvzba(p), Bf16)?,
                    conv: ptr(&names::conv(p), Bf16)?,
                    a_log: ptr(&names::a_log(p), F32)?,
                    dt_bias: ptr(&names::dt_bias(p), F32)?,
                    norm: ptr(&names::gdn_norm(p), Bf16)?,
                    out: ptr(&names::gdn_out(p), Bf16)?,
                }),
                LayerKind::Full => MixerPtrs::Full(FullPtrs {
                    qgkv: ptr(&names::qgkv(p), Bf16)?,
                    o: ptr(&names::o(p), Bf16)?,
                    q_norm: ptr(&names::q_norm(p), Bf16)?,
                    k_norm: ptr(&names::k_norm(p), Bf16)?,
                }),
            };
            Ok(LayerPtrs {
                input_norm: ptr(&names::input_norm(p), Bf16)?,
                post_norm: ptr(&names::post_attention_norm(p), Bf16)?,
                mixer,
                gate_up: ptr(&names::gate_up(p), Bf16)?,
                down: ptr(&names::down(p), Bf16)?,
            })
        };
        let layers = cfg.layer_kinds.iter().enumerate().map(|(i, kind)| layer(&names::layer(i), kind)).collect::<Result<Vec<_>>>()?;
        let mtp = if plan.has_tensor(names::MTP_FC) {
            Some(MtpPtrs {
                norm_embedding: ptr(names::MTP_PRE_FC_NORM_EMBEDDING, Bf16)?,
                norm_hidden: ptr(names::MTP_PRE_FC_NORM_HIDDEN, Bf16)?,
                fc: ptr(names::MTP_FC, Bf16)?,
                // Qwen3.5 ships one MTP layer, a full-attention decoder layer.
                layer: layer(&names::mtp_layer(0), &LayerKind::Full).context("the MTP layer")?,
                norm: ptr(names::MTP_NORM, Bf16)?,
            })
        } else {
            None
        };
        let embed = ptr(names::EMBED, Bf16)?;
        let lm_head = if plan.has_tensor(names::LM_HEAD) { ptr(names::LM_HEAD, Bf16)? } else { embed };
        let norm = ptr(names::NORM, Bf16).context("final norm")?;
        Ok(DeviceWeights { _buf: buf, embed, lm_head, norm, layers, mtp, draft_head: None })
    }
}
