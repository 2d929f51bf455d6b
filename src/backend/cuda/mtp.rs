//! The MTP head on the device, as two stages of the layer stack (which pairs a pass
//! computes is `backend::mtp_rows`): `mtp_inputs` builds the fc input from the step's
//! final-normed rows (or the slots' pending states) and moves each chunk's last row into
//! its slot's pending state; it runs right after the final norm, before anything
//! overwrites those rows. `mtp_layer` runs fc, the MTP decoder layer (its KV in the block
//! pool's last layer) and mtp.norm into fp32 rows, which the lm_head (drafts) and the
//! next chained draft step read. Drafts only propose tokens, which verification checks,
//! so nothing here needs to be bit-identical to anything: only the main model's rows do.

use super::{split_by_dtype, LayerStack, Rows};
use crate::backend::cuda::kernels::{DevPtr, Mat, QkNormRope, NULL};
use crate::backend::cuda::registry::GEMV_I8_MAX_M;
use crate::backend::cuda::weights::{DraftHeadKind, MixerPtrs, MtpPtrs};
use crate::backend::mtp_rows::MtpImage;
use crate::backend::step::StepLayout;
use anyhow::{bail, Result};

/// Device buffers of the MTP head (owned by the backend).
#[derive(Clone, Copy, Debug)]
pub struct MtpBuffers {
    /// fp32 [slots][hidden]: each slot's pending final-normed hidden state.
    pub pending: DevPtr,
    /// [rows][2 * hidden] fc input, in the pass's GEMM input dtype.
    pub cat: DevPtr,
    /// fp32 [rows][hidden]: mtp.norm output.
    pub out: DevPtr,
    /// The pass's metadata image (`MtpImage`).
    pub meta: DevPtr,
    /// The MTP layer's index in the KV pool (after the model's full-attention layers).
    pub kv_layer: usize,
}

impl LayerStack<'_> {
    /// The fc input of `img`'s rows of `l` (hidden rows from fp32 rows `hid` or the
    /// pending states; token ids at `ids`, device i32), then the pending copies.
    pub fn mtp_inputs(&self, m: &MtpPtrs, b: &MtpBuffers, l: &StepLayout, img: &MtpImage, hid: DevPtr, ids: DevPtr) -> Result<()> {
        let at = |off: usize| b.meta + (off * 4) as u64;
        let act = self.gemm_input(l);
        let h = self.cfg.hidden_size;
        self.k.mtp_fc_input(self.stream, self.w.embed, ids, hid, b.pending, at(img.hidden), m.norm_embedding, m.norm_hidden, b.cat, act, l.num_tokens())?;
        self.k.copy_segments(self.stream, at(img.segs), img.nsegs, h * 4)
    }

    /// fc, the MTP layer and mtp.norm over `img`'s rows of `l` (fc input in `b.cat`);
    /// leaves the fp32 mtp.norm rows in `b.out`.
    pub fn mtp_layer(&self, m: &MtpPtrs, b: &MtpBuffers, l: &StepLayout, img: &MtpImage) -> Result<()> {
        let MixerPtrs::Full(attn) = &m.layer.mixer else { bail!("the MTP layer must be a full-attention layer") };
        let rows = self.mtp_fc_and_norm(m, b, l, img)?;
        let (s, t) = (self.s, l.num_tokens());
        let (nb, nf) = split_by_dtype(rows.act, s.normed.ptr);
        let mixed = self.full_attention(attn, b.kv_layer, &rows)?;
        self.k.add_rmsnorm(self.stream, s.resid.ptr, Some(mixed), m.layer.post_norm, nb, nf, t)?;
        let delta = self.mlp(&m.layer, &rows)?;
        self.k.add_rmsnorm(self.stream, s.resid.ptr, Some(delta), m.norm, NULL, b.out, t)
    }

    /// What a plain step needs of the MTP layer over `img`'s rows of `l`: its KV at their
    /// positions (fc, the input norm, the k and v rows of the q/gate/k/v projection, k norm
    /// + RoPE and the cache write). The rest of the layer feeds only drafts, and a draft
    /// runs the whole layer itself. Drafts need not be exact (verification keeps the
    /// output exact), so this k/v GEMM, with its own split, may round differently from
    /// the whole projection's. `KILN_MTP_FULL_UPKEEP=1` runs the whole layer instead.
    pub fn mtp_layer_kv(&self, m: &MtpPtrs, b: &MtpBuffers, l: &StepLayout, img: &MtpImage) -> Result<()> {
        let MixerPtrs::Full(attn) = &m.layer.mixer else { bail!("the MTP layer must be a full-attention layer") };
        let rows = self.mtp_fc_and_norm(m, b, l, img)?;
        let (c, s, h) = (self.cfg, self.s, self.cfg.hidden_size);
        let (kq, kv_w) = (2 * c.num_heads * c.head_dim, 2 * c.num_kv_heads * c.head_dim);
        // Rows kq.. of the [q | gate | k | v] weight are k and v.
        let w_kv = attn.qgkv.from_row(kq, h);
        self.gemm(w_kv, s.normed.ptr, s.wide.ptr, kv_w, h, &rows)?;
        let kv = Mat::f32(s.wide.ptr, kv_w);
        // qk_norm_rope normalises queries too: it reads them from the k/v rows (within
        // `wide`, sized for the whole projection) and writes them to `q`, unused.
        self.k.qk_norm_rope(self.stream, &QkNormRope {
            qg: kv, k: kv, v: kv.cols(c.num_kv_heads * c.head_dim),
            q_norm_w: attn.q_norm, k_norm_w: attn.k_norm, pos: rows.at(rows.meta.pos), kv_loc: rows.at(rows.meta.kv_loc),
            q_out: s.q.ptr, k_cache: self.pools.k_layer(b.kv_layer), v_cache: self.pools.v_layer(b.kv_layer),
            block_size: self.pools.block_size, tokens: l.num_tokens(),
        })
    }

    /// The rows of an MTP pass, after fc (into the residual) and the layer's input norm.
    fn mtp_fc_and_norm<'l>(&self, m: &MtpPtrs, b: &MtpBuffers, l: &'l StepLayout, img: &MtpImage) -> Result<Rows<'l>> {
        let decode_seqs = l.decode_seqs();
        let rows = Rows {
            l,
            meta: img.meta,
            prefill_meta: img.meta.skip_seqs(decode_seqs, l.bt_stride),
            decode_seqs,
            prefill_seqs: l.num_seqs() - decode_seqs,
            meta_base: b.meta,
            act: self.gemm_input(l),
            // The MTP passes write their GEMM inputs in place (their fc input comes whole
            // from `mtp_fc_input`); cuBLASLt rows are converted.
            bf16_from: l.num_tokens(),
        };
        let (s, h, t) = (self.s, self.cfg.hidden_size, l.num_tokens());
        self.gemm(m.fc, b.cat, s.resid.ptr, h, 2 * h, &rows)?;
        let (nb, nf) = split_by_dtype(rows.act, s.normed.ptr);
        self.k.add_rmsnorm(self.stream, s.resid.ptr, None, m.layer.input_norm, nb, nf, t)?;
        Ok(rows)
    }

    /// Drafts of `rows` fp32 rows at `x` (the MTP output): the argmax below `limit` into
    /// `argmax`, from logits of only the lm_head rows below `limit` (rounded up to 128):
    /// a draft vocabulary of 32K ids reads an eighth of the table. With a quantized copy of
    /// the table (`DeviceWeights::draft_head`, int8 or int4) the logits come from it.
    pub fn mtp_draft_tokens(&self, x: DevPtr, rows: usize, argmax: DevPtr, limit: usize) -> Result<()> {
        let cols = limit.div_ceil(128).saturating_mul(128).min(self.cfg.vocab_size);
        // (Past 8 rows the int8 GEMV would read its table once per 8: the bf16 GEMM then.)
        let Some(d) = self.w.draft_head.as_ref().filter(|_| rows <= GEMV_I8_MAX_M) else {
            return self.lm_head_piece(x, rows, cols, self.s.logits.ptr, argmax, Some(limit));
        };
        let logits = self.s.logits.ptr;
        match d.kind {
            DraftHeadKind::Int4 => self.k.gemv_i4(self.stream, d.q, d.scale, x, logits, rows, cols, self.cfg.hidden_size)?,
            _ => self.k.gemv_i8(self.stream, d.q, d.scale, x, logits, rows, cols, self.cfg.hidden_size)?,
        }
        self.k.argmax(self.stream, Mat::f32(logits, cols), limit.min(cols), argmax, rows, &self.s.argmax_ws)
    }
}
