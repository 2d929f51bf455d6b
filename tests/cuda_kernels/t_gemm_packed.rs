//! The packed weight layout (backend::weight_pack): the device's packing against its CPU
//! twin, and the skinny GEMMs reading the packed copy against the row-major one, bit for bit.

use crate::harness::*;
use crate::t_gemm::{run_weight, scratch, Scratch};
use cudarc::driver::CudaStream;
use kiln::backend::cuda::kernels::{DType, GemmKind, GemmPlan, GemmWeight};
use kiln::backend::weight_pack;
use std::sync::Arc;

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn packed_layout_matches_cpu() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(40);
    // Shapes: one tile, several tiles and chunks, the qkvzba and down shapes of Qwen3.5-4B.
    for &(n, k) in &[(16usize, 32usize), (48, 96), (208, 2560), (12_352, 2560), (2560, 9216)] {
        let w = to_bf16(&randn_vec(&mut g, n * k, 1.0));
        let (wd, out) = (up(&s, &w), poison_bf16(&s, n * k));
        e.k.pack_weight(&s, ptr(&s, &wd), ptr(&s, &out), n, k).unwrap();
        let got: Vec<u16> = down(&s, &out).iter().map(|v| v.to_bits()).collect();
        let want = weight_pack::pack(&w.iter().map(|v| v.to_bits()).collect::<Vec<u16>>(), n, k);
        assert!(got == want, "pack_weight {n} x {k} differs from weight_pack::pack");
    }
    // A shape that does not pack is refused, not garbled.
    let wd = up(&s, &to_bf16(&randn_vec(&mut g, 24 * 32, 1.0)));
    let out = poison_bf16(&s, 24 * 32);
    assert!(e.k.pack_weight(&s, ptr(&s, &wd), ptr(&s, &out), 24, 32).is_err());
}

/// y's bits of one GEMM of `kind` reading `w` (t_gemm's runner).
#[allow(clippy::too_many_arguments)]
fn bits(e: &Env, s: &Arc<CudaStream>, w: GemmWeight, x: &[f32], xt: DType, m: usize, n: usize, k: usize, plan: GemmPlan, sc: &Scratch, kind: GemmKind) -> Vec<u32> {
    run_weight(e, s, w, x, xt, DType::F32, m, n, k, plan, sc, kind).iter().map(|v| v.to_bits()).collect()
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn gemm_packed_matches_row_major_bits() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(41);
    // N multiples of 16 (whole tiles) including one not a multiple of the blocks' 64 or 256
    // rows; K from one chunk to several splits; the model's out/down shapes.
    for &(n, k) in &[(64usize, 64usize), (208, 2560), (1040, 4096), (2560, 9216)] {
        let w = to_bf16(&randn_vec(&mut g, n * k, 0.05));
        let wd = up(&s, &w);
        let packed = poison_bf16(&s, n * k);
        e.k.pack_weight(&s, ptr(&s, &wd), ptr(&s, &packed), n, k).unwrap();
        let rows = GemmWeight::from(ptr(&s, &wd));
        let both = GemmWeight { rows: ptr(&s, &wd), packed: ptr(&s, &packed) };
        let default = e.k.gemm_plan(n, k);
        let forced = {
            let ks = (k / 3).div_ceil(32).max(1) * 32;
            GemmPlan { splits: k.div_ceil(ks), ks }
        };
        let sc = scratch(&s, 64 * n * default.splits.max(forced.splits), n);
        for &m in &[1usize, 3, 8, 9, 16, 17, 33, 64] {
            let x = randn_vec(&mut g, m * k, 1.0);
            for xt in [DType::F32, DType::BF16] {
                for plan in [default, forced] {
                    let kinds = [GemmKind::Register, GemmKind::SharedX];
                    for &kind in &kinds {
                        let what = format!("M={m} N={n} K={k} {xt:?} splits {} {kind:?}", plan.splits);
                        let a = bits(e, &s, rows, &x, xt, m, n, k, plan, &sc, kind);
                        let b = bits(e, &s, both, &x, xt, m, n, k, plan, &sc, kind);
                        assert!(a == b, "{what}: the packed weight gives other bits");
                        assert!(a.iter().all(|v| f32::from_bits(*v).is_finite()), "{what}: non-finite output");
                    }
                }
                // Rows 16.. (whole tiles, an offset in both layouts) and the first n - 8 rows
                // (not whole tiles: the launch must read row-major).
                if n > 16 {
                    let kind = GemmKind::Auto;
                    let a = bits(e, &s, rows.from_row(16, k), &x, xt, m, n - 16, k, default, &sc, kind);
                    let b = bits(e, &s, both.from_row(16, k), &x, xt, m, n - 16, k, default, &sc, kind);
                    assert!(a == b, "M={m} N={n} K={k} {xt:?}: rows 16.. of the packed weight give other bits");
                    let part = e.k.gemm_plan(n - 8, k);
                    let a = bits(e, &s, rows, &x, xt, m, n - 8, k, part, &sc, kind);
                    let b = bits(e, &s, both, &x, xt, m, n - 8, k, part, &sc, kind);
                    assert!(a == b, "M={m} N={} K={k} {xt:?}: a launch ending inside a tile gives other bits", n - 8);
                }
            }
        }
    }
}
