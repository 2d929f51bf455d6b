//! Full attention: q/k norm + RoPE + paged KV write, prefill and decode attention.

use super::{int, params, DevPtr, Kernels, Mat, NULL};
use crate::backend::cuda::registry::{attn_prefill_smem, ATTN_DECODE_COMBINE as COMBINE, ATTN_DECODE_PARTIAL, ATTN_PREFILL, ATTN_PREFILL_ROWS, QK_NORM_ROPE as ROPE};
use anyhow::{ensure, Context, Result};
use cudarc::driver::CudaStream;


/// q/k RMSNorm (1 + w), partial RoPE, K/V into the paged cache (kernels/rope_kv.cu).
#[derive(Clone, Copy, Debug)]
pub struct QkNormRope {
    /// q_proj output rows: head h at h*2*HEAD_DIM = [q | gate].
    pub qg: Mat,
    /// k_proj / v_proj outputs: same dtype and row stride (`k.ld`).
    pub k: Mat,
    pub v: Mat,
    pub q_norm_w: DevPtr,
    pub k_norm_w: DevPtr,
    /// i32 [T] absolute positions; i32 [T] cache rows (block * block_size + offset, < 0: no write).
    pub pos: DevPtr,
    pub kv_loc: DevPtr,
    /// fp32 [T][NUM_HEADS][HEAD_DIM].
    pub q_out: DevPtr,
    /// bf16 [num_blocks][NUM_KV_HEADS][block_size][HEAD_DIM].
    pub k_cache: DevPtr,
    pub v_cache: DevPtr,
    pub block_size: usize,
    pub tokens: usize,
}

/// Causal prefill attention over the paged cache (kernels/attn_prefill.cu).
#[derive(Clone, Copy, Debug)]
pub struct AttnPrefill {
    /// fp32 [T_total][NUM_HEADS][HEAD_DIM].
    pub q: DevPtr,
    pub k_cache: DevPtr,
    pub v_cache: DevPtr,
    /// i32 [nseq + 1], i32 [nseq], i32 [nseq][bt_stride].
    pub cu_seqlens: DevPtr,
    pub start_pos: DevPtr,
    pub block_tables: DevPtr,
    pub bt_stride: usize,
    pub block_size: usize,
    /// fp32 [T_total][NUM_HEADS][HEAD_DIM].
    pub out: DevPtr,
    pub nseq: usize,
    /// Longest chunk among the sequences (sizes the grid).
    pub max_tokens: usize,
}

/// Decode attention, split over the sequence, then combined (+ optional output gate)
/// (kernels/attn_decode.cu).
#[derive(Clone, Copy, Debug)]
pub struct AttnDecode {
    /// fp32 [B][NUM_HEADS][HEAD_DIM].
    pub q: DevPtr,
    pub k_cache: DevPtr,
    pub v_cache: DevPtr,
    /// i32 [B][bt_stride]; i32 [B] keys visible (0: padding row).
    pub block_tables: DevPtr,
    pub bt_stride: usize,
    pub ctx_lens: DevPtr,
    pub block_size: usize,
    /// Scratch: fp32 [B][NUM_HEADS][max_parts][HEAD_DIM] and [B][NUM_HEADS][max_parts][2].
    pub part_acc: DevPtr,
    pub part_ml: DevPtr,
    /// Most partitions a sequence is cut into (fixed per engine: results depend on it).
    pub max_parts: usize,
    /// Optional gate (q_proj output + HEAD_DIM) of the output dtype, head stride `gate_hs`.
    pub gate: Option<Mat>,
    pub gate_hs: usize,
    /// [B][ld] output, head h at h*HEAD_DIM.
    pub out: Mat,
    pub batch: usize,
}

impl Kernels {
    pub fn qk_norm_rope(&self, stream: &CudaStream, r: &QkNormRope) -> Result<()> {
        if r.tokens == 0 {
            return Ok(());
        }
        let dt = r.qg.dtype;
        ensure!(r.k.dtype == dt && r.v.dtype == dt && r.k.ld == r.v.ld, "qk_norm_rope: qg, k, v must share a dtype; k and v a row stride");
        ensure!(r.block_size > 0, "qk_norm_rope: block_size must be positive");
        let (qg, ldqg, k, v, ldkv) = (r.qg.ptr, int(r.qg.ld, "ld_qg")?, r.k.ptr, r.v.ptr, int(r.k.ld, "ld_kv")?);
        let (qw, kw, pos, loc, qo, kc, vc) = (r.q_norm_w, r.k_norm_w, r.pos, r.kv_loc, r.q_out, r.k_cache, r.v_cache);
        let (bs, t) = (int(r.block_size, "block_size")?, int(r.tokens, "tokens")?);
        let mut p = params!(qg, ldqg, k, v, ldkv, qw, kw, pos, loc, qo, kc, vc, bs, t);
        let threads = ((self.dims.num_heads + self.dims.num_kv_heads) * 32) as u32;
        self.launch(ROPE[dt.idx()], stream, (r.tokens as u32, 1, 1), threads, 0, &mut p)
    }

    pub fn attn_prefill(&self, stream: &CudaStream, a: &AttnPrefill) -> Result<()> {
        self.attn_prefill_with_rows(stream, a, self.attn_prefill_rows)
    }

    /// `attn_prefill` with the variant of `rows` rows per block (`ATTN_PREFILL_ROWS`).
    pub fn attn_prefill_with_rows(&self, stream: &CudaStream, a: &AttnPrefill, rows: usize) -> Result<()> {
        if a.nseq == 0 || a.max_tokens == 0 {
            return Ok(());
        }
        let v = ATTN_PREFILL_ROWS.iter().position(|&r| r == rows).with_context(|| format!("attn_prefill: no variant of {rows} rows per block"))?;
        let group = self.dims.num_heads / self.dims.num_kv_heads;
        let qt = rows / group;
        let (q, kc, vc, cu, sp, bt) = (a.q, a.k_cache, a.v_cache, a.cu_seqlens, a.start_pos, a.block_tables);
        let (bts, bs, out, ns) = (int(a.bt_stride, "bt_stride")?, int(a.block_size, "block_size")?, a.out, int(a.nseq, "nseq")?);
        let mut p = params!(q, kc, vc, cu, sp, bt, bts, bs, out, ns);
        let grid = (a.max_tokens.div_ceil(qt) as u32, self.dims.num_kv_heads as u32, a.nseq as u32);
        let smem = attn_prefill_smem(self.dims.head_dim, rows) as u32;
        self.launch(ATTN_PREFILL[v], stream, grid, 2 * rows as u32, smem, &mut p)
    }

    /// Partition + combine launches (max_parts partition blocks per sequence and KV head).
    /// (Session 23's one-launch form, the last block per row and KV head combining, measured
    /// +3.1 to +3.5 % a step at batch 1 / 8 / 64 in session 25: deleted.)
    pub fn attn_decode(&self, stream: &CudaStream, a: &AttnDecode) -> Result<()> {
        if a.batch == 0 {
            return Ok(());
        }
        ensure!(a.max_parts > 0, "attn_decode: max_parts must be positive");
        let (q, kc, vc, bt, bts, cl) = (a.q, a.k_cache, a.v_cache, a.block_tables, int(a.bt_stride, "bt_stride")?, a.ctx_lens);
        let (bs, pa, pm, mp, b) = (int(a.block_size, "block_size")?, a.part_acc, a.part_ml, int(a.max_parts, "max_parts")?, int(a.batch, "batch")?);
        let mut p = params!(q, kc, vc, bt, bts, cl, bs, pa, pm, mp, b);
        let grid = (a.max_parts as u32, self.dims.num_kv_heads as u32, a.batch as u32);
        self.launch(ATTN_DECODE_PARTIAL, stream, grid, 128, 0, &mut p)?;

        let (gp, ldg) = match a.gate {
            Some(g) => {
                ensure!(g.dtype == a.out.dtype, "attn_decode: the gate must have the output's dtype");
                (g.ptr, int(g.ld, "ld_gate")?)
            }
            None => (NULL, 0),
        };
        let (hs, op, ldo) = (int(a.gate_hs, "gate_hs")?, a.out.ptr, int(a.out.ld, "ld_out")?);
        let mut p = params!(pa, pm, cl, mp, gp, ldg, hs, op, ldo, b);
        let grid = (self.dims.num_heads as u32, a.batch as u32, 1);
        self.launch(COMBINE[a.out.dtype.idx()], stream, grid, self.dims.head_dim as u32, 0, &mut p)
    }

    /// Scratch elements attn_decode needs: (part_acc floats, part_ml floats).
    pub fn attn_decode_scratch(&self, batch: usize, max_parts: usize) -> (usize, usize) {
        let rows = batch * self.dims.num_heads * max_parts;
        (rows * self.dims.head_dim, rows * 2)
    }
}
