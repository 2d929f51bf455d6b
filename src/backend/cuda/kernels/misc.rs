//! Embedding, norms and elementwise kernels.

use super::{check_aligned, int, params, DType, Delta, DevPtr, Kernels, Mat, NULL};
use crate::backend::cuda::registry::{ADD_RMSNORM, ADD_RMSNORM_PARTS, ADD_RMSNORM_PARTS_CLUSTER, ADD_RMSNORM_PARTS_CLUSTER_WARPS, ARGMAX, ARGMAX_MASKED, ARGMAX_SLICE, COPY_SEGMENTS, EMBED, SPEC_ACCEPT, SPEC_FEED, MTP_FC_INPUT, F32_TO_BF16, GATED_RMSNORM, GATHER_ROWS, OUTPUT_GATE, SILU_MUL, SILU_MUL_PARTS};

use super::SplitParts;
use anyhow::{ensure, Result};
use cudarc::driver::CudaStream;

/// The kernels of add_rmsnorm with a split-K partials delta: a block per row, a cluster
/// of 8 one-warp blocks per row, or that cluster with a warp per vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPartsForm {
    Block,
    Cluster,
    ClusterVecWarps,
}

impl Kernels {
    /// out[m][..HIDDEN] (fp32) = table[ids[m]] (bf16 [VOCAB][HIDDEN]); bad ids give zeros.
    pub fn embed(&self, stream: &CudaStream, table: DevPtr, ids: DevPtr, out: DevPtr, m: usize) -> Result<()> {
        if m == 0 {
            return Ok(());
        }
        check_aligned(table, 16, "embed table")?;
        check_aligned(out, 32, "embed out")?;
        let mi = int(m, "rows")?;
        let mut p = params!(table, ids, out, mi);
        self.launch(EMBED, stream, (m as u32, 1, 1), 256, 0, &mut p)
    }

    /// residual[m] += delta[m] (if given); y = rmsnorm(residual) * (1 + w) written to
    /// `out_bf16` and/or `out_f32` ([M][HIDDEN], either may be NULL). residual is fp32
    /// [M][HIDDEN]; w bf16 [HIDDEN]. A `Delta::Parts` delta is summed here in split order
    /// (kiln_add_rmsnorm_parts): the same bits as the GEMM's own sum.
    pub fn add_rmsnorm(
        &self,
        stream: &CudaStream,
        residual: DevPtr,
        delta: Option<Delta>,
        w: DevPtr,
        out_bf16: DevPtr,
        out_f32: DevPtr,
        m: usize,
    ) -> Result<()> {
        if m == 0 {
            return Ok(());
        }
        if let Some(Delta::Parts(parts)) = delta {
            let c = self.gemm_choices();
            let form = if m > c.defer_cluster_max_m {
                NormPartsForm::Block
            } else if c.defer_cluster_vec_warps {
                NormPartsForm::ClusterVecWarps
            } else {
                NormPartsForm::Cluster
            };
            return self.add_rmsnorm_parts(stream, residual, parts, w, out_bf16, out_f32, m, form);
        }
        let (dp, ld, dt) = match delta {
            Some(Delta::Mat(d)) => {
                ensure!(d.ld % 8 == 0, "add_rmsnorm: delta row stride {} must be a multiple of 8", d.ld);
                (d.ptr, d.ld, d.dtype)
            }
            _ => (NULL, 0, DType::F32),
        };
        let (ldi, mi) = (int(ld, "ld")?, int(m, "rows")?);
        let mut p = params!(residual, dp, ldi, w, out_bf16, out_f32, mi);
        self.launch(ADD_RMSNORM[dt.idx()], stream, (m as u32, 1, 1), 256, 0, &mut p)
    }

    /// add_rmsnorm of a `Delta::Parts` delta in the given kernel form (`add_rmsnorm`
    /// chooses by the rows and `GemmChoices`; every form gives the same bits).
    #[allow(clippy::too_many_arguments)]
    pub fn add_rmsnorm_parts(&self, stream: &CudaStream, residual: DevPtr, parts: SplitParts, w: DevPtr, out_bf16: DevPtr, out_f32: DevPtr, m: usize, form: NormPartsForm) -> Result<()> {
        if m == 0 {
            return Ok(());
        }
        let hidden = self.dims().hidden;
        check_aligned(parts.ptr, 16, "add_rmsnorm partials")?;
        ensure!(parts.split_stride % 4 == 0 && parts.split_stride >= m * hidden, "add_rmsnorm: partial stride {} for {m} rows", parts.split_stride);
        ensure!(parts.ld == hidden, "add_rmsnorm: partial rows of {} floats, not the hidden size", parts.ld);
        let (pp, sp, stride, mi) = (parts.ptr, int(parts.splits, "splits")?, parts.split_stride as i64, int(m, "rows")?);
        let mut p = params!(residual, pp, sp, stride, w, out_bf16, out_f32, mi);
        match form {
            NormPartsForm::Block => self.launch(ADD_RMSNORM_PARTS, stream, (m as u32, 1, 1), 256, 0, &mut p),
            // A row per cluster of 8 one-warp blocks: its partials through 8 SMs.
            NormPartsForm::Cluster => self.launch(ADD_RMSNORM_PARTS_CLUSTER, stream, (8, m as u32, 1), 32, 0, &mut p),
            // The same with a warp per 8-float vector of a 256-thread row (norm.cu NORM_VPT).
            NormPartsForm::ClusterVecWarps => {
                let vpt = (hidden / 8).div_ceil(256) as u32;
                self.launch(ADD_RMSNORM_PARTS_CLUSTER_WARPS, stream, (8, m as u32, 1), 32 * vpt, 0, &mut p)
            }
        }
    }

    /// The MTP head's fc input: row m of `out` ([M][2*HIDDEN], dtype `out_dtype`) is
    /// [rmsnorm(table[ids[m]]) * (1 + w_e) | rmsnorm(h_m) * (1 + w_h)], h_m = `hid` row
    /// `hid_rows[m]` when >= 0, else `pending` row `-1 - hid_rows[m]` (fp32 [.][HIDDEN]).
    #[allow(clippy::too_many_arguments)]
    pub fn mtp_fc_input(&self, stream: &CudaStream, table: DevPtr, ids: DevPtr, hid: DevPtr, pending: DevPtr, hid_rows: DevPtr, w_e: DevPtr, w_h: DevPtr, out: DevPtr, out_dtype: DType, m: usize) -> Result<()> {
        if m == 0 {
            return Ok(());
        }
        for (p, what) in [(hid, "mtp hidden rows"), (pending, "mtp pending rows"), (out, "mtp fc input")] {
            check_aligned(p, 32, what)?;
        }
        let mi = int(m, "rows")?;
        let mut p = params!(table, ids, hid, pending, hid_rows, w_e, w_h, out, mi);
        self.launch(MTP_FC_INPUT[out_dtype.idx()], stream, (m as u32, 2, 1), 256, 0, &mut p)
    }

    /// Gated DeltaNet output norm over the prefill core output `o` (fp32 [T][NV*DV]):
    /// out ([T][NV*DV], dtype `out_dtype`) = rmsnorm(o per head) * w * silu(z).
    pub fn gated_rmsnorm(&self, stream: &CudaStream, o: DevPtr, z: Mat, w: DevPtr, out: DevPtr, out_dtype: DType, t: usize) -> Result<()> {
        if t == 0 {
            return Ok(());
        }
        ensure!(z.ld.is_multiple_of(8), "gated_rmsnorm: z row stride {} must be a multiple of 8", z.ld);
        let items = t * self.dims.lin_num_v_heads;
        let (zp, ldz, ti) = (z.ptr, int(z.ld, "ld_z")?, int(t, "tokens")?);
        let mut p = params!(o, zp, ldz, w, out, ti);
        self.launch(GATED_RMSNORM[z.dtype.idx()][out_dtype.idx()], stream, (items.div_ceil(8) as u32, 1, 1), 256, 0, &mut p)
    }

    /// out[t][h*HEAD_DIM + d] = attn[t][h][d] * sigmoid(gate[t*ld + h*gate_hs + d]).
    /// `attn` is fp32 [T][NUM_HEADS][HEAD_DIM].
    pub fn output_gate(&self, stream: &CudaStream, attn: DevPtr, gate: Mat, gate_hs: usize, out: Mat, t: usize) -> Result<()> {
        if t == 0 {
            return Ok(());
        }
        let width = self.dims.num_heads * self.dims.head_dim;
        let (gp, ldg, hs, op, ldo, ti) = (gate.ptr, int(gate.ld, "ld_gate")?, int(gate_hs, "gate_hs")?, out.ptr, int(out.ld, "ld_out")?, int(t, "tokens")?);
        let mut p = params!(attn, gp, ldg, hs, op, ldo, ti);
        // Four elements per thread (16-byte accesses when every stride allows).
        self.launch(OUTPUT_GATE[gate.dtype.idx()][out.dtype.idx()], stream, (width.div_ceil(4 * 256) as u32, t as u32, 1), 256, 0, &mut p)
    }

    /// out[m][i] = silu(gu[m][i]) * gu[m][up_off + i] for i < n. A `Delta::Parts` gu (the
    /// gate_up GEMM's partials, `gemm_deferred`) is summed here in split order
    /// (kiln_silu_mul_parts): the same bits as the GEMM's own sum followed by silu_mul.
    pub fn silu_mul(&self, stream: &CudaStream, gu: impl Into<Delta>, up_off: usize, out: Mat, n: usize, m: usize) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let gu = match gu.into() {
            Delta::Mat(gu) => gu,
            Delta::Parts(parts) => {
                ensure!(parts.split_stride >= m * parts.ld && up_off + n <= parts.ld, "silu_mul: partials of {} x {} floats for {m} rows and {n} + {up_off} columns", parts.split_stride, parts.ld);
                let (pp, sp, stride) = (parts.ptr, int(parts.splits, "splits")?, parts.split_stride as i64);
                let (ldi, uo, op, ldo, ni, mi) = (int(parts.ld, "ld_in")?, int(up_off, "up_off")?, out.ptr, int(out.ld, "ld_out")?, int(n, "n")?, int(m, "rows")?);
                let mut p = params!(pp, sp, stride, ldi, uo, op, ldo, ni, mi);
                return self.launch(SILU_MUL_PARTS[out.dtype.idx()], stream, (n.div_ceil(4 * 256) as u32, m as u32, 1), 256, 0, &mut p);
            }
        };
        let (gp, ldi, uo, op, ldo, ni, mi) = (gu.ptr, int(gu.ld, "ld_in")?, int(up_off, "up_off")?, out.ptr, int(out.ld, "ld_out")?, int(n, "n")?, int(m, "rows")?);
        let mut p = params!(gp, ldi, uo, op, ldo, ni, mi);
        // Four elements per thread (16-byte accesses when every stride allows).
        self.launch(SILU_MUL[gu.dtype.idx()][out.dtype.idx()], stream, (n.div_ceil(4 * 256) as u32, m as u32, 1), 256, 0, &mut p)
    }

    /// y[i] = bf16(x[i]) (round to nearest even) for i < n; x 16-byte aligned.
    pub fn f32_to_bf16(&self, stream: &CudaStream, x: DevPtr, y: DevPtr, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        check_aligned(x, 16, "f32_to_bf16 x")?;
        check_aligned(y, 8, "f32_to_bf16 y")?;
        let ni = int(n, "n")?;
        let mut p = params!(x, y, ni);
        self.launch(F32_TO_BF16, stream, (n.div_ceil(1024) as u32, 1, 1), 256, 0, &mut p)
    }

    /// dst[i] = src[rows[i]] for i < n: rows of `width` elements of `dtype`; `rows` is an
    /// i32 device array (the step's metadata image).
    #[allow(clippy::too_many_arguments)]
    pub fn gather_rows(&self, stream: &CudaStream, src: DevPtr, dtype: DType, rows: DevPtr, dst: DevPtr, width: usize, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let (wi, ni) = (int(width, "width")?, int(n, "n")?);
        let mut p = params!(src, rows, dst, wi, ni);
        self.launch(GATHER_ROWS[dtype.idx()], stream, (n as u32, 1, 1), 256, 0, &mut p)
    }

    /// Copies `n` segments in one launch: segment s is the u64 triple (src, dst, bytes) at
    /// `segs[3s..]` on the device (see `Segment`); `max_bytes` is the largest one (it sizes
    /// the grid). Addresses 16-byte aligned, sizes multiples of 16, segments disjoint.
    pub fn copy_segments(&self, stream: &CudaStream, segs: DevPtr, n: usize, max_bytes: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        // Up to 4 int4 per thread before a block strides again; at most 64 blocks a segment.
        let blocks = (max_bytes / 16).div_ceil(256 * 4).clamp(1, 64) as u32;
        let ni = int(n, "segments")?;
        let mut p = params!(segs, ni);
        self.launch(COPY_SEGMENTS, stream, (blocks, n as u32, 1), 256, 0, &mut p)
    }

    /// A speculative cycle's drafts into its verify step: ids[feeds[2e + 1]] =
    /// drafts[feeds[2e]] for e < n (i32 device arrays), and `mtp_ids` likewise unless NULL.
    pub fn spec_feed(&self, stream: &CudaStream, drafts: DevPtr, feeds: DevPtr, n: usize, ids: DevPtr, mtp_ids: DevPtr) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let ni = int(n, "feeds")?;
        let mut p = params!(drafts, feeds, ni, ids, mtp_ids);
        self.launch(SPEC_FEED, stream, (1, 1, 1), 256, 0, &mut p)
    }

    /// Each of `n` sequences' accepted length into `accepted` (from the step's `ids`, the
    /// `greedy` token of every row and `rows`, [n][positions] verify rows, -1 past a
    /// sequence's last), then zero bytes for the `nsegs` commit copies at `segs` whose tag
    /// names another length (see `backend::spec_cycle`).
    #[allow(clippy::too_many_arguments)]
    pub fn spec_accept(&self, stream: &CudaStream, ids: DevPtr, greedy: DevPtr, rows: DevPtr, n: usize, positions: usize, accepted: DevPtr, segs: DevPtr, tags: DevPtr, nsegs: usize) -> Result<()> {
        ensure!(n <= crate::backend::spec_cycle::MAX_CYCLE_SEQS, "{n} sequences in one speculative cycle");
        if n == 0 {
            return Ok(());
        }
        let (ni, pi, si) = (int(n, "sequences")?, int(positions, "positions")?, int(nsegs, "segments")?);
        let mut p = params!(ids, greedy, rows, ni, pi, accepted, segs, tags, si);
        self.launch(SPEC_ACCEPT, stream, (1, 1, 1), 256, 0, &mut p)
    }

    /// out[m] (i32) = argmax of logits row m over its first n columns (first index wins
    /// ties), `ceil(n / ARGMAX_SLICE)` blocks per row.
    pub fn argmax(&self, stream: &CudaStream, logits: Mat, n: usize, out: DevPtr, m: usize, scratch: &ArgmaxScratch) -> Result<()> {
        if m == 0 {
            return Ok(());
        }
        scratch.check(m)?;
        let (lp, ld, ni, mi) = (logits.ptr, int(logits.ld, "ld")?, int(n, "n")?, int(m, "rows")?);
        let (keys, counters) = (scratch.keys, scratch.counters);
        let mut p = params!(lp, ld, ni, out, mi, keys, counters);
        self.launch(ARGMAX[logits.dtype.idx()], stream, (argmax_slices(n), m as u32, 1), 256, 0, &mut p)
    }

    /// For each f32 logits row m < `m` whose `mask_rows[m]` (i32, device) is >= 0:
    /// out[m] = the argmax over the first n columns whose bit is set in token mask
    /// `masks[mask_rows[m] * words ..]` (u32 words, device; `SeqChunk::allowed`'s layout).
    /// Other rows keep out[m]. n must fit the mask (n <= 32 * words).
    #[allow(clippy::too_many_arguments)]
    pub fn argmax_masked(&self, stream: &CudaStream, logits: Mat, n: usize, mask_rows: DevPtr, masks: DevPtr, words: usize, out: DevPtr, m: usize, scratch: &ArgmaxScratch) -> Result<()> {
        if m == 0 {
            return Ok(());
        }
        scratch.check(m)?;
        ensure!(logits.dtype == DType::F32 && n <= 32 * words, "argmax_masked: f32 logits and n <= 32 * words ({n}, {words})");
        let (lp, ld, ni, wi, mi) = (logits.ptr, int(logits.ld, "ld")?, int(n, "n")?, int(words, "words")?, int(m, "rows")?);
        let (keys, counters) = (scratch.keys, scratch.counters);
        let mut p = params!(lp, ld, ni, mask_rows, masks, wi, out, mi, keys, counters);
        self.launch(ARGMAX_MASKED, stream, (argmax_slices(n.min(32 * words)), m as u32, 1), 256, 0, &mut p)
    }
}

/// Blocks per row of an argmax over n columns (at least one, which writes 0 when n = 0).
fn argmax_slices(n: usize) -> u32 {
    n.div_ceil(ARGMAX_SLICE).max(1) as u32
}

/// Scratch of the argmax kernels: a u64 key and a u32 counter per row of one launch,
/// zeroed at allocation (every launch leaves them zero). Launches that share it must be
/// ordered (same stream).
#[derive(Clone, Copy, Debug)]
pub struct ArgmaxScratch {
    pub keys: DevPtr,
    pub counters: DevPtr,
    pub rows: usize,
}

impl ArgmaxScratch {
    /// Bytes of keys and of counters for `rows` rows.
    pub fn bytes(rows: usize) -> (usize, usize) {
        (rows * 8, rows * 4)
    }

    fn check(&self, m: usize) -> Result<()> {
        ensure!(m <= self.rows, "argmax: {m} rows exceed the scratch's {}", self.rows);
        check_aligned(self.keys, 8, "argmax keys")
    }
}
