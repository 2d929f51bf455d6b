//! The skinny decode GEMM against an f64 reference; determinism and batch invariance.

use crate::harness::*;
use crate::reference as r;
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use kiln::backend::cuda::kernels::{DType, Delta, GemmKind, GemmPlan, GemmScratch, GemmWeight, Kernels, Mat, NormPartsForm, SplitParts};
use kiln::backend::cpu::ops;
use std::sync::Arc;

pub(crate) struct Scratch {
    ws: CudaSlice<f32>,
    counters: CudaSlice<u32>,
}

pub(crate) fn scratch(s: &Arc<CudaStream>, floats: usize, n: usize) -> Scratch {
    Scratch { ws: s.alloc_zeros::<f32>(floats.max(1)).unwrap(), counters: s.alloc_zeros::<u32>(Kernels::gemm_counters_len(n)).unwrap() }
}

pub(crate) fn as_gs(s: &Arc<CudaStream>, sc: &Scratch) -> GemmScratch {
    GemmScratch { ws: ptr(s, &sc.ws), ws_floats: sc.ws.len(), counters: ptr(s, &sc.counters), counters_len: sc.counters.len() }
}

/// Runs one GEMM; returns y as f32.
#[allow(clippy::too_many_arguments)]
fn run(e: &Env, s: &Arc<CudaStream>, w: &CudaSlice<bf16>, x: &[f32], xt: DType, yt: DType, m: usize, n: usize, k: usize, plan: GemmPlan, sc: &Scratch) -> Vec<f32> {
    run_kind(e, s, w, x, xt, yt, m, n, k, plan, sc, GemmKind::Auto)
}

#[allow(clippy::too_many_arguments)]
fn run_kind(e: &Env, s: &Arc<CudaStream>, w: &CudaSlice<bf16>, x: &[f32], xt: DType, yt: DType, m: usize, n: usize, k: usize, plan: GemmPlan, sc: &Scratch, kind: GemmKind) -> Vec<f32> {
    run_weight(e, s, ptr(s, w).into(), x, xt, yt, m, n, k, plan, sc, kind)
}

/// `run_kind` reading a weight given as both layouts (t_gemm_packed).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_weight(e: &Env, s: &Arc<CudaStream>, w: GemmWeight, x: &[f32], xt: DType, yt: DType, m: usize, n: usize, k: usize, plan: GemmPlan, sc: &Scratch, kind: GemmKind) -> Vec<f32> {
    let (xf, xb) = (up(s, x), up(s, &to_bf16(x)));
    let xp = if xt == DType::F32 { ptr(s, &xf) } else { ptr(s, &xb) };
    let (yf, yb) = (poison_f32(s, m * n), poison_bf16(s, m * n));
    let yp = if yt == DType::F32 { ptr(s, &yf) } else { ptr(s, &yb) };
    e.k.gemm_ex(s, w, xp, xt, yp, yt, m, n, k, &as_gs(s, sc), plan, kind).unwrap();
    if yt == DType::F32 {
        down(s, &yf)
    } else {
        from_bf16(&down(s, &yb))
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn gemm_matches_f64_reference() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(10);
    // (N, K, plans): awkward N (not tile multiples), K from one chunk to several splits.
    let shapes: &[(usize, usize)] = &[(64, 64), (200, 200), (130, 2560), (2560, 200), (1000, 9216), (72, 4096)];
    for &(n, k) in shapes {
        let w = round_bf16(&randn_vec(&mut g, n * k, 0.05));
        let w_d = up(&s, &to_bf16(&w));
        let default = e.k.gemm_plan(n, k);
        // The default plan and a forced many-split plan with a short last slice.
        let forced = {
            let ks = (k / 3).div_ceil(32).max(1) * 32;
            GemmPlan { splits: k.div_ceil(ks), ks }
        };
        let sc = scratch(&s, 256 * n * default.splits.max(forced.splits), n);
        for &m in &[1usize, 3, 8, 9, 17, 33, 64, 65, 130, 256] {
            let x = randn_vec(&mut g, m * k, 1.0);
            let xb = round_bf16(&x);
            let ref_f = r::gemm(&x, &w, m, n, k);
            let ref_b = r::gemm(&xb, &w, m, n, k);
            for (xt, yt) in [(DType::F32, DType::F32), (DType::BF16, DType::F32), (DType::F32, DType::BF16), (DType::BF16, DType::BF16)] {
                // Only the cheap shapes get all four dtype pairs at every M.
                if n * k > 600_000 && !(xt == DType::F32 && yt == DType::F32) && m != 17 && m != 130 {
                    continue;
                }
                for plan in [default, forced] {
                    // Up to 64 rows the register, shared-x and every tiled kernel; above, the tiled
                    // kernels (128- and 256-row blocks, the latter also with paired barriers)
                    // against the register kernel run on 64-row pieces.
                    let tiled = [GemmKind::Tiled, GemmKind::TiledWide, GemmKind::TiledWidePaired];
                    let kinds: Vec<GemmKind> = match m {
                        ..=64 => [GemmKind::Register, GemmKind::SharedX].into_iter().chain(tiled).collect(),
                        _ => tiled.to_vec(),
                    };
                    let mut first: Option<Vec<f32>> = (m > 64).then(|| {
                        (0..m).step_by(64).flat_map(|r| {
                            let rows = (m - r).min(64);
                            run_kind(e, &s, &w_d, &x[r * k..(r + rows) * k], xt, yt, rows, n, k, plan, &sc, GemmKind::Register)
                        }).collect()
                    });
                    for &kind in &kinds {
                        let y = run_kind(e, &s, &w_d, &x, xt, yt, m, n, k, plan, &sc, kind);
                        let reference = if xt == DType::F32 { &ref_f } else { &ref_b };
                        // x f32 (hi+lo bf16 split): 1e-4; x bf16 (exact products, fp32 sums): 1e-5;
                        // bf16 output: 1e-2.
                        let tol = match (xt, yt) {
                            (_, DType::BF16) => 1e-2,
                            (DType::F32, _) => 1e-4,
                            _ => 1e-5,
                        };
                        check(&format!("gemm M={m} N={n} K={k} x {xt:?} y {yt:?} splits {} {kind:?}", plan.splits), &y, reference, tol);
                        // The register, shared-x (both block sizes) and tiled kernels do the
                        // same arithmetic.
                        if let Some(f) = &first {
                            assert_bits_eq(&y, f, &format!("gemm M={m} N={n} K={k} x {xt:?} y {yt:?}: {kind:?} against the register kernel"));
                        }
                        first = Some(y);
                    }
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn gemm_is_deterministic_and_batch_invariant() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(11);
    for &(n, k) in &[(2560usize, 9216usize), (1000, 2560)] {
        let w = to_bf16(&randn_vec(&mut g, n * k, 0.05));
        let w_d = up(&s, &w);
        let plan = e.k.gemm_plan(n, k);
        let sc = scratch(&s, 256 * n * plan.splits, n);
        let x = randn_vec(&mut g, 256 * k, 1.0);
        for xt in [DType::F32, DType::BF16] {
            let all = run(e, &s, &w_d, &x, xt, DType::F32, 256, n, k, plan, &sc);
            let again = run(e, &s, &w_d, &x, xt, DType::F32, 256, n, k, plan, &sc);
            assert!(all.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()), "gemm N={n} K={k} {xt:?}: two runs differ");
            // Row 5 alone and inside 9, 37, 64, 100 and 256 rows (every kernel Auto picks): bit-identical.
            for m in [1usize, 9, 37, 64, 100] {
                let off = if m == 1 { 5 } else { 0 };
                let xs = &x[off * k..(off + m) * k];
                let y = run(e, &s, &w_d, xs, xt, DType::F32, m, n, k, plan, &sc);
                let row = if m == 1 { 0 } else { 5 };
                let same = y[row * n..(row + 1) * n].iter().zip(&all[5 * n..6 * n]).all(|(a, b)| a.to_bits() == b.to_bits());
                println!("gemm N={n} K={k} {xt:?}: row 5 within M={m} identical to within M=256: {same}");
                assert!(same, "gemm N={n} K={k} {xt:?}: row 5 differs between M={m} and M=256");
            }
        }
    }
}

/// A decode-like chain (GEMM -> SiLU-mul -> GEMM -> add+RMSNorm) gives bit-identical
/// results with programmatic dependent launch on and off.
#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn pdl_chain_matches_ordinary_launches() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let (h, inter) = (e.k.dims().hidden, 2048usize);
    let mut g = rng(12);
    let m = 3;
    let w1 = up(&s, &to_bf16(&randn_vec(&mut g, 2 * inter * h, 0.05)));
    let w2 = up(&s, &to_bf16(&randn_vec(&mut g, h * inter, 0.05)));
    let nw = up(&s, &to_bf16(&rand_vec(&mut g, h, 0.3)));
    let x0 = randn_vec(&mut g, m * h, 1.0);
    let res0 = randn_vec(&mut g, m * h, 1.0);
    let (p1, p2) = (e.k.gemm_plan(2 * inter, h), e.k.gemm_plan(h, inter));
    let sc = scratch(&s, m * 2 * inter * p1.splits.max(p2.splits) + m * h * p2.splits, 2 * inter);
    let gs = as_gs(&s, &sc);
    let mut outs = Vec::new();
    for pdl in [false, true, true] {
        e.k.set_pdl(pdl);
        let x = up(&s, &x0);
        let res = up(&s, &res0);
        let (y1, y2, y3) = (poison_f32(&s, m * 2 * inter), poison_f32(&s, m * inter), poison_f32(&s, m * h));
        let out = poison_f32(&s, m * h);
        for _ in 0..3 {
            e.k.gemm(&s, ptr(&s, &w1), ptr(&s, &x), DType::F32, ptr(&s, &y1), DType::F32, m, 2 * inter, h, &gs).unwrap();
            e.k.silu_mul(&s, Mat::f32(ptr(&s, &y1), 2 * inter), inter, Mat::f32(ptr(&s, &y2), inter), inter, m).unwrap();
            e.k.gemm(&s, ptr(&s, &w2), ptr(&s, &y2), DType::F32, ptr(&s, &y3), DType::F32, m, h, inter, &gs).unwrap();
            e.k.add_rmsnorm(&s, ptr(&s, &res), Some(Mat::f32(ptr(&s, &y3), h).into()), ptr(&s, &nw), 0, ptr(&s, &x), m).unwrap();
        }
        e.k.add_rmsnorm(&s, ptr(&s, &res), None, ptr(&s, &nw), 0, ptr(&s, &out), m).unwrap();
        outs.push(down(&s, &out));
    }
    e.k.set_pdl(false);
    assert!(outs[0].iter().all(|v| v.is_finite()), "chain produced non-finite values");
    for (i, o) in outs.iter().enumerate().skip(1) {
        let same = o.iter().zip(&outs[0]).all(|(a, b)| a.to_bits() == b.to_bits());
        println!("pdl chain run {i}: identical to ordinary launches: {same}");
        assert!(same, "PDL changed the results");
    }
    let _ = ops::silu(0.0);
}

/// The out/o/down projections leave their split-K sum to the next add_rmsnorm
/// (`gemm_deferred`, the default since session 12). The norm must add the partials
/// exactly as the GEMM's last block would: same residual and outputs, bit for bit, as
/// `gemm` followed by add_rmsnorm, at every M Auto sends to each kernel (register,
/// tiled) and for both x dtypes, on the model's two residual shapes (13 splits).
#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn deferred_split_sum_matches_gemm_then_norm() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let h = e.k.dims().hidden;
    let mut g = rng(13);
    let nw = up(&s, &to_bf16(&rand_vec(&mut g, h, 0.3)));
    for k in [4096usize, 9216] {
        let plan = e.k.gemm_plan(h, k);
        assert!(plan.splits > 1, "K = {k}: the test needs a split plan, got {plan:?}");
        let w = up(&s, &to_bf16(&randn_vec(&mut g, h * k, 0.05)));
        let sc = scratch(&s, 256 * h * plan.splits, h);
        let gs = as_gs(&s, &sc);
        for m in [1usize, 3, 9, 16, 17, 64, 100, 256] {
            let x0 = randn_vec(&mut g, m * k, 1.0);
            let res0 = randn_vec(&mut g, m * h, 1.0);
            for xt in [DType::F32, DType::BF16] {
                let (xf, xb) = (up(&s, &x0), up(&s, &to_bf16(&x0)));
                let xp = if xt == DType::F32 { ptr(&s, &xf) } else { ptr(&s, &xb) };
                let y = poison_f32(&s, m * h);
                // The GEMM's own sum, then the norm of y.
                let (res_a, out_a) = (up(&s, &res0), poison_f32(&s, m * h));
                e.k.gemm(&s, ptr(&s, &w), xp, xt, ptr(&s, &y), DType::F32, m, h, k, &gs).unwrap();
                e.k.add_rmsnorm(&s, ptr(&s, &res_a), Some(Mat::f32(ptr(&s, &y), h).into()), ptr(&s, &nw), 0, ptr(&s, &out_a), m).unwrap();
                // The partials, summed by the norm.
                let (res_b, out_b) = (up(&s, &res0), poison_f32(&s, m * h));
                let y_b = poison_f32(&s, m * h);
                let delta = e.k.gemm_deferred(&s, ptr(&s, &w), xp, xt, ptr(&s, &y_b), m, h, k, &gs).unwrap();
                assert_eq!(delta, Delta::Parts(SplitParts { ptr: gs.ws, splits: plan.splits, split_stride: m * h, ld: h }), "K = {k} M = {m}");
                e.k.add_rmsnorm(&s, ptr(&s, &res_b), Some(delta), ptr(&s, &nw), 0, ptr(&s, &out_b), m).unwrap();
                let (ra, rb, oa, ob) = (down(&s, &res_a), down(&s, &res_b), down(&s, &out_a), down(&s, &out_b));
                assert!(oa.iter().all(|v| v.is_finite()), "K = {k} M = {m} {xt:?}: non-finite outputs");
                let same = ra.iter().zip(&rb).chain(oa.iter().zip(&ob)).all(|(a, b)| a.to_bits() == b.to_bits());
                println!("deferred split sum K={k} M={m} {xt:?}: residual and norm bit-identical to gemm + add_rmsnorm: {same}");
                assert!(same, "K = {k} M = {m} {xt:?}: the deferred sum changed the bits");
                // y is left alone: the partials are the result.
                assert!(down(&s, &y_b).iter().all(|v| v.is_nan()), "K = {k} M = {m}: gemm_deferred wrote y");
            }
        }
    }
}

/// kiln_add_rmsnorm_parts against its CPU twin on random partials: split counts around
/// the kernel's 16 loads in flight (1, 2, 13, 16, 17, 35) and awkward row counts.
#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn add_rmsnorm_parts_matches_cpu() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let h = e.k.dims().hidden;
    let eps = e.k.dims().rms_eps as f32;
    let mut g = rng(14);
    let w = round_bf16(&rand_vec(&mut g, h, 0.5));
    let w_d = up(&s, &to_bf16(&w));
    for (m, splits) in [(1usize, 1usize), (1, 13), (3, 2), (5, 16), (7, 17), (33, 35)] {
        let stride = m * h + 8; // partials need not be packed
        let parts = randn_vec(&mut g, splits * stride, 0.7);
        let res = randn_vec(&mut g, m * h, 1.0);
        // The twin: 0 + p0 + p1 + ... in fp32, in split order, then the residual add.
        let mut new_res = res.clone();
        for i in 0..m * h {
            let mut d = 0f32;
            for sp in 0..splits {
                d += parts[sp * stride + i];
            }
            new_res[i] += d;
        }
        let expect = ops::rms_norm(&new_res, &w, eps, 1.0);
        let (res_d, parts_d) = (up(&s, &res), up(&s, &parts));
        let (ob, of) = (poison_bf16(&s, m * h), poison_f32(&s, m * h));
        let delta = Delta::Parts(SplitParts { ptr: ptr(&s, &parts_d), splits, split_stride: stride, ld: h });
        e.k.add_rmsnorm(&s, ptr(&s, &res_d), Some(delta), ptr(&s, &w_d), ptr(&s, &ob), ptr(&s, &of), m).unwrap();
        // The same fp32 additions in the same order as the twin: exact.
        check(&format!("add_rmsnorm_parts M={m} splits={splits} residual"), &down(&s, &res_d), &new_res, 0.0);
        // The norm's sum of squares runs in another order (2560 terms): 1e-5, as add_rmsnorm's test.
        check(&format!("add_rmsnorm_parts M={m} splits={splits} out f32"), &down(&s, &of), &expect, 1e-5);
        // bf16 output: one rounding of ~2^-9 relative.
        check(&format!("add_rmsnorm_parts M={m} splits={splits} out bf16"), &from_bf16(&down(&s, &ob)), &expect, 1e-2);
        // Every kernel form gives the same bits (a row's result may not depend on which
        // form the batch size picks).
        let (want_res, want_b, want_f) = (down(&s, &res_d), down(&s, &ob), down(&s, &of));
        for form in [NormPartsForm::Block, NormPartsForm::Cluster, NormPartsForm::ClusterVecWarps] {
            let res_f = up(&s, &res);
            let (ob_f, of_f) = (poison_bf16(&s, m * h), poison_f32(&s, m * h));
            let sp = SplitParts { ptr: ptr(&s, &parts_d), splits, split_stride: stride, ld: h };
            e.k.add_rmsnorm_parts(&s, ptr(&s, &res_f), sp, ptr(&s, &w_d), ptr(&s, &ob_f), ptr(&s, &of_f), m, form).unwrap();
            let got_f = down(&s, &of_f);
            assert!(got_f.iter().all(|v| v.is_finite()), "{form:?} M={m} splits={splits}: non-finite outputs");
            let same_f = got_f.iter().zip(&want_f).all(|(a, b)| a.to_bits() == b.to_bits());
            let same_r = down(&s, &res_f).iter().zip(&want_res).all(|(a, b)| a.to_bits() == b.to_bits());
            let same_b = down(&s, &ob_f).iter().zip(&want_b).all(|(a, b)| a.to_bits() == b.to_bits());
            println!("add_rmsnorm_parts {form:?} M={m} splits={splits}: bit-identical to add_rmsnorm's choice: {}", same_f && same_r && same_b);
            assert!(same_f && same_r && same_b, "{form:?} M={m} splits={splits}: bits differ (out f32 {same_f}, residual {same_r}, out bf16 {same_b})");
        }
    }
}
