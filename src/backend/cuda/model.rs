//! The layer stack of Qwen3.5 on the device: embedding, every layer, the final norm and
//! the lm_head, over a step's named row groups (`RowGroups`: decode rows through the
//! decode kernels, prefill chunks through the prefill kernels). It owns no device state:
//! it borrows the backend's weights, pools, scratch and kernels for one step, enqueues
//! work on one stream and never synchronises, so a decode step can be captured whole
//! into a CUDA graph.

use super::blaslt::BlasLt;
use super::kernels::{AttnDecode, AttnPrefill, Conv1d, DType, Delta, DevPtr, GdnDecode, GdnPrefill, GemmWeight, Kernels, Mat, QkNormRope, NULL};
use super::pools::{Scratch, StatePools, LOGIT_ROWS};
use super::weights::{DeviceWeights, FullPtrs, LayerPtrs, LinearPtrs, MixerPtrs};
use crate::backend::step::{MetaOffsets, Step, StepLayout, SKINNY_MAX_CHUNK};
use crate::config::ModelConfig;
use anyhow::Result;
use cudarc::driver::CudaStream;
use std::cell::RefCell;

#[path = "mtp.rs"]
pub(super) mod mtp;

/// The backend's device state, borrowed for one step.
pub(super) struct LayerStack<'a> {
    pub cfg: &'a ModelConfig,
    pub k: &'a Kernels,
    pub blas: &'a RefCell<BlasLt>,
    pub w: &'a DeviceWeights,
    pub pools: &'a StatePools,
    pub s: &'a Scratch,
    pub stream: &'a CudaStream,
    /// The engine's GEMM input dtype (see `CudaOptions::act`).
    pub act: DType,
    /// `CudaOptions::mixed_bf16_inputs`.
    pub mixed_bf16_inputs: bool,
}

/// Where one step's rows and metadata are: the step itself and the device address of
/// its uploaded metadata image.
struct Rows<'s> {
    l: &'s StepLayout,
    meta: MetaOffsets,
    /// The prefill group's view of the per-sequence arrays.
    prefill_meta: MetaOffsets,
    decode_seqs: usize,
    prefill_seqs: usize,
    meta_base: DevPtr,
    /// The dtype the layers' GEMM inputs are written in for this step.
    act: DType,
    /// From this row on (the trailing run of long chunks of a step that also has decode
    /// or short rows: `StepLayout::long_rows_from`), GEMM inputs are written as bf16 to
    /// `Scratch::x_bf16` (row r at r * K), where cuBLASLt reads them, instead of in `act`
    /// and converted: the same bf16 values. The row count when there is no such run.
    bf16_from: usize,
}

impl Rows<'_> {
    /// Device address of the i32 at element offset `off` of the metadata image.
    fn at(&self, off: usize) -> DevPtr {
        self.meta_base + (off * 4) as u64
    }

    /// Rows `from..to` as at most two runs `(r0, r1, bf16)`: before `bf16_from` (GEMM
    /// inputs in place, in `act`) and from it (bf16 in `x_bf16`).
    fn runs(&self, from: usize, to: usize) -> impl Iterator<Item = (usize, usize, bool)> {
        let cut = self.bf16_from.clamp(from, to);
        [(from, cut, false), (cut, to, true)].into_iter().filter(|(a, b, _)| b > a)
    }
}

/// Where rows from `r0` of a GEMM input of `ld` columns go: `x_bf16` as bf16 (`bf16`), else
/// `base` in `act`.
fn gemm_input_at(s: &Scratch, base: DevPtr, act: DType, ld: usize, r0: usize, bf16: bool) -> Mat {
    if bf16 {
        Mat { ptr: s.x_bf16.ptr, ld, dtype: DType::BF16 }.rows(r0)
    } else {
        Mat { ptr: base, ld, dtype: act }.rows(r0)
    }
}

impl LayerStack<'_> {
    /// Embedding, every layer and the final norm over `step`'s rows, whose metadata
    /// image is already at `s.meta`. Leaves the normed final hidden rows in `s.normed`.
    pub fn forward(&self, step: &Step) -> Result<()> {
        let l = &step.layout;
        let act = self.gemm_input(l);
        let rows = Rows {
            l,
            meta: step.meta,
            prefill_meta: step.meta.skip_seqs(step.groups.decode_seqs, l.bt_stride),
            decode_seqs: step.groups.decode_seqs,
            prefill_seqs: step.groups.prefill_seqs,
            meta_base: self.s.meta.ptr,
            act,
            bf16_from: if self.mixed_bf16_inputs && act == DType::F32 { l.long_rows_from() } else { l.num_tokens() },
        };
        let (t, s) = (l.num_tokens(), self.s);
        self.k.embed(self.stream, self.w.embed, rows.at(rows.meta.ids), s.resid.ptr, t)?;
        let mut delta: Option<Delta> = None;
        let (mut linear, mut full) = (0, 0);
        for layer in &self.w.layers {
            self.norm_to_gemm_input(delta, layer.input_norm, &rows)?;
            let mixed = match &layer.mixer {
                MixerPtrs::Linear(g) => {
                    let d = self.gated_deltanet(g, linear, &rows)?;
                    linear += 1;
                    d
                }
                MixerPtrs::Full(a) => {
                    let d = self.full_attention(a, full, &rows)?;
                    full += 1;
                    d
                }
            };
            self.norm_to_gemm_input(Some(mixed), layer.post_norm, &rows)?;
            delta = Some(self.mlp(layer, &rows)?);
        }
        // The final norm in the engine's dtype: the lm_head reads it through the skinny GEMM.
        let (fnb, fnf) = split_by_dtype(self.act, s.normed.ptr);
        self.k.add_rmsnorm(self.stream, s.resid.ptr, delta, self.w.norm, fnb, fnf, t)
    }

    /// The residual's update and RMSNorm of every row of the step: the normed rows are the
    /// next GEMM's input (`normed` in the step's dtype, or `x_bf16` from `bf16_from`).
    fn norm_to_gemm_input(&self, delta: Option<Delta>, w: DevPtr, r: &Rows) -> Result<()> {
        let (s, h) = (self.s, self.cfg.hidden_size);
        for (r0, r1, bf16) in r.runs(0, r.l.num_tokens()) {
            let d = delta.map(|d| d.rows(r0)).transpose()?;
            let out = gemm_input_at(s, s.normed.ptr, r.act, h, r0, bf16);
            let (nb, nf) = split_by_dtype(out.dtype, out.ptr);
            self.k.add_rmsnorm(self.stream, s.resid.ptr + (r0 * h * 4) as u64, d, w, nb, nf, r1 - r0)?;
        }
        Ok(())
    }

    /// The lm_head (and, with `argmax_limit`, the greedy argmax) over normed rows
    /// `0..rows`, 64 at a time: logits of row r land at `s.logits` row r, its argmax at
    /// `s.argmax[r]`. `rows` is at most the logits buffer's rows.
    pub fn lm_head(&self, rows: usize, argmax_limit: Option<usize>) -> Result<()> {
        let (s, v, h) = (self.s, self.cfg.vocab_size, self.cfg.hidden_size);
        let es = self.act.size();
        for r0 in (0..rows).step_by(LOGIT_ROWS) {
            let n = (rows - r0).min(LOGIT_ROWS);
            self.lm_head_piece(s.normed.at(r0 * h * es), n, v, s.logits.at(r0 * v * 4), s.argmax.at(r0 * 4), argmax_limit)?;
        }
        Ok(())
    }

    /// The lm_head over the normed rows `rows` (any rows, at most 64; the same i32s are at
    /// `rows_dev` on the device) into logits rows 0.. (and argmaxes 0.. at `argmax_at`):
    /// non-contiguous rows are first gathered in one launch.
    pub fn lm_head_rows(&self, rows: &[i32], rows_dev: DevPtr, argmax_at: DevPtr, argmax_limit: Option<usize>) -> Result<()> {
        let (s, h) = (self.s, self.cfg.hidden_size);
        let es = self.act.size();
        let first = rows.first().copied().unwrap_or(0) as usize;
        let contiguous = rows.iter().enumerate().all(|(i, r)| *r as usize == first + i);
        let src = if contiguous {
            s.normed.at(first * h * es)
        } else {
            self.k.gather_rows(self.stream, s.normed.ptr, self.act, rows_dev, s.sel.ptr, h, rows.len())?;
            s.sel.ptr
        };
        self.lm_head_piece(src, rows.len(), self.cfg.vocab_size, s.logits.ptr, argmax_at, argmax_limit)
    }

    /// Logits of `rows` rows at `x` over the first `cols` rows of the (tied) lm_head table
    /// ([rows][cols] at `logits`), and their argmax below `argmax_limit` when asked.
    fn lm_head_piece(&self, x: DevPtr, rows: usize, cols: usize, logits: DevPtr, argmax: DevPtr, argmax_limit: Option<usize>) -> Result<()> {
        let (s, h) = (self.s, self.cfg.hidden_size);
        self.k.gemm(self.stream, self.w.lm_head, x, self.act, logits, DType::F32, rows, cols, h, &s.gemm)?;
        if let Some(limit) = argmax_limit {
            self.k.argmax(self.stream, Mat::f32(logits, cols), limit.min(cols), argmax, rows, &s.argmax_ws)?;
        }
        Ok(())
    }

    /// One Gated DeltaNet mixer (linear layer `li`): fused projection, then the decode
    /// rows through the fused decode step and the prefill chunks through conv + chunked
    /// scan + gated norm, then out_proj: the residual's update (`gemm_to_norm`).
    fn gated_deltanet(&self, g: &LinearPtrs, li: usize, r: &Rows) -> Result<Delta> {
        let (c, k, st, s) = (self.cfg, self.k, self.stream, self.s);
        let (h, t, nd) = (c.hidden_size, r.l.num_tokens(), r.decode_seqs);
        let (qkv_dim, vd, nv) = (c.linear_qkv_dim(), c.linear_value_dim(), c.linear_num_value_heads);
        // One GEMM for [qkv | z | b | a]; the consumers read views of its rows.
        let wide_w = qkv_dim + vd + 2 * nv;
        self.gemm(g.qkvzba, s.normed.ptr, s.wide.ptr, wide_w, h, r)?;
        let qkvz = Mat::f32(s.wide.ptr, wide_w);
        let ba = qkvz.cols(qkv_dim + vd);
        let out = Mat { ptr: s.mix_in.ptr, ld: vd, dtype: r.act };
        let (conv_state, state) = (self.pools.conv_layer(li), self.pools.recurrent_layer(li));
        // Decode rows in one launch, updating each slot's state in place; a verify step's
        // rows in one launch per fed position, each reading the state entry its
        // predecessor wrote (`StepLayout::state_io`), or (`gdn_verify_fused`) every
        // position in one launch and the ring rows after it: the same bits.
        let one = [(0, nd)];
        let launches = if r.l.gdn_launches.is_empty() { &one[..] } else { &r.l.gdn_launches[..] };
        let rows_from = |r0: usize, n: usize| {
            let io = if r.l.state_io.is_empty() { NULL } else { r.at(r.meta.state_io + 2 * r0) };
            GdnDecode {
                qkv: qkvz.rows(r0), z: qkvz.cols(qkv_dim).rows(r0), b: ba.rows(r0), a: ba.cols(nv).rows(r0),
                conv_w: g.conv, conv_state, state, a_log: g.a_log, dt_bias: g.dt_bias, norm_w: g.norm,
                slots: r.at(r.meta.slots + r0), pos: r.at(r.meta.pos + r0), state_io: io, out: out.rows(r0), batch: n,
            }
        };
        // Position 0's launch holds every sequence of the verify step.
        if !r.l.gdn_launches.is_empty() && k.gdn_verify_fused(r.l.gdn_launches[0].1) {
            k.gdn_verify(st, &rows_from(0, nd), launches)?;
            k.conv_ring_write(st, qkvz, conv_state, r.at(r.meta.slots), r.at(r.meta.pos), nd)?;
        } else {
            for &(r0, n) in launches.iter().filter(|l| l.1 > 0) {
                k.gdn_decode(st, &rows_from(r0, n))?;
            }
        }
        if r.prefill_seqs > 0 {
            let pm = &r.prefill_meta;
            k.conv1d(st, &Conv1d {
                x: qkvz, w: g.conv, conv_state,
                cu_seqlens: r.at(pm.cu_seqlens), slots: r.at(pm.slots), start_pos: r.at(pm.start_pos),
                out: s.conv_out.ptr, ld_out: qkv_dim, nseq: r.prefill_seqs,
            })?;
            k.gdn_prefill(st, &GdnPrefill {
                qkv: s.conv_out.ptr, ld_qkv: qkv_dim, b: ba, a: ba.cols(nv), a_log: g.a_log, dt_bias: g.dt_bias, state,
                cu_seqlens: r.at(pm.cu_seqlens), slots: r.at(pm.slots), out: s.core.ptr, ld_out: vd, nseq: r.prefill_seqs,
                tokens: t, max_tokens: r.l.max_seq_tokens(), workspace: s.gdn_ws.ptr, workspace_bytes: s.gdn_ws.bytes,
            })?;
            let core = Mat::f32(s.core.ptr, vd);
            for (r0, r1, bf16) in r.runs(nd, t) {
                let o = gemm_input_at(s, out.ptr, r.act, vd, r0, bf16);
                k.gated_rmsnorm(st, core.rows(r0).ptr, qkvz.cols(qkv_dim).rows(r0), g.norm, o.ptr, o.dtype, r1 - r0)?;
            }
        }
        self.gemm_to_norm(g.out, s.mix_in.ptr, h, vd, r)
    }

    /// One full-attention mixer (full layer `fi`): fused q/gate/k/v projection, q/k norm
    /// with RoPE and the KV write, decode attention over pages for the decode rows and
    /// flash prefill attention for the chunks, the sigmoid output gate, then o_proj: the
    /// residual's update (`gemm_to_norm`).
    fn full_attention(&self, a: &FullPtrs, fi: usize, r: &Rows) -> Result<Delta> {
        let (c, k, st, s) = (self.cfg, self.k, self.stream, self.s);
        let (h, t, nd) = (c.hidden_size, r.l.num_tokens(), r.decode_seqs);
        let attn_w = c.num_heads * c.head_dim;
        let qgkv_w = (2 * c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
        self.gemm(a.qgkv, s.normed.ptr, s.wide.ptr, qgkv_w, h, r)?;
        let qg = Mat::f32(s.wide.ptr, qgkv_w);
        let kq = 2 * c.num_heads * c.head_dim;
        let (kc, vc) = (self.pools.k_layer(fi), self.pools.v_layer(fi));
        k.qk_norm_rope(st, &QkNormRope {
            qg, k: qg.cols(kq), v: qg.cols(kq + c.num_kv_heads * c.head_dim),
            q_norm_w: a.q_norm, k_norm_w: a.k_norm, pos: r.at(r.meta.pos), kv_loc: r.at(r.meta.kv_loc),
            q_out: s.q.ptr, k_cache: kc, v_cache: vc, block_size: self.pools.block_size, tokens: t,
        })?;
        // The decode combine writes its output in the gate's dtype (fp32 here); with
        // bf16 activations it goes to `core` and is converted.
        let out = Mat { ptr: s.mix_in.ptr, ld: attn_w, dtype: r.act };
        let combine_out = if r.act == DType::BF16 { Mat::f32(s.core.ptr, attn_w) } else { out };
        if nd > 0 {
            k.attn_decode(st, &AttnDecode {
                q: s.q.ptr, k_cache: kc, v_cache: vc, block_tables: r.at(r.meta.block_tables), bt_stride: r.l.bt_stride,
                ctx_lens: r.at(r.meta.ctx_lens), block_size: self.pools.block_size,
                part_acc: s.part_acc.ptr, part_ml: s.part_ml.ptr, max_parts: s.max_parts,
                gate: Some(qg.cols(c.head_dim)), gate_hs: 2 * c.head_dim, out: combine_out, batch: nd,
            })?;
            if r.act == DType::BF16 {
                k.f32_to_bf16(st, s.core.ptr, s.mix_in.ptr, nd * attn_w)?;
            }
        }
        if r.prefill_seqs > 0 {
            let pm = &r.prefill_meta;
            k.attn_prefill(st, &AttnPrefill {
                q: s.q.ptr, k_cache: kc, v_cache: vc, cu_seqlens: r.at(pm.cu_seqlens), start_pos: r.at(pm.start_pos),
                block_tables: r.at(pm.block_tables), bt_stride: r.l.bt_stride, block_size: self.pools.block_size,
                out: s.core.ptr, nseq: r.prefill_seqs, max_tokens: r.l.max_seq_tokens(),
            })?;
            let core = Mat::f32(s.core.ptr, attn_w);
            for (r0, r1, bf16) in r.runs(nd, t) {
                let o = gemm_input_at(s, out.ptr, r.act, attn_w, r0, bf16);
                k.output_gate(st, core.rows(r0).ptr, qg.cols(c.head_dim).rows(r0), 2 * c.head_dim, o, r1 - r0)?;
            }
        }
        self.gemm_to_norm(a.o, s.mix_in.ptr, h, attn_w, r)
    }

    /// The SiLU-gated MLP of one layer: the residual's update (`gemm_to_norm`).
    fn mlp(&self, layer: &LayerPtrs, r: &Rows) -> Result<Delta> {
        let (c, s) = (self.cfg, self.s);
        let (h, i, t) = (c.hidden_size, c.intermediate_size, r.l.num_tokens());
        // gate_up's split-K sum, when it is one decode launch, is left to silu_mul (as
        // out/o/down leave theirs to the norm): the same bits without the GEMM's tail.
        let gate_up = if self.k.gemm_choices().defer_gate_up && self.deferrable(r.l) {
            self.k.gemm_deferred(self.stream, layer.gate_up, s.normed.ptr, r.act, s.wide.ptr, t, 2 * i, h, &s.gemm)?
        } else {
            self.gemm(layer.gate_up, s.normed.ptr, s.wide.ptr, 2 * i, h, r)?;
            Mat::f32(s.wide.ptr, 2 * i).into()
        };
        for (r0, r1, bf16) in r.runs(0, t) {
            self.k.silu_mul(self.stream, gate_up.rows(r0)?, i, gemm_input_at(s, s.mix_in.ptr, r.act, i, r0, bf16), i, r1 - r0)?;
        }
        self.gemm_to_norm(layer.down, s.mix_in.ptr, h, i, r)
    }

    /// Whether a GEMM over step `l`'s rows may leave its split-K sum to its consumer
    /// (`Kernels::gemm_deferred`): the choice is on and the rows are one decode GEMM launch.
    fn deferrable(&self, l: &StepLayout) -> bool {
        let choices = self.k.gemm_choices();
        choices.defer_sum && l.num_tokens() <= choices.decode_gemm_rows() && l.cu_seqlens.windows(2).all(|c| (c[1] - c[0]) as usize <= SKINNY_MAX_CHUNK)
    }

    /// A projection back to the residual (out, o, down), whose only consumer is the next
    /// add_rmsnorm: `s.delta`, or, when the step's rows are one decode GEMM launch, its
    /// split-K partials, which the norm sums (`Kernels::gemm_deferred`: the same bits
    /// without the launch's tail). Nothing may use the GEMM scratch before that norm.
    fn gemm_to_norm(&self, w: GemmWeight, x: DevPtr, n: usize, kdim: usize, r: &Rows) -> Result<Delta> {
        let s = self.s;
        if self.deferrable(r.l) {
            return self.k.gemm_deferred(self.stream, w, x, r.act, s.delta.ptr, r.l.num_tokens(), n, kdim, &s.gemm);
        }
        self.gemm(w, x, s.delta.ptr, n, kdim, r)?;
        Ok(Mat::f32(s.delta.ptr, n).into())
    }

    /// y[T][N] = x[T][K] . W[N][K]^T over the rows of `r`; x is in the step's dtype `r.act`
    /// (see `gemm_input`), except rows from `r.bf16_from`, whose bf16 copy is in `x_bf16`
    /// (see `Rows::bf16_from`). A chunk longer than 64 tokens (prefill) goes through cuBLASLt
    /// (16-bit activations: the GEMM operand type, bf16 or an f16 plan's fp16; one call with
    /// M = its length); every other row through the
    /// decode GEMM in pieces of up to 256 rows (64 with `KILN_GEMM_TILED=0`). Either way a row's result depends only on its own
    /// chunk, never on what else is in the step (the skinny GEMM's result does not
    /// depend on M).
    fn gemm(&self, w: GemmWeight, x: DevPtr, y: DevPtr, n: usize, kdim: usize, r: &Rows) -> Result<()> {
        let (s, l, xdt, bf16_from) = (self.s, r.l, r.act, r.bf16_from);
        let skinny = |r0: usize, r1: usize| -> Result<()> {
            let piece = self.k.gemm_choices().decode_gemm_rows();
            for r in (r0..r1).step_by(piece) {
                let rows = (r1 - r).min(piece);
                let (xo, yo) = (x + (r * kdim * xdt.size()) as u64, y + (r * n * 4) as u64);
                self.k.gemm(self.stream, w, xo, xdt, yo, DType::F32, rows, n, kdim, &s.gemm)?;
            }
            Ok(())
        };
        let mut run = 0; // start of the pending run of short chunks
        for seq in l.cu_seqlens.windows(2) {
            let (r0, r1) = (seq[0] as usize, seq[1] as usize);
            if r1 - r0 <= SKINNY_MAX_CHUNK {
                continue;
            }
            skinny(run, r0)?;
            let xb = if xdt == DType::BF16 {
                x + (r0 * kdim * 2) as u64
            } else if r0 >= bf16_from {
                s.x_bf16.ptr + (r0 * kdim * 2) as u64
            } else {
                self.k.f32_to_bf16(self.stream, x + (r0 * kdim * 4) as u64, s.x_bf16.ptr, (r1 - r0) * kdim)?;
                s.x_bf16.ptr
            };
            self.blas.borrow_mut().gemm(self.stream, w.rows, xb, y + (r0 * n * 4) as u64, r1 - r0, n, kdim)?;
            run = r1;
        }
        skinny(run, l.num_tokens())
    }

    /// The dtype the layers' GEMM inputs are written in for step `l`: bf16 when every
    /// chunk is longer than 64 tokens (all rows go to cuBLASLt, which reads bf16: the
    /// producers write it directly, bit-identical to converting their fp32 output),
    /// else the engine's activation dtype.
    fn gemm_input(&self, l: &StepLayout) -> DType {
        if l.long_rows_from() == 0 {
            DType::BF16
        } else {
            self.act
        }
    }
}

/// (bf16 output, fp32 output) arguments of a norm kernel writing `ptr` in `dt`.
fn split_by_dtype(dt: DType, ptr: DevPtr) -> (DevPtr, DevPtr) {
    if dt == DType::BF16 {
        (ptr, NULL)
    } else {
        (NULL, ptr)
    }
}
