//! silu_mul over the gate_up GEMM's unsummed split-K partials (kiln_silu_mul_parts): the
//! bits of the GEMM's own sum followed by silu_mul, and its CPU twin on awkward shapes.

use crate::harness::*;
use crate::t_gemm::{as_gs, scratch};
use kiln::backend::cpu::ops;
use kiln::backend::cuda::kernels::{DType, Delta, Mat, SplitParts};

/// The MLP's gate_up (N = 2 x intermediate, K = hidden, a split plan) leaves its sum to
/// silu_mul when the step is one decode launch (model.rs `mlp`). Its output must be
/// gemm + silu_mul's, bit for bit, at every M the kernels split differently (register,
/// shared-x, tiled), for both x dtypes and both output dtypes.
#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn deferred_gate_up_sum_matches_gemm_then_silu_mul() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let (h, inter) = (e.k.dims().hidden, e.k.dims().intermediate);
    let n = 2 * inter;
    let plan = e.k.gemm_plan(n, h);
    assert!(plan.splits > 1, "the test needs a split plan for gate_up, got {plan:?}");
    let mut g = rng(31);
    let w = up(&s, &to_bf16(&randn_vec(&mut g, n * h, 0.05)));
    let sc = scratch(&s, 256 * n * plan.splits, n);
    let gs = as_gs(&s, &sc);
    for m in [1usize, 3, 9, 16, 17, 64, 100, 256] {
        let x0 = randn_vec(&mut g, m * h, 1.0);
        for (xt, ot) in [(DType::F32, DType::F32), (DType::F32, DType::BF16), (DType::BF16, DType::BF16), (DType::BF16, DType::F32)] {
            let (xf, xb) = (up(&s, &x0), up(&s, &to_bf16(&x0)));
            let xp = if xt == DType::F32 { ptr(&s, &xf) } else { ptr(&s, &xb) };
            let out = |dst: &cudarc::driver::CudaSlice<f32>, dst_b: &cudarc::driver::CudaSlice<half::bf16>| {
                if ot == DType::F32 {
                    Mat::f32(ptr(&s, dst), inter)
                } else {
                    Mat::bf16(ptr(&s, dst_b), inter)
                }
            };
            // The GEMM's own sum, then silu_mul of y.
            let y = poison_f32(&s, m * n);
            let (oa, oab) = (poison_f32(&s, m * inter), poison_bf16(&s, m * inter));
            e.k.gemm(&s, ptr(&s, &w), xp, xt, ptr(&s, &y), DType::F32, m, n, h, &gs).unwrap();
            e.k.silu_mul(&s, Mat::f32(ptr(&s, &y), n), inter, out(&oa, &oab), inter, m).unwrap();
            // The partials, summed by silu_mul.
            let y_b = poison_f32(&s, m * n);
            let (ob, obb) = (poison_f32(&s, m * inter), poison_bf16(&s, m * inter));
            let gu = e.k.gemm_deferred(&s, ptr(&s, &w), xp, xt, ptr(&s, &y_b), m, n, h, &gs).unwrap();
            assert_eq!(gu, Delta::Parts(SplitParts { ptr: gs.ws, splits: plan.splits, split_stride: m * n, ld: n }), "M = {m}");
            e.k.silu_mul(&s, gu, inter, out(&ob, &obb), inter, m).unwrap();
            let (a, b) = if ot == DType::F32 { (down(&s, &oa), down(&s, &ob)) } else { (from_bf16(&down(&s, &oab)), from_bf16(&down(&s, &obb))) };
            assert!(a.iter().all(|v| v.is_finite()), "M = {m} {xt:?}->{ot:?}: non-finite outputs");
            let same = a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits());
            println!("deferred gate_up sum M={m} {xt:?}->{ot:?}: bit-identical to gemm + silu_mul: {same}");
            assert!(same, "M = {m} {xt:?}->{ot:?}: the deferred sum changed the bits");
            assert!(down(&s, &y_b).iter().all(|v| v.is_nan()), "M = {m}: gemm_deferred wrote y");
        }
    }
}

/// kiln_silu_mul_parts against its CPU twin on random partials: split counts around the
/// kernel's 4 loads in flight (1, 3, 4, 5, 13), packed and padded strides, and a width
/// and offset that are not multiples of 4 (the element-by-element path).
#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn silu_mul_parts_matches_cpu() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(32);
    for (m, splits, n, up_off, ld, pad, ot) in [
        (1usize, 1usize, 9216usize, 9216usize, 18432usize, 0usize, DType::F32),
        (1, 3, 9216, 9216, 18432, 0, DType::F32),
        (3, 4, 512, 512, 1024, 8, DType::BF16),
        (7, 5, 1000, 1000, 2000, 4, DType::F32),
        (33, 13, 256, 260, 520, 0, DType::F32),
        (2, 3, 1001, 1003, 2009, 3, DType::F32),
    ] {
        let stride = m * ld + pad;
        let parts = randn_vec(&mut g, splits * stride, 1.0);
        // The twin: 0 + p0 + p1 + ... in fp32, in split order, then silu(gate) * up.
        let mut expect = Vec::with_capacity(m * n);
        for r in 0..m {
            let sum = |c: usize| (0..splits).fold(0f32, |acc, sp| acc + parts[sp * stride + r * ld + c]);
            let gate: Vec<f32> = (0..n).map(sum).collect();
            let upv: Vec<f32> = (0..n).map(|c| sum(up_off + c)).collect();
            expect.extend(ops::silu_mul(&gate, &upv));
        }
        let parts_d = up(&s, &parts);
        let (of, ob) = (poison_f32(&s, m * n), poison_bf16(&s, m * n));
        let om = if ot == DType::F32 { Mat::f32(ptr(&s, &of), n) } else { Mat::bf16(ptr(&s, &ob), n) };
        let delta = Delta::Parts(SplitParts { ptr: ptr(&s, &parts_d), splits, split_stride: stride, ld });
        e.k.silu_mul(&s, delta, up_off, om, n, m).unwrap();
        let out = if ot == DType::F32 { down(&s, &of) } else { from_bf16(&down(&s, &ob)) };
        // The sums are the twin's fp32 additions in its order (exact); expf's few ulps
        // give ~1e-7, so 1e-6 (the silu_mul test's bound); bf16 output: one rounding of 2^-9.
        let tol = if ot == DType::F32 { 1e-6 } else { 1e-2 };
        check(&format!("silu_mul_parts M={m} splits={splits} n={n} {ot:?}"), &out, &expect, tol);
    }
}
