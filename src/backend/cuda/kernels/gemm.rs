//! The skinny decode GEMM: y[M][N] = x[M][K] . W[N][K]^T for M = 1..64.

use super::{check_aligned, gemm_staged_smem, int, params, DType, DevPtr, Kernels};
use anyhow::{ensure, Result};
use cudarc::driver::CudaStream;

const NAMES: [[[&str; 4]; 2]; 2] = [
    [
        ["kiln_gemm_xf32_yf32_m8", "kiln_gemm_xf32_yf32_m16", "kiln_gemm_xf32_yf32_m32", "kiln_gemm_xf32_yf32_m64"],
        ["kiln_gemm_xf32_ybf16_m8", "kiln_gemm_xf32_ybf16_m16", "kiln_gemm_xf32_ybf16_m32", "kiln_gemm_xf32_ybf16_m64"],
    ],
    [
        ["kiln_gemm_xbf16_yf32_m8", "kiln_gemm_xbf16_yf32_m16", "kiln_gemm_xbf16_yf32_m32", "kiln_gemm_xbf16_yf32_m64"],
        ["kiln_gemm_xbf16_ybf16_m8", "kiln_gemm_xbf16_ybf16_m16", "kiln_gemm_xbf16_ybf16_m32", "kiln_gemm_xbf16_ybf16_m64"],
    ],
];

const STAGED: [[[&str; 2]; 2]; 2] = [
    [["kiln_gemm_sx_xf32_yf32_m32", "kiln_gemm_sx_xf32_yf32_m64"], ["kiln_gemm_sx_xf32_ybf16_m32", "kiln_gemm_sx_xf32_ybf16_m64"]],
    [["kiln_gemm_sx_xbf16_yf32_m32", "kiln_gemm_sx_xbf16_yf32_m64"], ["kiln_gemm_sx_xbf16_ybf16_m32", "kiln_gemm_sx_xbf16_ybf16_m64"]],
];

/// Which kernel computes a skinny GEMM. Both give bit-identical results for one plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKind {
    /// Register for M <= 16; above, v2 when K is split, else staged (`auto_kind`).
    Auto,
    /// Each warp reads x through L1 (kiln_gemm_x*).
    Register,
    /// x staged in shared memory for the block's 8 warps (kiln_gemm_sx_x*; M > 16 only).
    Staged,
    /// x converted once per block to bf16 hi/lo in shared memory, batch tiles past M
    /// skipped, vectorised split-K reduction (kiln_gemm_sx_x* in mode 1; any M).
    V2,
}

/// The kernel `GemmKind::Auto` runs. All kinds give bit-identical results for one plan
/// (tested), so choosing by M keeps rows batch invariant. Measured on the H200
/// (docs/kernels.md): the register kernel is fastest at M <= 8 (v2 is 10-25% slower
/// there); above M = 16 v2 beats the staged kernel by 1.2-2x wherever K is split, and
/// ties or loses slightly (lm_head) where it is not.
fn auto_kind(m: usize, plan: GemmPlan) -> GemmKind {
    if m <= 16 {
        GemmKind::Register
    } else if plan.splits > 1 {
        GemmKind::V2
    } else {
        GemmKind::Staged
    }
}

/// Dynamic shared memory of the v2 path: two slabs of 64 k for max_m rows, row stride
/// 320 bytes (fp32 x as bf16 hi + lo) or 192 (bf16 x). Within `gemm_staged_smem`.
fn gemm_v2_smem(x: DType, max_m: usize) -> usize {
    2 * max_m * if x == DType::F32 { 320 } else { 192 }
}

/// Largest M the skinny GEMM takes.
pub const GEMM_MAX_M: usize = 64;

/// How K is split across blocks: `splits` slices of `ks` columns (ks % 32 == 0).
/// Depends on (N, K) and the device only, never on M, so a row's result does not
/// depend on the batch it is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPlan {
    pub splits: usize,
    pub ks: usize,
}

/// Scratch for split-K: `ws` fp32 of at least `Kernels::gemm_workspace_floats` elements,
/// `counters` u32 of at least `Kernels::gemm_counters_len` elements, zeroed once at
/// allocation (every launch leaves them zero). Launches that share scratch must be
/// ordered (same stream).
#[derive(Clone, Copy, Debug)]
pub struct GemmScratch {
    pub ws: DevPtr,
    pub ws_floats: usize,
    pub counters: DevPtr,
    pub counters_len: usize,
}

/// Warps per SM the default plan aims at. Measured on the H200 (docs/kernels.md): 16
/// beats 8, 24 and 48 at M <= 16 by 15-25% on the MLP shapes (the batch-1 decode
/// case); at M = 64 24 is ~20% faster. The plan must not depend on M (batch invariance),
/// so the decode latency case wins; `gemm_plan_for` takes another target.
pub const TARGET_WARPS_PER_SM: usize = 16;

impl Kernels {
    /// The default split of K for an N x K weight on this device.
    pub fn gemm_plan(&self, n: usize, k: usize) -> GemmPlan {
        Self::gemm_plan_for(self.num_sms as usize, TARGET_WARPS_PER_SM, n, k)
    }

    /// The split for `sms` multiprocessors aiming at `warps_per_sm` warps each: enough
    /// 16-row x ks warp tiles to fill the device, each slice at least 256 columns.
    pub fn gemm_plan_for(sms: usize, warps_per_sm: usize, n: usize, k: usize) -> GemmPlan {
        let row_warps = n.div_ceil(16).max(1);
        let target = (sms * warps_per_sm) as f64 / row_warps as f64;
        let max_splits = (k / 256).max(1);
        let s = (target.round() as usize).clamp(1, max_splits);
        let ks = (k.div_ceil(s)).div_ceil(32) * 32;
        GemmPlan { splits: k.div_ceil(ks).max(1), ks }
    }

    /// fp32 workspace elements a GEMM of up to `max_m` rows needs for this N x K.
    pub fn gemm_workspace_floats(&self, max_m: usize, n: usize, k: usize) -> usize {
        let p = self.gemm_plan(n, k);
        if p.splits == 1 {
            0
        } else {
            p.splits * max_m * n
        }
    }

    /// Counters needed for an N-row weight (one per 64 rows).
    pub fn gemm_counters_len(n: usize) -> usize {
        n.div_ceil(64)
    }

    /// y[M][N] = x[M][K] . W[N][K]^T with the default plan. x (row stride K) and y (row
    /// stride N) are fp32 or bf16; W bf16; K % 8 == 0; M <= 64.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(&self, stream: &CudaStream, w: DevPtr, x: DevPtr, x_dtype: DType, y: DevPtr, y_dtype: DType, m: usize, n: usize, k: usize, scratch: &GemmScratch) -> Result<()> {
        let plan = self.gemm_plan(n, k);
        self.gemm_with_plan(stream, w, x, x_dtype, y, y_dtype, m, n, k, scratch, plan)
    }

    /// `gemm` with an explicit split (for tuning).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_with_plan(&self, stream: &CudaStream, w: DevPtr, x: DevPtr, x_dtype: DType, y: DevPtr, y_dtype: DType, m: usize, n: usize, k: usize, scratch: &GemmScratch, plan: GemmPlan) -> Result<()> {
        self.gemm_ex(stream, w, x, x_dtype, y, y_dtype, m, n, k, scratch, plan, GemmKind::Auto)
    }

    /// `gemm` with an explicit split and kernel choice.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_ex(
        &self,
        stream: &CudaStream,
        w: DevPtr,
        x: DevPtr,
        x_dtype: DType,
        y: DevPtr,
        y_dtype: DType,
        m: usize,
        n: usize,
        k: usize,
        scratch: &GemmScratch,
        plan: GemmPlan,
        kind: GemmKind,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        ensure!(m <= GEMM_MAX_M, "gemm: M = {m} exceeds {GEMM_MAX_M} (use cuBLASLt for prefill)");
        ensure!(k > 0 && k.is_multiple_of(8), "gemm: K = {k} must be a positive multiple of 8");
        ensure!(plan.ks.is_multiple_of(32) && plan.ks > 0 && plan.splits == k.div_ceil(plan.ks), "gemm: bad plan {plan:?} for K = {k}");
        check_aligned(w, 16, "gemm W")?;
        check_aligned(x, 16, "gemm x")?;
        if plan.splits > 1 {
            ensure!(scratch.ws_floats >= plan.splits * m * n, "gemm: workspace of {} floats < {} needed", scratch.ws_floats, plan.splits * m * n);
            ensure!(scratch.counters_len >= Self::gemm_counters_len(n), "gemm: {} counters < {} needed", scratch.counters_len, Self::gemm_counters_len(n));
        }
        let mi = match m {
            1..=8 => 0,
            9..=16 => 1,
            17..=32 => 2,
            _ => 3,
        };
        let kind = match kind {
            GemmKind::Auto => auto_kind(m, plan),
            GemmKind::Staged => {
                ensure!(m > 16, "gemm: the staged kernel takes M > 16 (got {m})");
                GemmKind::Staged
            }
            other => other,
        };
        let (ws, counters) = (scratch.ws, scratch.counters);
        let (mm, nn, kk, ks, sp) = (int(m, "M")?, int(n, "N")?, int(k, "K")?, int(plan.ks, "ks")?, int(plan.splits, "splits")?);
        if kind == GemmKind::Staged || kind == GemmKind::V2 {
            let mode: i32 = if kind == GemmKind::V2 { 1 } else { 0 };
            let mut p = params!(w, x, y, ws, counters, mm, nn, kk, ks, sp, mode);
            let (si, max_m) = if m <= 32 { (0, 32) } else { (1, 64) };
            let grid = (n.div_ceil(256) as u32, plan.splits as u32, 1);
            let smem = if mode == 1 { gemm_v2_smem(x_dtype, max_m) } else { gemm_staged_smem(x_dtype, max_m) } as u32;
            return self.launch(STAGED[x_dtype.idx()][y_dtype.idx()][si], stream, grid, 256, smem, &mut p);
        }
        let mut p = params!(w, x, y, ws, counters, mm, nn, kk, ks, sp);
        let rows_per_block = if mi >= 2 { 128 } else { 64 };
        let grid = (n.div_ceil(rows_per_block) as u32, plan.splits as u32, 1);
        self.launch(NAMES[x_dtype.idx()][y_dtype.idx()][mi], stream, grid, 128, 0, &mut p)
    }
}
