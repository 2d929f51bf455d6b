//! The decode GEMM: y[M][N] = x[M][K] . W[N][K]^T for M = 1..256 (skinny kernels up to
//! 64 rows, the tiled tensor-core kernel up to 256; one arithmetic for all).

use super::{check_aligned, int, params, DType, Delta, DevPtr, Kernels, Mat, NULL};
use crate::backend::cuda::registry::{
    gemm_sx_smem, gemm_sxw_smem, gemm_tiled_rows_smem, gemm_tiled_slots_smem, gemm_tiled_smem, GEMM as NAMES, GEMM_SX, GEMM_SX_MAX_M, GEMM_TILED, GEMM_TILED_WIDE,
    GEMM_TILED_WIDE_PAIRED, PACK_WEIGHT, SMEM_NO_OPT_IN, TILED_PAIRED_SLOTS,
};
use crate::backend::weight_pack;
use anyhow::{ensure, Result};
use cudarc::driver::CudaStream;

/// A weight the decode GEMMs read: row-major (the tiled kernel and cuBLASLt read that)
/// and, once packed at load (`Kernels::pack_weight`), its packed copy
/// (`backend::weight_pack`), which the register and shared-x kernels then read instead:
/// the same elements reach the same registers, so the same bits, with contiguous loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmWeight {
    pub rows: DevPtr,
    /// The packed copy, or NULL.
    pub packed: DevPtr,
}

impl From<DevPtr> for GemmWeight {
    fn from(rows: DevPtr) -> Self {
        GemmWeight { rows, packed: NULL }
    }
}

impl GemmWeight {
    /// Rows `r`.. of a weight with `k` columns: an offset in both layouts when r % 16 == 0
    /// (whole packed tiles), else the row-major rows alone.
    pub fn from_row(self, r: usize, k: usize) -> Self {
        let off = (r * k * 2) as u64;
        let packed = if self.packed != NULL && r.is_multiple_of(16) { self.packed + off } else { NULL };
        GemmWeight { rows: self.rows + off, packed }
    }
}

/// Which kernel computes a skinny GEMM. Both give bit-identical results for one plan
/// (same W stream, k order, MMA sequence and split-K sum order; tested), so choosing by
/// M keeps rows batch invariant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKind {
    /// Register for M <= 16, SharedX above (`auto_kind`).
    Auto,
    /// Each warp reads x through L1 (kiln_gemm_x*).
    Register,
    /// x converted once per block to bf16 hi/lo in shared memory, batch tiles past M
    /// skipped, vectorised split-K reduction (kiln_gemm_sx_x*; M <= 64).
    SharedX,
    /// 128 x 64 output tiles, W and x staged through shared memory three deep
    /// (kiln_gemm_tiled_x*; any M up to `GEMM_MAX_M`).
    Tiled,
    /// 256 x 64 output tiles, one block per SM, 64 W rows per warp (kiln_gemm_tiled_w_x*;
    /// any M up to `GEMM_MAX_M`; `GemmChoices::tiled_wide_min_m`).
    TiledWide,
    /// TiledWide with one cp.async wait and block barrier per two stages and four slots a
    /// ring (kiln_gemm_tiled_w2_x*; `GemmChoices::tiled_paired`, an experiment).
    TiledWidePaired,
}

/// How decode GEMMs are launched: which kernel takes which M and N, and how K is split.
/// `Kernels::load` reads it from the environment once (`from_env`); the defaults are the
/// measured ones, each environment variable an experiment that device_run.sh measures.
/// Every choice keeps the bits of a row the same for one plan, except the split targets,
/// which every row of an engine shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmChoices {
    /// Decode GEMMs of 17..256 rows run the tiled kernel: the default since the H100 run of
    /// 2026-12-05 (bit-identical logits and batch invariance to 256, steps at batch
    /// 32/64/128/256 10/27/36/40 % faster, docs/perf.md). `KILN_GEMM_TILED=0` goes back to
    /// the shared-x kernel for 17..64 rows and 64-row pieces.
    pub tiled: bool,
    /// The fewest rows the tiled kernel takes (`KILN_GEMM_TILED_MIN_M`, default 17): an
    /// experiment since its fragments became plain shared loads (session 10); every kernel
    /// gives the same bits, so any bound keeps rows batch invariant.
    pub tiled_min_m: usize,
    /// Up to 16 rows, the shared-x kernel for the weights of at least `shared_x_min_n`
    /// columns (`KILN_GEMM_SMALL_SX=0`: the register kernel, as before session 7;
    /// `KILN_GEMM_SX_MIN_N=N` moves the bound, 0 taking shared-x for every weight).
    pub small_shared_x: bool,
    pub shared_x_min_n: usize,
    /// From this many rows (up to 16) the shared-x kernel takes every weight, the narrow
    /// ones (out, o, down) too (`KILN_GEMM_SX_ALL_MIN_M`; 0 never). H100, session 13 call
    /// 3, two runs each, bit-identical logits: shared-x for every weight against the
    /// register kernel for the narrow ones gave batch 16 5.780 / 5.766 against 6.035 /
    /// 6.027 ms, batch 8 5.112 / 5.114 against 5.178 / 5.175, but batch 1 4.516 / 4.526
    /// against 4.356 / 4.362 (2..7 rows not measured; they keep the register kernel).
    pub shared_x_all_min_m: usize,
    /// Warps per SM the split of a weight below `WIDE_N` columns aims at (`KILN_GEMM_WARPS`)
    /// and of a wide one (`KILN_GEMM_WIDE_WARPS`; 16 gives the splits before 2026-12-05).
    pub warps: usize,
    pub wide_warps: usize,
    /// The GEMMs whose only consumer is an add_rmsnorm (out, o, down) leave their split-K
    /// sum to it (`gemm_deferred`): no fence, counter and last-block sum at the end of the
    /// launch, the same bits (`KILN_GEMM_DEFER_SUM=0`: the GEMM sums, as before session 12).
    pub defer_sum: bool,
    /// With `defer_sum`, the MLP's gate_up leaves its split-K sum to silu_mul too
    /// (`KILN_GEMM_DEFER_GATE_UP=0`: the GEMM sums, as before session 17): the same bits.
    pub defer_gate_up: bool,
    /// Up to this many rows the norm that sums deferred partials runs a cluster of 8
    /// one-warp blocks per row, not one block (`KILN_GEMM_DEFER_CLUSTER_MAX_M`, default
    /// 16: a one-block row streams its 13 partials through one SM, 4-7 µs per norm at
    /// batch 1, which ate the saved tail; the same bits either way).
    pub defer_cluster_max_m: usize,
    /// The cluster norm with a warp per vector (session 21; the default since session 26,
    /// `KILN_GEMM_DEFER_CLUSTER_WARPS=0` goes back): a thread's two vectors of the
    /// 2560-wide row loaded at once instead of one after the other (two L2 round trips,
    /// SASS), the residual stored after the cluster barrier so its release fence waits on
    /// no store. The same bits (teacher-forced logits bit-identical). Measured (H100,
    /// session 26, two runs each): batch 1 3.818 / 3.808 -> 3.742 / 3.751 ms, 4 4.123 /
    /// 4.095 -> 4.004 / 4.033, 8 4.517 / 4.488 -> 4.430 / 4.455.
    pub defer_cluster_vec_warps: bool,
    /// Spread the register kernel's blocks over every SM (default; `KILN_GEMM_REG_SPREAD=0`
    /// packs them as the block scheduler does): its
    /// 78 registers let 6 blocks share an SM, and at batch 1 a launch of 520 blocks (out,
    /// o, down) sat on 107-113 SMs, 60 of them holding 6, while the rest held few or none
    /// (the SMs still busy with the previous GEMM when its blocks launched early): those
    /// 60 stream half again as much as an even share, the down GEMM's 5-7 µs tail (H100
    /// per-block timeline, session 20). Unused dynamic shared memory (`spread_smem`) caps
    /// the blocks per SM; the arithmetic is untouched. Measured (H100, session 21): batch 1
    /// 3.981 -> 3.785 ms, batch 4 4.146 -> 4.032, batch 8 unchanged (shared-x from 8 rows),
    /// the down GEMM's last block 20-25 -> 16-18 µs after its release, logits bit-identical.
    pub reg_spread: bool,
    /// From this many rows the tiled GEMMs run the wide kernel (256 x 64 tiles, one block
    /// per SM, 64 W rows per warp: a third fewer shared-memory reads per MMA and half the
    /// x conversions; `KILN_GEMM_TILED_WIDE_MIN_M`, 0 never). The same bits whatever the
    /// bound. Measured (H100, session 22, from 17 rows against none, two runs each,
    /// logits bit-identical): batch 32 +1.1 %, 64 -1.4 %, 128 -3.3 %, 256 -4.0 % (31.6
    /// against 32.9 ms), so the default takes it from 64 rows.
    pub tiled_wide_min_m: usize,
    /// The wide tiled GEMM as `TiledWidePaired` (`KILN_GEMM_TILED_PAIRED=1`, session 26, an
    /// experiment, unmeasured): half the per-stage waits and barriers, which with one block
    /// per SM nothing else covers (the stage runs at ~60 % of mma.sync's rate, docs/kernels.md).
    /// The same bits.
    pub tiled_paired: bool,
}

impl Default for GemmChoices {
    fn default() -> Self {
        GemmChoices { tiled: true, tiled_min_m: 17, small_shared_x: true, shared_x_min_n: SHARED_X_MIN_N, shared_x_all_min_m: 8, warps: TARGET_WARPS_PER_SM, wide_warps: WIDE_TARGET_WARPS_PER_SM, defer_sum: true, defer_gate_up: true, defer_cluster_max_m: 16, defer_cluster_vec_warps: true, reg_spread: true, tiled_wide_min_m: 64, tiled_paired: false }
    }
}

impl GemmChoices {
    /// The defaults, with the environment's experiments applied.
    pub fn from_env() -> Self {
        let d = Self::default();
        let flag = |var: &str, default: bool| std::env::var(var).map_or(default, |v| v != "0");
        let num = |var: &str, default: usize| std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        GemmChoices {
            tiled: flag("KILN_GEMM_TILED", d.tiled),
            tiled_min_m: num("KILN_GEMM_TILED_MIN_M", d.tiled_min_m).max(1),
            small_shared_x: flag("KILN_GEMM_SMALL_SX", d.small_shared_x),
            shared_x_min_n: num("KILN_GEMM_SX_MIN_N", d.shared_x_min_n),
            shared_x_all_min_m: num("KILN_GEMM_SX_ALL_MIN_M", d.shared_x_all_min_m),
            warps: num("KILN_GEMM_WARPS", d.warps).max(1),
            wide_warps: num("KILN_GEMM_WIDE_WARPS", d.wide_warps).max(1),
            defer_sum: flag("KILN_GEMM_DEFER_SUM", d.defer_sum),
            defer_gate_up: flag("KILN_GEMM_DEFER_GATE_UP", d.defer_gate_up),
            defer_cluster_max_m: num("KILN_GEMM_DEFER_CLUSTER_MAX_M", d.defer_cluster_max_m),
            defer_cluster_vec_warps: flag("KILN_GEMM_DEFER_CLUSTER_WARPS", d.defer_cluster_vec_warps),
            reg_spread: flag("KILN_GEMM_REG_SPREAD", d.reg_spread),
            tiled_wide_min_m: num("KILN_GEMM_TILED_WIDE_MIN_M", d.tiled_wide_min_m),
            tiled_paired: flag("KILN_GEMM_TILED_PAIRED", d.tiled_paired),
        }
    }

    /// Rows of one decode GEMM launch: 256 with the tiled kernel, else 64.
    pub fn decode_gemm_rows(&self) -> usize {
        if self.tiled {
            GEMM_MAX_M
        } else {
            SKINNY_MAX_M
        }
    }

    /// The kernel `GemmKind::Auto` runs: up to M = 16 the shared-x kernel for the wide
    /// weights and the register kernel for the rest (shared-x for every weight from
    /// `shared_x_all_min_m` rows); the tiled kernel above (the only one
    /// that takes M > 64), or the shared-x kernel for 17..64 without it. All are
    /// bit-identical for one plan, so the choice may depend on M.
    /// Why shared-x for the wide weights at M <= 16: with the 24-warp splits the register
    /// kernel streams them slower (H100, 2026-12-05, session 7, one call: batch 1 5.30
    /// against 5.02 ms, batch 8 6.06 against 5.72), and going back to the 16-warp splits
    /// instead costs batch 32 and 64 about 0.5 ms each. The shared-x kernel lost in the
    /// step before (session 6: 5.21 against 4.89 ms) because its early L2 prefetch was
    /// missing and then over budget; `prefetch_cols` fixed both.
    pub fn auto_kind(&self, m: usize, n: usize) -> GemmKind {
        if self.tiled && m >= self.tiled_min_m.min(17) {
            if self.tiled_wide_min_m == 0 || m < self.tiled_wide_min_m {
                GemmKind::Tiled
            } else if self.tiled_paired {
                GemmKind::TiledWidePaired
            } else {
                GemmKind::TiledWide
            }
        } else if m <= 16 {
            let all = self.shared_x_all_min_m > 0 && m >= self.shared_x_all_min_m;
            if self.small_shared_x && (n >= self.shared_x_min_n || all) {
                GemmKind::SharedX
            } else {
                GemmKind::Register
            }
        } else if m <= SKINNY_MAX_M && !self.tiled {
            GemmKind::SharedX
        } else {
            GemmKind::Tiled
        }
    }

    /// The warps per SM the default plan of an N-column weight aims at.
    pub fn target_warps_per_sm(&self, n: usize) -> usize {
        if n >= WIDE_N {
            self.wide_warps
        } else {
            self.warps
        }
    }
}

/// The wide weights (qkvz, qgkv, gate_up, lm_head) that take the shared-x kernel up to 16 rows.
pub const SHARED_X_MIN_N: usize = 10240;

/// Largest M the register and shared-x kernels take.
pub const SKINNY_MAX_M: usize = 64;
/// Largest M of one GEMM launch (the tiled kernel's batch tiles: 4 x 64).
pub const GEMM_MAX_M: usize = 256;

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
/// allocation (every launch leaves them zero), or NULL: the kernels then leave the
/// partials in `ws` for the consumer to sum (`gemm_deferred`). Launches that share
/// scratch must be ordered (same stream).
#[derive(Clone, Copy, Debug)]
pub struct GemmScratch {
    pub ws: DevPtr,
    pub ws_floats: usize,
    pub counters: DevPtr,
    pub counters_len: usize,
}

/// A decode GEMM's split-K partials, left for their consumer to sum in split order from 0
/// (`Kernels::gemm_deferred`): partial s of output (m, n) at `ptr` + s * `split_stride` +
/// m * `ld` + n, fp32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitParts {
    pub ptr: DevPtr,
    pub splits: usize,
    /// fp32 elements between two splits' partials (M * N).
    pub split_stride: usize,
    /// fp32 elements between two rows of a partial (N).
    pub ld: usize,
}

/// Warps per SM the default plan aims at. Measured on the H200 (docs/kernels.md): 16
/// beats 8, 24 and 48 at M <= 16 by 15-25% on the MLP shapes (the batch-1 decode
/// case); at M = 64 24 is ~20% faster. The plan must not depend on M (batch invariance),
/// so the decode latency case wins; `gemm_plan_for` takes another target.
pub const TARGET_WARPS_PER_SM: usize = 16;

/// The target for the wide weights (N >= WIDE_N: qkvz, gate_up; the lm_head's split stays 1
/// either way). Measured on the H100 (2026-12-05, `bench_gemm_sweep`, one run), the tiled
/// kernel is faster with the splits it gives: qkvz 4 splits against 3: M = 32 54.0 against
/// 63.0 µs, M = 64 58.9 against 69.1; gate_up 3 against 2: M = 32 65.1 against 75.7, M = 64
/// 86.3 against 95.3. The register kernel at M = 1 is about 1 µs slower with them (qkvz
/// 36.5 against 35.5, gate_up 50.9 against 49.6). The whole step with them: batch 32 8.26
/// against 9.16 ms, 64 11.97 against 12.64. For qgkv (N = 10240), down and out the 16-warp
/// splits were best.
pub const WIDE_TARGET_WARPS_PER_SM: usize = 24;
/// Output columns from which `WIDE_TARGET_WARPS_PER_SM` applies.
pub const WIDE_N: usize = 12288;

impl Kernels {
    /// `out` = the row-major n x k weight `w` in the packed layout (`weight_pack::pack` is
    /// the twin); n % 16 == 0, k % 32 == 0, both 16-byte aligned.
    pub fn pack_weight(&self, stream: &CudaStream, w: DevPtr, out: DevPtr, n: usize, k: usize) -> Result<()> {
        ensure!(weight_pack::packable(n, k), "pack_weight: {n} x {k} is not a multiple of 16 x 32");
        check_aligned(w, 16, "pack_weight W")?;
        check_aligned(out, 16, "pack_weight out")?;
        let (ni, ki) = (int(n, "N")?, int(k, "K")?);
        let mut p = params!(w, out, ni, ki);
        let blocks = (n * k / 8).div_ceil(256).min(self.num_sms as usize * 8) as u32;
        self.launch(PACK_WEIGHT, stream, (blocks, 1, 1), 256, 0, &mut p)
    }

    /// The default split of K for an N x K weight on this device.
    pub fn gemm_plan(&self, n: usize, k: usize) -> GemmPlan {
        Self::gemm_plan_for(self.num_sms as usize, self.gemm_choices.target_warps_per_sm(n), n, k)
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

    /// Counters needed for an N-row weight: one per 64 rows (register and shared-x
    /// kernels) or per 128-row W tile and 64-row batch tile (tiled
    /// kernel, up to 4): n / 128 * 4 covers them all.
    pub fn gemm_counters_len(n: usize) -> usize {
        n.div_ceil(128) * GEMM_MAX_M.div_ceil(64)
    }

    /// y[M][N] = x[M][K] . W[N][K]^T with the default plan. x (row stride K) and y (row
    /// stride N) are fp32 or bf16; W bf16; K % 8 == 0; M <= 64.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(&self, stream: &CudaStream, w: impl Into<GemmWeight>, x: DevPtr, x_dtype: DType, y: DevPtr, y_dtype: DType, m: usize, n: usize, k: usize, scratch: &GemmScratch) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(()); // nothing launches (and nothing is logged)
        }
        let plan = self.gemm_plan(n, k);
        self.gemm_with_plan(stream, w, x, x_dtype, y, y_dtype, m, n, k, scratch, plan)?;
        // The launch log (timeline builds) gives each GEMM its weight bytes.
        self.note_weight_bytes((n * k * 2) as u64);
        Ok(())
    }

    /// y = x . W^T (fp32 y) with the default plan, its split-K sum left to the consumer:
    /// when the plan splits K, the partials stay in `scratch.ws` (y untouched) and the
    /// result says where; else y is written. Either way `add_rmsnorm` of the result adds
    /// the bits `gemm` would have put in y. The partials live until the next GEMM on this
    /// scratch, so the consumer must come first.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_deferred(&self, stream: &CudaStream, w: impl Into<GemmWeight>, x: DevPtr, x_dtype: DType, y: DevPtr, m: usize, n: usize, k: usize, scratch: &GemmScratch) -> Result<Delta> {
        if m == 0 || n == 0 {
            return Ok(Delta::Mat(Mat::f32(y, n))); // nothing launches (and nothing is logged)
        }
        let plan = self.gemm_plan(n, k);
        // Without counters the kernels write the partials and stop (no last-block sum);
        // one split goes straight to y.
        let parts_only = GemmScratch { counters: NULL, counters_len: 0, ..*scratch };
        self.gemm_ex(stream, w, x, x_dtype, y, DType::F32, m, n, k, &parts_only, plan, GemmKind::Auto)?;
        self.note_weight_bytes((n * k * 2) as u64);
        Ok(if plan.splits == 1 { Delta::Mat(Mat::f32(y, n)) } else { Delta::Parts(SplitParts { ptr: scratch.ws, splits: plan.splits, split_stride: m * n, ld: n }) })
    }

    /// `gemm` with an explicit split (for tuning).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_with_plan(&self, stream: &CudaStream, w: impl Into<GemmWeight>, x: DevPtr, x_dtype: DType, y: DevPtr, y_dtype: DType, m: usize, n: usize, k: usize, scratch: &GemmScratch, plan: GemmPlan) -> Result<()> {
        self.gemm_ex(stream, w, x, x_dtype, y, y_dtype, m, n, k, scratch, plan, GemmKind::Auto)
    }

    /// `gemm` with an explicit split and kernel choice.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_ex(
        &self,
        stream: &CudaStream,
        w: impl Into<GemmWeight>,
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
        let auto = kind == GemmKind::Auto;
        let kind = if auto { self.gemm_choices.auto_kind(m, n) } else { kind };
        let c = &self.gemm_choices;
        let tiled = matches!(kind, GemmKind::Tiled | GemmKind::TiledWide | GemmKind::TiledWidePaired);
        ensure!(m <= SKINNY_MAX_M || tiled, "gemm: M = {m} exceeds {SKINNY_MAX_M}, the most the {kind:?} kernel takes");
        ensure!(k > 0 && k.is_multiple_of(8), "gemm: K = {k} must be a positive multiple of 8");
        ensure!(plan.ks.is_multiple_of(32) && plan.ks > 0 && plan.splits == k.div_ceil(plan.ks), "gemm: bad plan {plan:?} for K = {k}");
        let w: GemmWeight = w.into();
        check_aligned(w.rows, 16, "gemm W")?;
        check_aligned(w.packed, 16, "gemm packed W")?;
        check_aligned(x, 16, "gemm x")?;
        if plan.splits > 1 {
            ensure!(scratch.ws_floats >= plan.splits * m * n, "gemm: workspace of {} floats < {} needed", scratch.ws_floats, plan.splits * m * n);
            let need = if scratch.counters == NULL { 0 } else { Self::gemm_counters_len(n) };
            ensure!(scratch.counters_len >= need, "gemm: {} counters < {need} needed", scratch.counters_len);
        }
        let mi = match m {
            1..=8 => 0,
            9..=16 => 1,
            17..=32 => 2,
            _ => 3,
        };
        let (ws, counters) = (scratch.ws, scratch.counters);
        let (mm, nn, kk, ks, sp) = (int(m, "M")?, int(n, "N")?, int(k, "K")?, int(plan.ks, "ks")?, int(plan.splits, "splits")?);
        if tiled {
            let w = w.rows;
            let mut p = params!(w, x, y, ws, counters, mm, nn, kk, ks, sp);
            // (tile rows of W, tile rows of the batch, threads, shared memory, names)
            let (bn, smem, names) = match kind {
                GemmKind::TiledWide => (256, gemm_tiled_rows_smem(x_dtype, 256), &GEMM_TILED_WIDE),
                GemmKind::TiledWidePaired => (256, gemm_tiled_slots_smem(x_dtype, 256, TILED_PAIRED_SLOTS), &GEMM_TILED_WIDE_PAIRED),
                _ => (128, gemm_tiled_smem(x_dtype), &GEMM_TILED),
            };
            let grid = ((n.div_ceil(bn) * m.div_ceil(64)) as u32, plan.splits as u32, 1);
            return self.launch(names[x_dtype.idx()][y_dtype.idx()], stream, grid, 256, smem as u32, &mut p);
        }
        // The skinny kernels read the packed copy when there is one and this launch covers
        // whole tiles (a launch over the first N rows of a weight may end inside one).
        let packed = w.packed != NULL && weight_pack::packable(n, k);
        let (w, w_packed) = if packed { (w.packed, 1i32) } else { (w.rows, 0i32) };
        if kind == GemmKind::SharedX {
            let mut p = params!(w, x, y, ws, counters, mm, nn, kk, ks, sp, w_packed);
            // The smallest variant that takes M (m16 has registers to spare for loading
            // the next W before the MMAs; the bits are the same in all three).
            let si = GEMM_SX_MAX_M.iter().position(|&v| m <= v).unwrap_or(GEMM_SX_MAX_M.len() - 1);
            let grid = (n.div_ceil(256) as u32, plan.splits as u32, 1);
            // Up to 16 rows the kernel stages the whole K slice of x when it fits (no
            // barrier in its loop), else a ring of two 64-k slabs.
            let ring = gemm_sx_smem(x_dtype, GEMM_SX_MAX_M[si]);
            let smem = if si == 0 { gemm_sxw_smem(x_dtype, m, plan.ks).map_or(ring, |w| w.max(ring)) } else { ring } as u32;
            return self.launch(GEMM_SX[x_dtype.idx()][y_dtype.idx()][si], stream, grid, 256, smem, &mut p);
        }
        let mut p = params!(w, x, y, ws, counters, mm, nn, kk, ks, sp, w_packed);
        let name = NAMES[x_dtype.idx()][y_dtype.idx()][mi];
        let grid = (n.div_ceil(if mi >= 2 { 128 } else { 64 }) as u32, plan.splits as u32, 1);
        let smem = if c.reg_spread { self.spread_smem(name, grid.0 as usize * grid.1 as usize)? } else { 0 };
        self.launch(name, stream, grid, GEMM_REG_THREADS, smem, &mut p)
    }
}

/// Threads of a register GEMM block (kernels/gemm.cu GEMM_ALL_M: 4 warps).
pub(crate) const GEMM_REG_THREADS: u32 = 128;

/// Dynamic shared memory (unused) that leaves room for at most ceil(blocks / sms) blocks
/// of a launch per SM, so the block scheduler spreads them over every SM instead of
/// filling some to the kernel's occupancy `per_sm` (registers); 0 when the cap is not
/// below it. `smem_per_sm` and `reserved` (per block) are the device's, `static_smem` the
/// kernel's own `__shared__` bytes. Static plus dynamic stays within 48 KB, the most a
/// launch takes without opting in (48 KB of pad on a kernel with 4 static bytes was
/// CUDA_ERROR_INVALID_VALUE at <= 3 blocks per SM, session 23).
pub fn spread_smem(blocks: usize, sms: usize, per_sm: usize, smem_per_sm: usize, reserved: usize, static_smem: usize) -> u32 {
    let cap = blocks.div_ceil(sms.max(1)).max(1);
    if cap >= per_sm {
        return 0;
    }
    // The smallest size at which cap + 1 blocks no longer fit.
    let need = (smem_per_sm / (cap + 1) + 1).saturating_sub(reserved + static_smem);
    let most = SMEM_NO_OPT_IN.saturating_sub(static_smem) / 256 * 256;
    need.div_ceil(256).saturating_mul(256).min(most) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_smem_caps_the_blocks_per_sm() {
        // An H100 (228 KB of shared memory per SM, 1 KB reserved per block) and the m8
        // register kernel (6 blocks per SM by its registers).
        let (smem, reserved, per_sm) = (228 * 1024, 1024, 6);
        let spread = |blocks| spread_smem(blocks, 132, per_sm, smem, reserved, 0);
        let fits = |pad: u32| smem / (pad as usize + reserved);
        // out/o/down at batch 1 on 132 SMs: 520 blocks, at most 4 per SM.
        let s = spread(520);
        assert!(s > 0 && s <= 48 * 1024 && fits(s) == 4, "{s} bytes let {} blocks share an SM", fits(s));
        // 5 per SM (600 blocks); no pad where the registers already cap it (6 per SM).
        assert_eq!(fits(spread(600)), 5);
        assert_eq!(spread(800), 0);
        // Fewer blocks than SMs: one per SM would need more than 48 KB, so the cap is the
        // most 48 KB gives (4 a SM), still an even spread for so few blocks.
        assert_eq!(fits(spread(100)), 4);
        // A kernel with its own shared memory (the split counter, 4 bytes): static plus
        // pad within 48 KB at every block count, and the pad still caps the blocks per SM.
        for blocks in [1, 100, 320, 396, 520, 600] {
            let s = spread_smem(blocks, 132, per_sm, smem, reserved, 4) as usize;
            assert!(s + 4 <= 48 * 1024, "{blocks} blocks: {s} bytes of pad");
            let fits = smem / (s + 4 + reserved);
            assert!(fits <= blocks.div_ceil(132).max(4), "{blocks} blocks: {fits} fit an SM");
        }
    }

    #[test]
    fn the_tiled_kernel_takes_17_rows_and_up_by_default() {
        // CI never sets KILN_GEMM_TILED: the default, measured on the device, is the tiled
        // kernel from 17 rows, and decode GEMMs in 256-row pieces.
        assert!(std::env::var("KILN_GEMM_TILED").is_err() && std::env::var("KILN_GEMM_TILED_MIN_M").is_err());
        assert!(std::env::var("KILN_GEMM_SX_ALL_MIN_M").is_err() && std::env::var("KILN_GEMM_TILED_WIDE_MIN_M").is_err());
        assert!(std::env::var("KILN_GEMM_SMALL_SX").is_err() && std::env::var("KILN_GEMM_SX_MIN_N").is_err());
        assert!(std::env::var("KILN_GEMM_WARPS").is_err() && std::env::var("KILN_GEMM_WIDE_WARPS").is_err());
        assert!(std::env::var("KILN_GEMM_DEFER_SUM").is_err() && std::env::var("KILN_GEMM_DEFER_CLUSTER_MAX_M").is_err());
        assert!(std::env::var("KILN_GEMM_REG_SPREAD").is_err() && std::env::var("KILN_GEMM_DEFER_CLUSTER_WARPS").is_err());
        assert!(std::env::var("KILN_GEMM_TILED_PAIRED").is_err());
        // With none of the experiments set, the environment gives the defaults.
        let c = GemmChoices::from_env();
        assert_eq!(c, GemmChoices::default());
        assert!(c.tiled);
        assert!(c.defer_sum, "out/o/down leave their split sum to the norm by default");
        assert!(c.reg_spread, "the register kernel's blocks spread over every SM (measured, session 21)");
        assert_eq!(c.decode_gemm_rows(), GEMM_MAX_M);
        for n in [64, 2560, 10239, 10240, 12352, 248_320] {
            let small = if n >= SHARED_X_MIN_N { GemmKind::SharedX } else { GemmKind::Register };
            assert_eq!(c.auto_kind(1, n), small);
            assert_eq!(c.auto_kind(7, n), small);
            // From 8 rows every weight takes the shared-x kernel (measured, session 13).
            assert_eq!(c.auto_kind(8, n), GemmKind::SharedX);
            assert_eq!(c.auto_kind(16, n), GemmKind::SharedX);
            assert_eq!(GemmChoices { shared_x_all_min_m: 0, ..c }.auto_kind(16, n), small);
            assert_eq!(c.auto_kind(17, n), GemmKind::Tiled);
            assert_eq!(c.auto_kind(63, n), GemmKind::Tiled);
            // From 64 rows the 256-row blocks (measured, session 22); 0 never.
            assert_eq!(c.auto_kind(64, n), GemmKind::TiledWide);
            assert_eq!(c.auto_kind(GEMM_MAX_M, n), GemmKind::TiledWide);
            assert_eq!(GemmChoices { tiled_wide_min_m: 0, ..c }.auto_kind(GEMM_MAX_M, n), GemmKind::Tiled);
            // The paired-barrier experiment takes the wide kernel's rows, and only those.
            let paired = GemmChoices { tiled_paired: true, ..c };
            assert_eq!(paired.auto_kind(GEMM_MAX_M, n), GemmKind::TiledWidePaired);
            assert_eq!(paired.auto_kind(63, n), GemmKind::Tiled);
            assert_eq!(GemmChoices { tiled_wide_min_m: 0, ..paired }.auto_kind(GEMM_MAX_M, n), GemmKind::Tiled);
            // The experiment's lower bound moves only the small batches to the tiled
            // kernel; 17 rows and up stay there whatever it says.
            let low = GemmChoices { tiled_min_m: 9, ..c };
            assert_eq!(low.auto_kind(7, n), small);
            assert_eq!(low.auto_kind(9, n), GemmKind::Tiled);
            assert_eq!(GemmChoices { tiled_min_m: 40, ..c }.auto_kind(17, n), GemmKind::Tiled);
            assert_eq!(GemmChoices { tiled: false, tiled_min_m: 1, ..c }.auto_kind(1, n), small);
        }
        // Counters cover the tiled kernel's (W tile, batch tile) pairs and the skinny
        // kernels' 64-row groups.
        for n in [1usize, 64, 65, 128, 129, 2560, 248_320] {
            assert!(Kernels::gemm_counters_len(n) >= n.div_ceil(128) * GEMM_MAX_M.div_ceil(64));
            assert!(Kernels::gemm_counters_len(n) >= n.div_ceil(64));
        }
    }

    #[test]
    fn the_measured_splits_of_the_model_shapes_on_132_sms() {
        // H100 / H200 (132 SMs), Qwen3.5-4B: qkvz (with b, a) 4 splits, gate_up 3, qgkv 3,
        // down and out 13, the lm_head 1 (docs/perf.md, session 6).
        let c = GemmChoices::default();
        let plan = |n: usize, k: usize| Kernels::gemm_plan_for(132, c.target_warps_per_sm(n), n, k).splits;
        assert_eq!(plan(12352, 2560), 4);
        assert_eq!(plan(18432, 2560), 3);
        assert_eq!(plan(10240, 2560), 3);
        assert_eq!(plan(2560, 9216), 13);
        assert_eq!(plan(2560, 4096), 13);
        assert_eq!(plan(248_320, 2560), 1);
    }

    #[test]
    fn rows_of_a_packed_weight_keep_the_packed_copy_only_at_whole_tiles() {
        let w = GemmWeight { rows: 0x10_0000, packed: 0x80_0000 };
        // Rows 32.. of a 2560-column weight: 32 * 2560 * 2 bytes further in both layouts.
        assert_eq!(w.from_row(32, 2560), GemmWeight { rows: 0x10_0000 + 163_840, packed: 0x80_0000 + 163_840 });
        // Rows 8.. start inside a tile: row-major only.
        assert_eq!(w.from_row(8, 2560), GemmWeight { rows: 0x10_0000 + 40_960, packed: NULL });
        // An unpacked weight stays unpacked.
        assert_eq!(GemmWeight::from(0x10_0000).from_row(32, 2560).packed, NULL);
    }
}
