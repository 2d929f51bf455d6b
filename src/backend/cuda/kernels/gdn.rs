//! Gated DeltaNet: causal conv1d, fused decode step, chunked (UT/WY) prefill.

use super::{int, params, DevPtr, Kernels, Mat};
use crate::backend::cuda::registry::{
    gdn_prefill_prep_smem, gdn_prefill_scan_smem, CONV1D as CONV, CONV_RING_WRITE, GDN_CHUNK as CHUNK, GDN_DECODE as DECODE, GDN_VERIFY, GDN_VERIFY_PRE, GDN_VERIFY_SPLIT, RING_WRITE_SLICES,
    GDN_PREFILL_PREP as PREP,
    GDN_PREFILL_SCAN as SCAN,
};
use anyhow::{ensure, Result};
use cudarc::driver::CudaStream;

/// Which kernel runs a verify step's GDN in one launch. Every one gives the bits of one
/// gdn_decode launch per fed position (t_gdn_verify).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GdnVerifyKind {
    /// kiln_gdn_verify: each position's conv, gates and norms, then its update, in turn.
    InTurn,
    /// kiln_gdn_verify_pre: every position's inputs first, then the updates (the default).
    Pre,
    /// kiln_gdn_verify_split: Pre with each head's state over a cluster of blocks of 32
    /// value columns (4x the blocks; `KILN_GDN_VERIFY_SPLIT_MAX_SEQS`, an experiment).
    Split,
}

/// Threads of a prefill block (GR_THREADS), value columns a scan block owns, tokens per chunk.
const PREFILL_THREADS: u32 = 256;
const SCAN_COLS: usize = 32;

/// Floats of one workspace record (one chunk of one value head, GR_REC in gdn_prefill.cu):
/// -W, Q' and Kd as split B tiles (64 x dk each), U^T and O0^T as fp32 C tiles (64 x dv
/// each), exp(cum_last) padded to 16 bytes.
pub(crate) fn gdn_prefill_record_floats(dk: usize, dv: usize) -> usize {
    192 * dk + 128 * dv + 4
}

/// Causal conv1d + SiLU over a chunk of several sequences (kernels/conv.cu).
#[derive(Clone, Copy, Debug)]
pub struct Conv1d {
    /// [T_total][ld] pre-conv q|k|v channels (in_proj_qkv output).
    pub x: Mat,
    /// bf16 [CONV_DIM][CONV_K].
    pub w: DevPtr,
    /// fp32 [slots][CONV_K][CONV_DIM] ring (input at position p in row p % CONV_K).
    pub conv_state: DevPtr,
    /// i32 [nseq + 1] token offsets; i32 [nseq] slots (< 0 skips); i32 [nseq] start positions.
    pub cu_seqlens: DevPtr,
    pub slots: DevPtr,
    pub start_pos: DevPtr,
    /// fp32 [T_total][ld_out] = silu(conv(x)).
    pub out: DevPtr,
    pub ld_out: usize,
    pub nseq: usize,
}

/// Time blocks of 64 tokens per sequence that run in parallel in conv1d (each block
/// takes time blocks y, y + CONV_TIME_BLOCKS, ...; empty ones exit at once).
const CONV_TIME_BLOCKS: u32 = 16;

/// One fused decode step for B sequences (kernels/gdn_decode.cu). `qkv`, `z`, `b`, `a`
/// share one dtype; `b` and `a` share a row stride (`b.ld`).
#[derive(Clone, Copy, Debug)]
pub struct GdnDecode {
    pub qkv: Mat,
    pub z: Mat,
    pub b: Mat,
    pub a: Mat,
    pub conv_w: DevPtr,
    pub conv_state: DevPtr,
    /// fp32 [slots][LIN_NV][LIN_DK][LIN_DV].
    pub state: DevPtr,
    pub a_log: DevPtr,
    pub dt_bias: DevPtr,
    /// bf16 [LIN_DV] (applied plainly).
    pub norm_w: DevPtr,
    /// i32 [B] slots (< 0: padding row) and positions (tokens already seen).
    pub slots: DevPtr,
    pub pos: DevPtr,
    /// NULL for decode (each slot's state updated in place), or i32 pairs [B][2]: the
    /// state entry each row reads and the one it writes (speculative verification, one
    /// position per launch through scratch entries; see kernels/gdn_decode.cu).
    pub state_io: DevPtr,
    /// [B][ld] gated-norm output, head h at h*LIN_DV.
    pub out: Mat,
    pub batch: usize,
}

/// Chunked (64-token UT/WY) prefill over conv outputs (kernels/gdn_prefill.cu): a parallel
/// pre-pass per (chunk, head) into `workspace`, then the sequential scan over chunks;
/// follow with `gated_rmsnorm`. `qkv` must be 16-byte aligned with `ld_qkv % 4 == 0`.
#[derive(Clone, Copy, Debug)]
pub struct GdnPrefill {
    /// fp32 [T_total][ld] conv + SiLU output.
    pub qkv: DevPtr,
    pub ld_qkv: usize,
    /// in_proj_b / in_proj_a outputs, same dtype and row stride.
    pub b: Mat,
    pub a: Mat,
    pub a_log: DevPtr,
    pub dt_bias: DevPtr,
    pub state: DevPtr,
    pub cu_seqlens: DevPtr,
    pub slots: DevPtr,
    /// fp32 [T_total][ld_out] core output before the gated norm.
    pub out: DevPtr,
    pub ld_out: usize,
    pub nseq: usize,
    /// Rows of this launch (cu_seqlens[nseq]) and the longest sequence (sizes the grid).
    pub tokens: usize,
    pub max_tokens: usize,
    /// fp32 scratch of at least `Kernels::gdn_prefill_workspace(tokens, nseq)` bytes,
    /// 16-byte aligned.
    pub workspace: DevPtr,
    pub workspace_bytes: usize,
}

impl GdnDecode {
    /// The dtype qkv, z, b and a share (b and a also share a row stride), or `what`'s error.
    fn input_dtype(&self, what: &str) -> Result<super::DType> {
        let dt = self.qkv.dtype;
        ensure!(self.z.dtype == dt && self.b.dtype == dt && self.a.dtype == dt, "{what}: qkv, z, b, a must share a dtype");
        ensure!(self.a.ld == self.b.ld, "{what}: b and a must share a row stride");
        Ok(dt)
    }
}

impl Kernels {
    pub fn conv1d(&self, stream: &CudaStream, c: &Conv1d) -> Result<()> {
        if c.nseq == 0 {
            return Ok(());
        }
        let cd = self.dims.conv_dim();
        let (xp, ldx, w, st, cu, sl, sp, out) = (c.x.ptr, int(c.x.ld, "ld_x")?, c.w, c.conv_state, c.cu_seqlens, c.slots, c.start_pos, c.out);
        let (ldo, ns) = (int(c.ld_out, "ld_out")?, int(c.nseq, "nseq")?);
        let mut p = params!(xp, ldx, w, st, cu, sl, sp, out, ldo, ns);
        let grid = (cd.div_ceil(128) as u32, CONV_TIME_BLOCKS, c.nseq as u32);
        self.launch(CONV[c.x.dtype.idx()], stream, grid, 128, 0, &mut p)
    }

    pub fn gdn_decode(&self, stream: &CudaStream, g: &GdnDecode) -> Result<()> {
        if g.batch == 0 {
            return Ok(());
        }
        let dt = g.input_dtype("gdn_decode")?;
        let (qkv, ldq, z, ldz, b, a, ldba) = (g.qkv.ptr, int(g.qkv.ld, "ld_qkv")?, g.z.ptr, int(g.z.ld, "ld_z")?, g.b.ptr, g.a.ptr, int(g.b.ld, "ld_ba")?);
        let (cw, cs, st, al, dtb, nw, sl, ps, io) = (g.conv_w, g.conv_state, g.state, g.a_log, g.dt_bias, g.norm_w, g.slots, g.pos, g.state_io);
        let (out, ldo, bb) = (g.out.ptr, int(g.out.ld, "ld_out")?, int(g.batch, "batch")?);
        let mut p = params!(qkv, ldq, z, ldz, b, a, ldba, cw, cs, st, al, dtb, nw, sl, ps, io, out, ldo, bb);
        let nv = self.dims.lin_num_v_heads as u32;
        let threads = (self.dims.lin_v_dim * 4) as u32;
        self.launch(DECODE[dt.idx()][g.out.dtype.idx()], stream, (nv, g.batch as u32, 1), threads, 0, &mut p)
    }

    /// A verify step's GDN in one launch (kiln_gdn_verify): `g` as for `gdn_decode` over
    /// the step's rows (`g.batch` unused), whose fed positions are the position-major row
    /// ranges `launches` (first row, rows; at most 4, position 0 holding every sequence),
    /// with `g.state_io` per row. Each position computes as `gdn_decode` over its range
    /// would; the conv ring is left for `conv_ring_write`.
    pub fn gdn_verify(&self, stream: &CudaStream, g: &GdnDecode, launches: &[(usize, usize)]) -> Result<()> {
        let kind = self.gdn_verify_kind(launches.first().map_or(0, |l| l.1));
        self.gdn_verify_with(stream, g, launches, kind)
    }

    /// `gdn_verify` with the kernel chosen (`GdnVerifyKind`). The same bits.
    pub fn gdn_verify_with(&self, stream: &CudaStream, g: &GdnDecode, launches: &[(usize, usize)], kind: GdnVerifyKind) -> Result<()> {
        ensure!((1..=4).contains(&launches.len()) && launches.len() <= self.dims.conv_kernel, "gdn_verify: {} positions (1 to 4, at most the conv window)", launches.len());
        ensure!(g.state_io != 0, "gdn_verify: needs the rows' state entries");
        let dt = g.input_dtype("gdn_verify")?;
        let n0 = launches[0].1;
        if n0 == 0 {
            return Ok(());
        }
        let (mut first, mut count) = ([0i32; 4], [0i32; 4]);
        for (q, &(f, n)) in launches.iter().enumerate() {
            ensure!(n <= n0, "gdn_verify: position {q} has {n} rows, more than position 0's {n0}");
            (first[q], count[q]) = (int(f, "first row")?, int(n, "rows")?);
        }
        let (qkv, ldq, z, ldz, b, a, ldba) = (g.qkv.ptr, int(g.qkv.ld, "ld_qkv")?, g.z.ptr, int(g.z.ld, "ld_z")?, g.b.ptr, g.a.ptr, int(g.b.ld, "ld_ba")?);
        let (cw, cs, st, al, dtb, nw, sl, ps, io) = (g.conv_w, g.conv_state, g.state, g.a_log, g.dt_bias, g.norm_w, g.slots, g.pos, g.state_io);
        let (out, ldo, np) = (g.out.ptr, int(g.out.ld, "ld_out")?, int(launches.len(), "positions")?);
        let mut p = params!(qkv, ldq, z, ldz, b, a, ldba, cw, cs, st, al, dtb, nw, sl, ps, io, np, first, count, out, ldo);
        let (nv, dv) = (self.dims.lin_num_v_heads as u32, self.dims.lin_v_dim as u32);
        // Blocks per head and threads per block (4 row parts of each block's columns).
        let (names, per_head, threads) = match kind {
            GdnVerifyKind::InTurn => (&GDN_VERIFY, 1, dv * 4),
            GdnVerifyKind::Pre => (&GDN_VERIFY_PRE, 1, dv * 4),
            GdnVerifyKind::Split => (&GDN_VERIFY_SPLIT, dv / 32, 32 * 4),
        };
        self.launch(names[dt.idx()][g.out.dtype.idx()], stream, (nv * per_head, n0 as u32, 1), threads, 0, &mut p)
    }

    /// The conv ring rows of `t` fed rows (`qkv` rows, their `slots` and `pos`), as
    /// `gdn_decode` writes them: after `gdn_verify`, which only reads the ring.
    pub fn conv_ring_write(&self, stream: &CudaStream, qkv: Mat, conv_state: DevPtr, slots: DevPtr, pos: DevPtr, t: usize) -> Result<()> {
        if t == 0 {
            return Ok(());
        }
        let (x, ld, cs, sl, ps, tt) = (qkv.ptr, int(qkv.ld, "ld_qkv")?, conv_state, slots, pos, int(t, "rows")?);
        let mut p = params!(x, ld, cs, sl, ps, tt);
        self.launch(CONV_RING_WRITE[qkv.dtype.idx()], stream, (t as u32, RING_WRITE_SLICES as u32, 1), 256, 0, &mut p)
    }

    /// Bytes of the `GdnPrefill` workspace for launches of at most `max_tokens` rows and
    /// `max_seqs` sequences: one record per chunk and value head, chunks bounded by
    /// max_tokens/64 + max_seqs (each sequence's chunks start at record cu[s]/64 + s).
    pub fn gdn_prefill_workspace(&self, max_tokens: usize, max_seqs: usize) -> usize {
        let d = &self.dims;
        (max_tokens / CHUNK + max_seqs) * d.lin_num_v_heads * gdn_prefill_record_floats(d.lin_k_dim, d.lin_v_dim) * 4
    }

    pub fn gdn_prefill(&self, stream: &CudaStream, g: &GdnPrefill) -> Result<()> {
        if g.nseq == 0 || g.max_tokens == 0 {
            return Ok(());
        }
        ensure!(g.b.dtype == g.a.dtype && g.b.ld == g.a.ld, "gdn_prefill: b and a must share dtype and row stride");
        ensure!(g.ld_qkv.is_multiple_of(4) && g.qkv.is_multiple_of(16), "gdn_prefill: qkv must be 16-byte aligned with ld_qkv % 4 == 0 (ld_qkv = {})", g.ld_qkv);
        let need = self.gdn_prefill_workspace(g.tokens, g.nseq);
        ensure!(g.workspace.is_multiple_of(16) && g.workspace_bytes >= need, "gdn_prefill: the workspace must be 16-byte aligned and hold {need} bytes (has {})", g.workspace_bytes);
        let d = &self.dims;
        let rec_bytes = d.lin_num_v_heads * gdn_prefill_record_floats(d.lin_k_dim, d.lin_v_dim) * 4;
        let wsc = int(g.workspace_bytes / rec_bytes, "workspace chunks")?;
        let (qkv, ldq, b, a, ldba) = (g.qkv, int(g.ld_qkv, "ld_qkv")?, g.b.ptr, g.a.ptr, int(g.b.ld, "ld_ba")?);
        let (al, dtb, st, cu, sl, out, ldo, ns, ws) = (g.a_log, g.dt_bias, g.state, g.cu_seqlens, g.slots, g.out, int(g.ld_out, "ld_out")?, int(g.nseq, "nseq")?, g.workspace);
        let nv = d.lin_num_v_heads as u32;
        let mut p = params!(qkv, ldq, b, a, ldba, al, dtb, cu, sl, ws, wsc, ns);
        let grid = (g.max_tokens.div_ceil(CHUNK) as u32, nv, g.nseq as u32);
        let smem = gdn_prefill_prep_smem(d.lin_k_dim, d.lin_v_dim) as u32;
        self.launch(PREP[g.b.dtype.idx()], stream, grid, PREFILL_THREADS, smem, &mut p)?;
        let mut p = params!(ws, st, cu, sl, out, ldo, wsc, ns);
        let grid = ((d.lin_v_dim / SCAN_COLS) as u32, nv, g.nseq as u32);
        self.launch(SCAN, stream, grid, PREFILL_THREADS, gdn_prefill_scan_smem(d.lin_k_dim) as u32, &mut p)
    }
}
