//! Gated DeltaNet: causal conv1d, fused decode step, sequential prefill.

use super::{int, params, DevPtr, Kernels, Mat};
use anyhow::{ensure, Result};
use cudarc::driver::CudaStream;

const CONV: [&str; 2] = ["kiln_conv1d_f32", "kiln_conv1d_bf16"];
const DECODE: [[&str; 2]; 2] = [
    ["kiln_gdn_decode_f32_f32", "kiln_gdn_decode_f32_bf16"],
    ["kiln_gdn_decode_bf16_f32", "kiln_gdn_decode_bf16_bf16"],
];
const PREFILL: [&str; 2] = ["kiln_gdn_prefill_f32", "kiln_gdn_prefill_bf16"];

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
    /// [B][ld] gated-norm output, head h at h*LIN_DV.
    pub out: Mat,
    pub batch: usize,
}

/// Sequential-in-time prefill over conv outputs (kernels/gdn_prefill.cu); follow with
/// `gated_rmsnorm`.
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
        let dt = g.qkv.dtype;
        ensure!(g.z.dtype == dt && g.b.dtype == dt && g.a.dtype == dt, "gdn_decode: qkv, z, b, a must share a dtype");
        ensure!(g.a.ld == g.b.ld, "gdn_decode: b and a must share a row stride");
        let (qkv, ldq, z, ldz, b, a, ldba) = (g.qkv.ptr, int(g.qkv.ld, "ld_qkv")?, g.z.ptr, int(g.z.ld, "ld_z")?, g.b.ptr, g.a.ptr, int(g.b.ld, "ld_ba")?);
        let (cw, cs, st, al, dtb, nw, sl, ps) = (g.conv_w, g.conv_state, g.state, g.a_log, g.dt_bias, g.norm_w, g.slots, g.pos);
        let (out, ldo, bb) = (g.out.ptr, int(g.out.ld, "ld_out")?, int(g.batch, "batch")?);
        let mut p = params!(qkv, ldq, z, ldz, b, a, ldba, cw, cs, st, al, dtb, nw, sl, ps, out, ldo, bb);
        let threads = (self.dims.lin_v_dim * 4) as u32;
        let grid = (self.dims.lin_num_v_heads as u32, g.batch as u32, 1);
        self.launch(DECODE[dt.idx()][g.out.dtype.idx()], stream, grid, threads, 0, &mut p)
    }

    pub fn gdn_prefill(&self, stream: &CudaStream, g: &GdnPrefill) -> Result<()> {
        if g.nseq == 0 {
            return Ok(());
        }
        ensure!(g.b.dtype == g.a.dtype && g.b.ld == g.a.ld, "gdn_prefill: b and a must share dtype and row stride");
        let (qkv, ldq, b, a, ldba) = (g.qkv, int(g.ld_qkv, "ld_qkv")?, g.b.ptr, g.a.ptr, int(g.b.ld, "ld_ba")?);
        let (al, dtb, st, cu, sl, out, ldo, ns) = (g.a_log, g.dt_bias, g.state, g.cu_seqlens, g.slots, g.out, int(g.ld_out, "ld_out")?, int(g.nseq, "nseq")?);
        let mut p = params!(qkv, ldq, b, a, ldba, al, dtb, st, cu, sl, out, ldo, ns);
        let grid = ((self.dims.lin_v_dim / 32) as u32, self.dims.lin_num_v_heads as u32, g.nseq as u32);
        // Row parts per column (GP_PARTS in gdn_prefill.cu).
        let dk = self.dims.lin_k_dim;
        let parts = if dk % 64 == 0 { 16 } else if dk % 32 == 0 { 8 } else { 4 };
        self.launch(PREFILL[g.b.dtype.idx()], stream, grid, 32 * parts, 0, &mut p)
    }
}
