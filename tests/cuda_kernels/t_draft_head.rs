//! The MTP draft's int8 lm_head (kernels/draft_head.cu) against its CPU twins.

use crate::harness::*;
use crate::t_basic::argmax_scratch;
use kiln::backend::cpu::ops;
use kiln::backend::cuda::kernels::Mat;

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn quant_rows_i8_equals_its_cpu_twin_bit_for_bit() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(41);
    // (rows, K): one row, a ragged count of rows past a block's 8, one 8-wide chunk, a K
    // that is not a multiple of a warp's 256, the hidden size.
    for (n, k) in [(1usize, 2560usize), (13, 8), (9, 24), (300, 264), (70, 2560)] {
        let mut w = round_bf16(&randn_vec(&mut g, n * k, 0.05));
        // Row 1 zero (scale 0, every byte 128); row 2 one large outlier.
        if n > 2 {
            w[k..2 * k].fill(0.0);
            w[2 * k + k / 2] = 3.0;
        }
        let (q, sc) = (up(&s, &vec![0u8; n * k]), poison_f32(&s, n));
        let wd = up(&s, &to_bf16(&w));
        e.k.quant_rows_i8(&s, ptr(&s, &wd), ptr(&s, &q), ptr(&s, &sc), n, k).unwrap();
        let (eq, es) = ops::quantize_rows_i8(&w, n, k);
        let (gq, gs) = (down(&s, &q), down(&s, &sc));
        println!("quant_rows_i8 N={n} K={k}: scale[0] {} (expect {})", gs[0], es[0]);
        assert_eq!(gs.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), es.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "scales");
        assert_eq!(gq, eq, "quantized bytes");
        assert!(gq.iter().all(|&b| (1..=255).contains(&b)), "a byte outside 128 +- 127");
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn gemv_i8_matches_its_f64_reference() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(42);
    let h = e.k.dims().hidden;
    // (M, N, K): one row, a ragged N inside one block, past a warp's 32 rows, two launches
    // of 8 rows (11), the hidden size with a block-and-a-bit of rows.
    for (m, n, k) in [(1usize, 1usize, 64usize), (3, 100, 320), (8, 257, 2560.min(h)), (11, 1000, 576), (5, 300, h)] {
        let w = round_bf16(&randn_vec(&mut g, n * k, 0.05));
        let (eq, es) = ops::quantize_rows_i8(&w, n, k);
        let mut x = randn_vec(&mut g, m * k, 2.0);
        x[0] = 1.0e6; // clamped to f16's 65504 by both
        let (qd, sd, xd, yd) = (up(&s, &eq), up(&s, &es), up(&s, &x), poison_f32(&s, m * n));
        e.k.gemv_i8(&s, ptr(&s, &qd), ptr(&s, &sd), ptr(&s, &xd), ptr(&s, &yd), m, n, k).unwrap();
        let got = down(&s, &yd);
        let (want, mag) = ops::gemv_i8_reference(&eq, &es, &x, m, n, k);
        // The products are exact in fp32 (an integer of 8 bits times an f16); only the
        // fp32 sums round: at most K * 2^-23 of the sum of |terms| for any order, even if
        // the tensor cores truncate rather than round (2^-24 per add when they round; the
        // H100 gave at most 8.4e-6 at K = 2560, session 14).
        check_gemv(&format!("gemv_i8 M={m} N={n} K={k}"), &got, &want, &mag, k as f64 * 2f64.powi(-23));
    }
}

/// Every output of a draft GEMV within `bound` of its sum of |terms| from the f64
/// reference (NaN fails); prints the worst relative error.
fn check_gemv(what: &str, got: &[f32], want: &[f64], mag: &[f64], bound: f64) {
    let mut worst = 0f64;
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i]).abs();
        assert!(!got[i].is_nan() && err <= bound * mag[i] + 1e-30, "{what}: y[{i}] = {} against {} (|terms| {})", got[i], want[i], mag[i]);
        worst = worst.max(err / mag[i].max(1e-30));
    }
    println!("{what}: worst error {worst:.2e} of |terms| (bound {bound:.2e})");
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn quant_rows_i4_equals_its_cpu_twin_bit_for_bit() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(44);
    // (rows, K): one row, a ragged count of rows past a block's 8, one group, an odd
    // number of groups (a warp's 256 k not filled), the hidden size.
    for (n, k) in [(1usize, 2560usize), (13, 128), (9, 384), (70, 2560)] {
        let sg = kiln::backend::cuda::kernels::Kernels::i4_scale_stride(k);
        let mut w = round_bf16(&randn_vec(&mut g, n * k, 0.05));
        // Row 1's first group zero (scale 0, every nibble 8); row 2 one large outlier.
        if n > 2 {
            w[k..k + 128].fill(0.0);
            w[2 * k + k / 2] = 3.0;
        }
        let (q, sc) = (up(&s, &vec![0u8; n * k / 2]), up(&s, &vec![0f32; n * sg]));
        let wd = up(&s, &to_bf16(&w));
        e.k.quant_rows_i4(&s, ptr(&s, &wd), ptr(&s, &q), ptr(&s, &sc), n, k).unwrap();
        let (eq, es) = ops::quantize_rows_i4(&w, n, k, sg);
        let (gq, gs) = (down(&s, &q), down(&s, &sc));
        assert_eq!(gs.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), es.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "scales N={n} K={k}");
        assert_eq!(gq, eq, "quantized nibbles N={n} K={k}");
        println!("quant_rows_i4 N={n} K={k}: bit-identical to the twin");
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn gemv_i4_matches_its_f64_reference() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(45);
    let h = e.k.dims().hidden;
    // (M, N, K): one row and one group, a ragged N inside one block, past a warp's 32 rows
    // with 5 groups (a partial group of 4 chunks), two launches of 8 rows (11), the hidden
    // size with a block-and-a-bit of rows.
    for (m, n, k) in [(1usize, 1usize, 128usize), (3, 100, 640), (8, 257, 2560.min(h)), (11, 1000, 512), (5, 300, h)] {
        let sg = kiln::backend::cuda::kernels::Kernels::i4_scale_stride(k);
        let w = round_bf16(&randn_vec(&mut g, n * k, 0.05));
        let (eq, es) = ops::quantize_rows_i4(&w, n, k, sg);
        let mut x = randn_vec(&mut g, m * k, 2.0);
        x[0] = 1.0e6; // clamped to f16's 65504 by both
        let (qd, sd, xd, yd) = (up(&s, &eq), up(&s, &es), up(&s, &x), poison_f32(&s, m * n));
        e.k.gemv_i4(&s, ptr(&s, &qd), ptr(&s, &sd), ptr(&s, &xd), ptr(&s, &yd), m, n, k).unwrap();
        let got = down(&s, &yd);
        let (want, mag) = ops::gemv_i4_reference(&eq, &es, sg, &x, m, n, k);
        // The products are exact in fp32 (a 4-bit integer times an f16); each 128-k group's
        // sum rounds (at most 128 * 2^-23 of its |terms|), its product with the scale and
        // the running sum round once more each: within (K + 2 K / 128) * 2^-23 of the sum
        // of |terms| for any order and rounding mode.
        check_gemv(&format!("gemv_i4 M={m} N={n} K={k}"), &got, &want, &mag, (k + 2 * k / 128) as f64 * 2f64.powi(-23));
    }
}

/// How often the int8 and int4 tables' argmaxes equal the bf16 table's on random rows
/// (the bf16 argmaxes computed once for both): int8 drafts must be the bf16 drafts nearly
/// always, or speculation would accept less; int4's agreement is a measurement (printed)
/// with a floor that a broken table (wrong rows, nibble order, scale, a lost sign) cannot
/// reach.
#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn int8_and_int4_drafts_agree_with_bf16_drafts() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(43);
    let (m, n, k) = (64usize, 16384usize, e.k.dims().hidden);
    let w = round_bf16(&randn_vec(&mut g, n * k, 0.02));
    // Hidden rows with a few large directions, as a trained model's are.
    let x: Vec<f32> = randn_vec(&mut g, m * k, 1.0).iter().enumerate().map(|(i, v)| if i % k < 16 { v * 20.0 } else { *v }).collect();
    let bf16_argmax: Vec<i32> = (0..m)
        .map(|i| ops::argmax(&(0..n).map(|r| (0..k).map(|j| w[r * k + j] as f64 * x[i * k + j] as f64).sum::<f64>() as f32).collect::<Vec<_>>()) as i32)
        .collect();
    let (xd, yd) = (up(&s, &x), poison_f32(&s, m * n));
    let (_keys, _counters, ws) = argmax_scratch(&s, m);
    let out = up(&s, &vec![-1i32; m]);
    // The share of rows whose draft is the bf16 table's, after `gemv` wrote the logits.
    let agreement = |gemv: &dyn Fn()| -> usize {
        gemv();
        e.k.argmax(&s, Mat::f32(ptr(&s, &yd), n), n, ptr(&s, &out), m, &ws).unwrap();
        down(&s, &out).iter().zip(&bf16_argmax).filter(|(a, b)| a == b).count()
    };
    let (eq, es) = ops::quantize_rows_i8(&w, n, k);
    let (qd, sd) = (up(&s, &eq), up(&s, &es));
    let same8 = agreement(&|| e.k.gemv_i8(&s, ptr(&s, &qd), ptr(&s, &sd), ptr(&s, &xd), ptr(&s, &yd), m, n, k).unwrap());
    let sg = kiln::backend::cuda::kernels::Kernels::i4_scale_stride(k);
    let (eq4, es4) = ops::quantize_rows_i4(&w, n, k, sg);
    let (qd4, sd4) = (up(&s, &eq4), up(&s, &es4));
    let same4 = agreement(&|| e.k.gemv_i4(&s, ptr(&s, &qd4), ptr(&s, &sd4), ptr(&s, &xd), ptr(&s, &yd), m, n, k).unwrap());
    println!("int8 drafts: {same8} of {m} rows take the bf16 table's argmax; int4: {same4}");
    // Random rows have small top-2 margins (the largest of 16384 Gaussians), far smaller
    // than a trained model's; 90 % here is a floor that a broken int8 table cannot reach.
    assert!(same8 * 10 >= m * 9, "int8 drafts agree on only {same8} of {m} rows");
    // int4's rounding (a step of amax / 7 per 128 weights) is 18x int8's: half is its floor.
    assert!(same4 * 2 >= m, "int4 drafts agree on only {same4} of {m} rows");
}
