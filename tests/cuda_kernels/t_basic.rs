//! NVRTC compilation (no GPU needed), embedding, norms, elementwise kernels, argmax.

use crate::harness::*;
use crate::reference as r;
use half::bf16;
use kiln::backend::cpu::ops;
use kiln::backend::cuda::compile::{self, KernelDims};
use kiln::backend::cuda::registry;
use cudarc::driver::{CudaSlice, CudaStream};
use kiln::backend::cuda::kernels::{ArgmaxScratch, DType, Mat, NULL};
use std::sync::Arc;
use rand::Rng;

#[test]
fn nvrtc_compiles_every_kernel_for_sm90a_and_sm100a() {
    // No GPU needed, so this always runs: without NVRTC it fails rather than passing
    // unrun (scripts/test.sh provides NVRTC from PyPI through scripts/ci_nvrtc.sh).
    assert!(compile::nvrtc_available(), "NVRTC not found: source scripts/ci_nvrtc.sh (or run scripts/test.sh)");
    let inc = compile::find_cuda_include()
        .expect("NVRTC found but no CUDA include folder with cuda_bf16.h: set KILN_CUDA_INCLUDE (scripts/ci_nvrtc.sh does)");
    println!("NVRTC {:?}, include {}", compile::nvrtc_version().unwrap(), inc.display());
    let full = KernelDims::qwen3_5_4b();
    for arch in compile::ARCHES {
        let t = std::time::Instant::now();
        let mods = compile::compile_all(arch, &full, std::slice::from_ref(&inc)).unwrap_or_else(|e| panic!("{arch}: {e:#}"));
        assert_eq!(mods.len(), compile::SOURCES.len());
        let entries = registry::entries(&full);
        for m in &mods {
            assert!(m.cubin.len() > 1000 && m.cubin.starts_with(b"\x7fELF"), "{arch} {}: not a cubin", m.name);
            // The module exports exactly the entry points the registry lists for it.
            let listed: std::collections::BTreeSet<String> =
                entries.iter().filter(|e| e.module == m.name).map(|e| e.name.to_string()).collect();
            assert_eq!(registry::exported_names(&m.cubin), listed, "{arch} {}: exports differ from registry.rs", m.name);
            // Every entry's static shared memory beside the dynamic size the registry lists
            // for it fits what the loader opts it into: 48 KB without the attribute, 227 KB
            // with it (a launch over the bound is CUDA_ERROR_INVALID_VALUE on the device).
            let statics = registry::static_shared_bytes(&m.cubin);
            for e in entries.iter().filter(|e| e.module == m.name) {
                let st = statics.get(e.name).map_or(0, |s| s.saturating_sub(registry::SMEM_RESERVED_PER_BLOCK));
                let bound = if e.smem > registry::SMEM_NO_OPT_IN { registry::SMEM_OPT_IN_MAX } else { registry::SMEM_NO_OPT_IN };
                assert!(st + e.smem <= bound, "{arch} {}: {st} static + {} dynamic bytes exceed {bound}", e.name, e.smem);
            }
            if m.name == "attn_decode" {
                // The parser reads real sections: the partial kernel's wm, wl and wacc arrays.
                let (w, g, hd) = (4, full.num_heads / full.num_kv_heads, full.head_dim);
                let want = 4 * (2 * w * g + w * g * hd) + registry::SMEM_RESERVED_PER_BLOCK;
                assert_eq!(statics.get("kiln_attn_decode_partial"), Some(&want), "{arch}: static shared memory of the partial kernel");
            }
        }
        let total: usize = mods.iter().map(|m| m.cubin.len()).sum();
        println!("{arch}: {} modules, {total} bytes of cubin, {:.1} s", mods.len(), t.elapsed().as_secs_f64());
    }
    // The tiny test model's shape compiles too (one source serves every size).
    let tiny = KernelDims {
        hidden: 64, intermediate: 128, vocab: 1024, num_heads: 4, num_kv_heads: 2, head_dim: 64, rotary_dim: 16,
        rope_theta: 1e7, lin_num_k_heads: 2, lin_num_v_heads: 4, lin_k_dim: 32, lin_v_dim: 32, conv_kernel: 4, rms_eps: 1e-6,
        gemm_f16: false,
    };
    compile::compile_all("sm_90a", &tiny, std::slice::from_ref(&inc)).unwrap_or_else(|e| panic!("tiny shape: {e:#}"));
    // A broken kernel gives an error naming the module and carrying NVRTC's log.
    let err = compile::compile_module("broken", "extern \"C\" __global__ void f() { undefined_thing(); }", "sm_90a", &full, &[inc])
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken") && err.contains("undefined_thing"), "unhelpful error: {err}");
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn embed_gathers_rows() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let (v, h) = (e.k.dims().vocab, e.k.dims().hidden);
    let mut g = rng(1);
    // A few rows of a full-size table suffice: fill only the rows we use.
    let mut table_dev = s.alloc_zeros::<bf16>(v * h).unwrap();
    for m in [1usize, 3, 17] {
        let mut ids: Vec<i32> = (0..m).map(|_| g.gen_range(0..v as i32)).collect();
        if m > 1 {
            ids[1] = -1; // out of range: zero row
            ids[0] = v as i32 - 1;
        }
        // One random row per distinct id (ids may repeat).
        let mut rows = std::collections::HashMap::new();
        for id in ids.iter().filter(|id| **id >= 0) {
            rows.entry(*id).or_insert_with(|| round_bf16(&rand_vec(&mut g, h, 1.0)));
        }
        for (id, row) in &rows {
            let mut dst = table_dev.slice_mut(*id as usize * h..(*id as usize + 1) * h);
            s.memcpy_htod(&to_bf16(row), &mut dst).unwrap();
        }
        let mut expect = vec![0f32; m * h];
        for (i, id) in ids.iter().enumerate() {
            if let Some(row) = rows.get(id) {
                expect[i * h..(i + 1) * h].copy_from_slice(row);
            }
        }
        let ids_d = up(&s, &ids);
        let out = poison_f32(&s, m * h);
        e.k.embed(&s, ptr(&s, &table_dev), ptr(&s, &ids_d), ptr(&s, &out), m).unwrap();
        // Exact: a gather.
        check(&format!("embed M={m}"), &down(&s, &out), &expect, 0.0);
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn add_rmsnorm_matches_cpu() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let h = e.k.dims().hidden;
    let eps = e.k.dims().rms_eps as f32;
    let mut g = rng(2);
    for (m, delta) in [(1usize, Some(DType::F32)), (3, Some(DType::BF16)), (17, None), (64, Some(DType::F32))] {
        let res = randn_vec(&mut g, m * h, 1.0);
        let w = round_bf16(&rand_vec(&mut g, h, 0.5));
        let ld = h + 8; // a strided delta
        let d = randn_vec(&mut g, m * ld, 1.0);
        let d_used = match delta {
            Some(DType::BF16) => round_bf16(&d),
            _ => d.clone(),
        };
        let mut new_res = res.clone();
        if delta.is_some() {
            for i in 0..m {
                for j in 0..h {
                    new_res[i * h + j] += d_used[i * ld + j];
                }
            }
        }
        let expect = ops::rms_norm(&new_res, &w, eps, 1.0);
        let res_d = up(&s, &res);
        let w_d = up(&s, &to_bf16(&w));
        let d_f = up(&s, &d);
        let d_b = up(&s, &to_bf16(&d));
        let dm = match delta {
            Some(DType::F32) => Some(Mat::f32(ptr(&s, &d_f), ld)),
            Some(DType::BF16) => Some(Mat::bf16(ptr(&s, &d_b), ld)),
            None => None,
        };
        let (ob, of) = (poison_bf16(&s, m * h), poison_f32(&s, m * h));
        e.k.add_rmsnorm(&s, ptr(&s, &res_d), dm.map(Into::into), ptr(&s, &w_d), ptr(&s, &ob), ptr(&s, &of), m).unwrap();
        // Residual: one fp32 add, identical rounding.
        check(&format!("add_rmsnorm M={m} {delta:?} residual"), &down(&s, &res_d), &new_res, 1e-7);
        // fp32 norm: sum-of-squares order differs (2560 terms): 1e-5.
        check(&format!("add_rmsnorm M={m} {delta:?} out f32"), &down(&s, &of), &expect, 1e-5);
        check(&format!("add_rmsnorm M={m} {delta:?} out bf16"), &from_bf16(&down(&s, &ob)), &expect, 1e-2);
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn gated_rmsnorm_matches_cpu() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let d = e.k.dims().clone();
    let width = d.lin_num_v_heads * d.lin_v_dim;
    let mut g = rng(3);
    for (t, zt, ot) in [(1usize, DType::F32, DType::F32), (5, DType::BF16, DType::BF16), (130, DType::F32, DType::BF16)] {
        let o = randn_vec(&mut g, t * width, 1.0);
        let ldz = width + 64;
        let z = randn_vec(&mut g, t * ldz, 2.0);
        let z_used = if zt == DType::BF16 { round_bf16(&z) } else { z.clone() };
        let w = round_bf16(&rand_vec(&mut g, d.lin_v_dim, 1.0));
        let expect = r::gated_rmsnorm(&o, &z_used, ldz, &w, d.rms_eps as f32);
        let o_d = up(&s, &o);
        let (z_f, z_b) = (up(&s, &z), up(&s, &to_bf16(&z)));
        let zm = if zt == DType::F32 { Mat::f32(ptr(&s, &z_f), ldz) } else { Mat::bf16(ptr(&s, &z_b), ldz) };
        let w_d = up(&s, &to_bf16(&w));
        let (of, ob) = (poison_f32(&s, t * width), poison_bf16(&s, t * width));
        let op = if ot == DType::F32 { ptr(&s, &of) } else { ptr(&s, &ob) };
        e.k.gated_rmsnorm(&s, ptr(&s, &o_d), zm, ptr(&s, &w_d), op, ot, t).unwrap();
        let out = if ot == DType::F32 { down(&s, &of) } else { from_bf16(&down(&s, &ob)) };
        // fp32 with exp in silu: 1e-5; bf16 out: 1e-2.
        check(&format!("gated_rmsnorm T={t} z {zt:?} out {ot:?}"), &out, &expect, if ot == DType::F32 { 1e-5 } else { 1e-2 });
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn output_gate_and_silu_mul_match_cpu() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let d = e.k.dims().clone();
    let (nh, hd) = (d.num_heads, d.head_dim);
    let mut g = rng(4);
    // The last case's odd gate stride takes the kernel's element-by-element path.
    for (t, gt, ot, pad) in [(1usize, DType::F32, DType::F32, 2048), (7, DType::BF16, DType::BF16, 2048), (33, DType::F32, DType::BF16, 2048), (5, DType::F32, DType::F32, 2051)] {
        let attn = randn_vec(&mut g, t * nh * hd, 1.0);
        let ldg = 2 * nh * hd + pad; // the fused q+gate rows of the attention projection
        let qg = randn_vec(&mut g, t * ldg, 2.0);
        let qg_used = if gt == DType::BF16 { round_bf16(&qg) } else { qg.clone() };
        let mut expect = vec![0f32; t * nh * hd];
        for i in 0..t {
            for h in 0..nh {
                for j in 0..hd {
                    expect[(i * nh + h) * hd + j] = attn[(i * nh + h) * hd + j] * ops::sigmoid(qg_used[i * ldg + h * 2 * hd + hd + j]);
                }
            }
        }
        let a_d = up(&s, &attn);
        let (qf, qb) = (up(&s, &qg), up(&s, &to_bf16(&qg)));
        let gm = if gt == DType::F32 { Mat::f32(ptr(&s, &qf), ldg) } else { Mat::bf16(ptr(&s, &qb), ldg) };
        let (of, ob) = (poison_f32(&s, t * nh * hd), poison_bf16(&s, t * nh * hd));
        let om = if ot == DType::F32 { Mat::f32(ptr(&s, &of), nh * hd) } else { Mat::bf16(ptr(&s, &ob), nh * hd) };
        e.k.output_gate(&s, ptr(&s, &a_d), gm.cols(hd), 2 * hd, om, t).unwrap();
        let out = if ot == DType::F32 { down(&s, &of) } else { from_bf16(&down(&s, &ob)) };
        check(&format!("output_gate T={t} {gt:?}->{ot:?}"), &out, &expect, if ot == DType::F32 { 1e-6 } else { 1e-2 });
    }
    let inter = d.intermediate;
    for (m, it, ot) in [(1usize, DType::F32, DType::F32), (3, DType::BF16, DType::F32), (64, DType::F32, DType::BF16)] {
        let gu = randn_vec(&mut g, m * 2 * inter, 2.0);
        let gu_used = if it == DType::BF16 { round_bf16(&gu) } else { gu.clone() };
        let mut expect = Vec::with_capacity(m * inter);
        for i in 0..m {
            let row = &gu_used[i * 2 * inter..(i + 1) * 2 * inter];
            expect.extend(ops::silu_mul(&row[..inter], &row[inter..]));
        }
        let (gf, gb) = (up(&s, &gu), up(&s, &to_bf16(&gu)));
        let gm = if it == DType::F32 { Mat::f32(ptr(&s, &gf), 2 * inter) } else { Mat::bf16(ptr(&s, &gb), 2 * inter) };
        let (of, ob) = (poison_f32(&s, m * inter), poison_bf16(&s, m * inter));
        let om = if ot == DType::F32 { Mat::f32(ptr(&s, &of), inter) } else { Mat::bf16(ptr(&s, &ob), inter) };
        e.k.silu_mul(&s, gm, inter, om, inter, m).unwrap();
        let out = if ot == DType::F32 { down(&s, &of) } else { from_bf16(&down(&s, &ob)) };
        check(&format!("silu_mul M={m} {it:?}->{ot:?}"), &out, &expect, if ot == DType::F32 { 1e-6 } else { 1e-2 });
    }
    // A width and strides that are not multiples of 4 take the element-by-element path.
    let (m, n, ld_in, up_off, ld_out) = (3usize, 1001usize, 2 * 1001 + 5, 1003usize, 1001usize);
    let gu = randn_vec(&mut g, m * ld_in, 2.0);
    let (gf, of) = (up(&s, &gu), poison_f32(&s, m * ld_out));
    e.k.silu_mul(&s, Mat::f32(ptr(&s, &gf), ld_in), up_off, Mat::f32(ptr(&s, &of), ld_out), n, m).unwrap();
    let mut expect = Vec::with_capacity(m * n);
    for i in 0..m {
        let row = &gu[i * ld_in..(i + 1) * ld_in];
        expect.extend(ops::silu_mul(&row[..n], &row[up_off..up_off + n]));
    }
    // Exact f32 arithmetic in both; 1e-6 covers expf's ulps.
    check("silu_mul unaligned", &down(&s, &of), &expect, 1e-6);
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn argmax_takes_first_max_and_skips_nan() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let v = e.k.dims().vocab;
    let mut g = rng(5);
    let (keys, counters, ws) = argmax_scratch(&s, 8);
    // (rows, n, dtype): the whole vocabulary (many slices), a ragged n, one partial slice,
    // exactly one slice plus one, a single column.
    for (m, n, dt) in [(1usize, v, DType::F32), (5, v - 243, DType::BF16), (3, 1000, DType::F32), (4, 2049, DType::F32), (2, 1, DType::F32)] {
        let ld = v;
        let mut x = randn_vec(&mut g, m * ld, 3.0);
        if dt == DType::BF16 {
            x = round_bf16(&x);
        }
        // Row 0: a tie between two maxima in different slices (first wins); row 1: NaNs
        // and a max past n (ignored); row 2: all NaN (gives 0); row 3: the maximum is a
        // zero, -0 before +0 (they tie, so the first wins).
        let big = 1000.0;
        x[7 % n] = big;
        x[n - 1] = big;
        if m > 1 && n > 2 {
            x[ld + 3] = f32::NAN;
            x[ld + n / 2] = f32::NAN;
            x[ld + n] = 2.0 * big;
            x[ld + n - 2] = big;
        }
        if m > 2 {
            x[2 * ld..2 * ld + n].fill(f32::NAN);
        }
        if m > 3 {
            for (i, xv) in x[3 * ld..3 * ld + n].iter_mut().enumerate() {
                *xv = if i == 5 { -0.0 } else if i == n - 3 { 0.0 } else { -1.0 - xv.abs() };
            }
        }
        let expect: Vec<i32> = (0..m).map(|i| ops::argmax(&x[i * ld..i * ld + n]) as i32).collect();
        let (xf, xb) = (up(&s, &x), up(&s, &to_bf16(&x)));
        let lm = if dt == DType::F32 { Mat::f32(ptr(&s, &xf), ld) } else { Mat::bf16(ptr(&s, &xb), ld) };
        // Twice: the scratch must come back zero for the next launch.
        for round in 0..2 {
            let out = up(&s, &vec![-7i32; m]);
            e.k.argmax(&s, lm, n, ptr(&s, &out), m, &ws).unwrap();
            let got = down(&s, &out);
            println!("argmax M={m} n={n} {dt:?} round {round}: {got:?} (expect {expect:?})");
            assert_eq!(got, expect);
            assert_eq!(got[0], if n > 7 { 7 } else { 0 });
            if m > 2 {
                assert_eq!(got[2], 0, "an all-NaN row gives 0");
            }
            if m > 3 {
                assert_eq!(got[3], 5, "-0 ties +0 and comes first");
            }
            assert!(down(&s, &keys).iter().all(|k| *k == 0) && down(&s, &counters).iter().all(|c| *c == 0), "scratch left non-zero");
        }
    }
    let _ = NULL;
}

/// Zeroed argmax scratch for `rows` rows (the buffers, then the kernels' view of them).
pub fn argmax_scratch(s: &Arc<CudaStream>, rows: usize) -> (CudaSlice<u64>, CudaSlice<u32>, ArgmaxScratch) {
    let (keys, counters) = (up(s, &vec![0u64; rows]), up(s, &vec![0u32; rows]));
    let ws = ArgmaxScratch { keys: ptr(s, &keys), counters: ptr(s, &counters), rows };
    (keys, counters, ws)
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn masked_argmax_matches_its_cpu_twin() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let (_keys, _counters, ws) = argmax_scratch(&s, 8);
    let v = e.k.dims().vocab;
    let mut g = rng(6);
    // (rows, n, words): full vocabulary, n not a multiple of 32, a mask longer than n
    // needs, a single word, a single column.
    for (m, n, words) in [(6usize, v, v.div_ceil(32)), (7, v - 243, (v - 243).div_ceil(32)), (5, 1000, 40), (4, 33, 2), (3, 1, 1)] {
        let ld = v;
        let mut x = randn_vec(&mut g, m * ld, 3.0);
        // Ties (ids 7 and n-1) and NaNs; a huge value past n must not count.
        for r in 0..m {
            x[r * ld + 7 % n] = 50.0;
            x[r * ld + n - 1] = 50.0;
            x[r * ld + n / 2] = f32::NAN;
            if n < ld {
                x[r * ld + n] = 1e9;
            }
        }
        // Masks: dense random, one id, nothing allowed, everything, only NaN/the tie.
        let mut masks: Vec<u32> = Vec::new();
        let mut push = |f: &dyn Fn(usize) -> bool| masks.extend((0..words).map(|w| (0..32).filter(|b| f(w * 32 + b)).fold(0u32, |a, b| a | 1 << b)));
        let dense: Vec<u32> = (0..words).map(|_| g.gen()).collect();
        let one = g.gen_range(0..n);
        push(&|i| dense[i / 32] >> (i % 32) & 1 == 1);
        push(&|i| i == one);
        push(&|_| false);
        push(&|_| true);
        push(&|i| i == n / 2 || i == n - 1);
        let k = masks.len() / words;
        // Row r uses mask r % (k + 1), the last choice being none (-1: keeps its out).
        let mask_rows: Vec<i32> = (0..m).map(|r| if r % (k + 1) == k { -1 } else { (r % (k + 1)) as i32 }).collect();
        let expect: Vec<i32> = (0..m)
            .map(|r| match mask_rows[r] {
                -1 => -7,
                i => ops::argmax_masked(&x[r * ld..(r + 1) * ld], n, &masks[i as usize * words..(i as usize + 1) * words]) as i32,
            })
            .collect();
        let (xd, md, rd) = (up(&s, &x), up(&s, &masks), up(&s, &mask_rows));
        let out = up(&s, &vec![-7i32; m]);
        e.k.argmax_masked(&s, Mat::f32(ptr(&s, &xd), ld), n, ptr(&s, &rd), ptr(&s, &md), words, ptr(&s, &out), m, &ws).unwrap();
        let got = down(&s, &out);
        println!("masked argmax M={m} n={n} words={words}: {got:?} (expect {expect:?})");
        assert_eq!(got, expect);
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn f32_to_bf16_rounds_to_nearest_even() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(9);
    // Lengths with and without a partial vector of 4 at the end.
    for n in [1usize, 3, 4, 1023, 4096 + 6] {
        let x = randn_vec(&mut g, n, 5.0);
        let out = poison_bf16(&s, n);
        e.k.f32_to_bf16(&s, ptr(&s, &up(&s, &x)), ptr(&s, &out), n).unwrap();
        // The CPU twin is half's round-to-nearest-even conversion: results must be identical.
        let got = down(&s, &out);
        let want = to_bf16(&x);
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "n = {n}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn gather_rows_copies_the_named_rows_exactly() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(10);
    // Widths that are and are not multiples of the block; rows repeated and out of order.
    for (width, rows) in [(2560usize, vec![3i32, 0, 7, 7, 1]), (37, vec![5, 2]), (1, vec![0])] {
        let src = randn_vec(&mut g, 8 * width, 1.0);
        let want: Vec<f32> = rows.iter().flat_map(|r| src[*r as usize * width..(*r as usize + 1) * width].to_vec()).collect();
        let (src_d, rows_d, out) = (up(&s, &src), up(&s, &rows), poison_f32(&s, rows.len() * width));
        e.k.gather_rows(&s, ptr(&s, &src_d), DType::F32, ptr(&s, &rows_d), ptr(&s, &out), width, rows.len()).unwrap();
        // A copy: bit-identical, and every element written (outputs start as NaN).
        assert_eq!(down(&s, &out), want, "width {width}, rows {rows:?}");
        let srcb = to_bf16(&src);
        let outb = poison_bf16(&s, rows.len() * width);
        e.k.gather_rows(&s, ptr(&s, &up(&s, &srcb)), DType::BF16, ptr(&s, &rows_d), ptr(&s, &outb), width, rows.len()).unwrap();
        let got: Vec<u16> = down(&s, &outb).iter().map(|x| x.to_bits()).collect();
        let wantb: Vec<u16> = rows.iter().flat_map(|r| srcb[*r as usize * width..(*r as usize + 1) * width].iter().map(|x| x.to_bits())).collect();
        assert_eq!(got, wantb, "bf16 width {width}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn copy_segments_matches_its_cpu_twin() {
    use kiln::backend::verify_step::{apply_segments, segment_words, Segment};
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(7);
    // One buffer of random words; segments of awkward sizes (16 bytes to 2 MB, not
    // multiples of a block's stride) copied between disjoint places of it.
    let words = 3 << 20;
    let host: Vec<u32> = (0..words).map(|_| g.gen()).collect();
    let dev = up(&s, &host);
    let base = ptr(&s, &dev);
    let sizes = [16usize, 48, 4096 + 16, 2 << 20, 32 * 1024, 1 << 20];
    let mut segs = Vec::new();
    let (mut src, mut dst) = (0usize, 6 << 20); // bytes: sources in the first half, destinations after
    for &n in &sizes {
        segs.push(Segment { src: src as u64, dst: dst as u64, bytes: n as u64 });
        src += n + 32;
        dst += n + 64;
    }
    let mut want: Vec<u8> = host.iter().flat_map(|w| w.to_le_bytes()).collect();
    apply_segments(&mut want, &segs);
    let on_dev: Vec<Segment> = segs.iter().map(|x| Segment { src: x.src + base, dst: x.dst + base, ..*x }).collect();
    let seg_dev = up(&s, &segment_words(&on_dev));
    e.k.copy_segments(&s, ptr(&s, &seg_dev), on_dev.len(), 2 << 20).unwrap();
    let got: Vec<u8> = down(&s, &dev).iter().flat_map(|w| w.to_le_bytes()).collect();
    assert!(got == want, "kiln_copy_segments differs from apply_segments");
    // Zero segments launch nothing.
    e.k.copy_segments(&s, ptr(&s, &seg_dev), 0, 0).unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn mtp_fc_input_matches_cpu() {
    // The CPU twin is cpu/speculative.rs's mtp_forward input: rms_norm(embed) and
    // rms_norm(hidden) side by side.
    let Some(e) = env() else { return };
    let s = stream(e);
    let (v, h) = (e.k.dims().vocab, e.k.dims().hidden);
    let eps = e.k.dims().rms_eps as f32;
    let mut g = rng(9);
    let m = 7;
    // ids: in range, one out of range (a zero embedding half).
    let mut ids: Vec<i32> = (0..m).map(|_| g.gen_range(0..v as i32)).collect();
    ids[3] = -1;
    let mut table = vec![0f32; v * h];
    for &id in ids.iter().filter(|&&i| i >= 0) {
        let row = round_bf16(&randn_vec(&mut g, h, 1.0));
        table[id as usize * h..(id as usize + 1) * h].copy_from_slice(&row);
    }
    let (hid, pending) = (randn_vec(&mut g, 4 * h, 1.0), randn_vec(&mut g, 3 * h, 2.0));
    // Rows 0, 2, 5 read pending slots 2, 0, 1; the others hid rows.
    let hid_rows: Vec<i32> = vec![-3, 1, -1, 0, 3, -2, 2];
    let (we, wh) = (round_bf16(&rand_vec(&mut g, h, 0.5)), round_bf16(&rand_vec(&mut g, h, 0.5)));
    let mut expect = Vec::with_capacity(m * 2 * h);
    for r in 0..m {
        let emb = if ids[r] >= 0 { table[ids[r] as usize * h..(ids[r] as usize + 1) * h].to_vec() } else { vec![0f32; h] };
        let hr = hid_rows[r];
        let hrow = if hr >= 0 { &hid[hr as usize * h..(hr as usize + 1) * h] } else { &pending[(-1 - hr) as usize * h..(-hr) as usize * h] };
        expect.extend(ops::rms_norm(&emb, &we, eps, 1.0));
        expect.extend(ops::rms_norm(hrow, &wh, eps, 1.0));
    }
    let (table_d, ids_d, hid_d, pend_d, rows_d) = (up(&s, &to_bf16(&table)), up(&s, &ids), up(&s, &hid), up(&s, &pending), up(&s, &hid_rows));
    let (we_d, wh_d) = (up(&s, &to_bf16(&we)), up(&s, &to_bf16(&wh)));
    let (of, ob) = (poison_f32(&s, m * 2 * h), poison_bf16(&s, m * 2 * h));
    let p = |x: &cudarc::driver::CudaSlice<f32>| ptr(&s, x);
    for (out, dt) in [(p(&of), DType::F32), (ptr(&s, &ob), DType::BF16)] {
        e.k.mtp_fc_input(&s, ptr(&s, &table_d), ptr(&s, &ids_d), p(&hid_d), p(&pend_d), ptr(&s, &rows_d), ptr(&s, &we_d), ptr(&s, &wh_d), out, dt, m).unwrap();
    }
    // fp32: the sum-of-squares order differs (2560 terms): 1e-5; bf16 output rounding: 1e-2.
    check("mtp_fc_input f32", &down(&s, &of), &expect, 1e-5);
    check("mtp_fc_input bf16", &from_bf16(&down(&s, &ob)), &expect, 1e-2);
}
