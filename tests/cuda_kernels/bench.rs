//! Kernel timings on the device (run only with KILN_CUDA_BENCH=1): CUDA events around
//! repeated launches after warm-up, median of several repeats; weights rotated among
//! copies so that each launch streams from HBM, not L2.

use crate::harness::*;
use cudarc::driver::{sys, CudaSlice, CudaStream};
use half::bf16;
use kiln::backend::cuda::compile;
use kiln::backend::cuda::kernels::{AttnDecode, AttnPrefill, Conv1d, DType, GdnDecode, GdnPrefill, GemmKind, GemmPlan, GemmScratch, Kernels, Mat};
use std::sync::Arc;

/// Median milliseconds of one call of `f` (each repeat times `iters` calls).
fn time_ms(s: &Arc<CudaStream>, iters: usize, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..3 {
        f(i);
    }
    s.synchronize().unwrap();
    let mut t = Vec::new();
    for _ in 0..7 {
        let a = s.record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
        for i in 0..iters {
            f(i);
        }
        let b = s.record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
        b.synchronize().unwrap();
        t.push(a.elapsed_ms(&b).unwrap() as f64 / iters as f64);
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

fn gbps(bytes: f64, ms: f64) -> f64 {
    bytes / (ms * 1e-3) / 1e9
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn bench_kernels() {
    if std::env::var("KILN_CUDA_BENCH").ok().as_deref() != Some("1") {
        println!("skipped: set KILN_CUDA_BENCH=1 to time the kernels");
        return;
    }
    let Some(e) = env() else { return };
    let s = stream(e);
    let k = &e.k;
    let mut g = rng(99);

    // Copy bandwidth (bytes read + written).
    let n = 1usize << 29; // 1 GiB of u16
    let src = s.alloc_zeros::<u16>(n).unwrap();
    let mut dst = s.alloc_zeros::<u16>(n).unwrap();
    let ms = time_ms(&s, 5, |_| s.memcpy_dtod(&src, &mut dst).unwrap());
    println!("BENCH copy d2d 1 GiB: {ms:.3} ms, {:.0} GB/s (read + write)", gbps(2.0 * 2.0 * n as f64, ms));
    drop((src, dst));

    // Skinny GEMM: weight GB/s (x, y, and split-K partials not counted).
    let shapes = [("gate_up", 18432usize, 2560usize), ("down", 2560, 9216), ("qkvz", 12288, 2560), ("lm_head", 248320, 2560)];
    for (name, n, kk) in shapes {
        let wbytes = n * kk * 2;
        let copies = (400_000_000usize).div_ceil(wbytes).clamp(1, 8);
        // Random-ish weights (a random row repeated) rather than zeros.
        let row = to_bf16(&randn_vec(&mut g, kk, 0.05));
        let mut big: Vec<bf16> = Vec::with_capacity(n * kk);
        for _ in 0..n {
            big.extend_from_slice(&row);
        }
        let ws: Vec<CudaSlice<bf16>> = (0..copies).map(|_| up(&s, &big)).collect();
        drop(big);
        let wps: Vec<u64> = ws.iter().map(|w| ptr(&s, w)).collect();
        let mut plans = vec![("default", k.gemm_plan(n, kk))];
        if name == "down" || name == "gate_up" {
            for wps_ in [8usize, 16, 48] {
                plans.push((["w8", "w16", "w48"][[8, 16, 48].iter().position(|x| *x == wps_).unwrap()], Kernels::gemm_plan_for(k.num_sms() as usize, wps_, n, kk)));
            }
        }
        let max_splits = plans.iter().map(|p| p.1.splits).max().unwrap();
        let wsb = s.alloc_zeros::<f32>((256 * n * max_splits).max(1)).unwrap();
        let cnt = s.alloc_zeros::<u32>(Kernels::gemm_counters_len(n)).unwrap();
        let scratch = GemmScratch { ws: ptr(&s, &wsb), ws_floats: wsb.len(), counters: ptr(&s, &cnt), counters_len: cnt.len() };
        let x = up(&s, &randn_vec(&mut g, 256 * kk, 1.0));
        let xb = up(&s, &to_bf16(&randn_vec(&mut g, 256 * kk, 1.0)));
        let y = s.alloc_zeros::<f32>(256 * n).unwrap();
        for (pname, plan) in &plans {
            let configs: &[(usize, DType, GemmKind)] = if *pname == "default" {
                &[
                    (1, DType::F32, GemmKind::Auto),
                    (1, DType::F32, GemmKind::Register),
                    (4, DType::F32, GemmKind::Register),
                    (8, DType::F32, GemmKind::Auto),
                    (16, DType::F32, GemmKind::Auto),
                    (32, DType::F32, GemmKind::SharedX),
                    (32, DType::F32, GemmKind::Tiled),
                    (64, DType::F32, GemmKind::SharedX),
                    (64, DType::F32, GemmKind::Tiled),
                    (64, DType::F32, GemmKind::TiledWide),
                    (128, DType::F32, GemmKind::Tiled),
                    (128, DType::F32, GemmKind::TiledWide),
                    (256, DType::F32, GemmKind::Tiled),
                    (256, DType::F32, GemmKind::TiledWide),
                    (128, DType::F32, GemmKind::TiledWidePaired),
                    (256, DType::F32, GemmKind::TiledWidePaired),
                    (1, DType::BF16, GemmKind::Auto),
                    (64, DType::BF16, GemmKind::SharedX),
                    (64, DType::BF16, GemmKind::Tiled),
                    (256, DType::BF16, GemmKind::Tiled),
                ]
            } else {
                &[(1, DType::F32, GemmKind::Auto), (8, DType::F32, GemmKind::Auto), (64, DType::F32, GemmKind::Tiled)]
            };
            for &(m, xt, kind) in configs {
                let xp = if xt == DType::F32 { ptr(&s, &x) } else { ptr(&s, &xb) };
                let yp = ptr(&s, &y);
                let ms = time_ms(&s, 20, |i| {
                    k.gemm_ex(&s, wps[i % copies], xp, xt, yp, DType::F32, m, n, kk, &scratch, *plan, kind).unwrap()
                });
                println!(
                    "BENCH gemm {name:8} N={n:6} K={kk:5} M={m:3} x {xt:?} {kind:?} plan {pname:7} (splits {:2}): {:8.1} us, {:6.0} GB/s",
                    plan.splits,
                    ms * 1e3,
                    gbps(wbytes as f64, ms)
                );
            }
        }
    }
    bench_pdl_chain(e, &s, &mut g);
    bench_gdn(e, &s, &mut g);
    bench_attention(e, &s, &mut g);
}

/// The decode GEMM on every decode shape of the model at M = 1, 8, 32, 64 (x f32): the
/// register kernel at M <= 8 and the shared-x (M <= 16) or tiled (M > 16) kernel under
/// several K splits, against the 16-warp plan. KILN_CUDA_BENCH=1 cargo test --test cuda_kernels gemm_sweep.
#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn bench_gemm_sweep() {
    if std::env::var("KILN_CUDA_BENCH").ok().as_deref() != Some("1") {
        println!("skipped: set KILN_CUDA_BENCH=1 to time the kernels");
        return;
    }
    let Some(e) = env() else { return };
    let s = stream(e);
    let k = &e.k;
    let sms = k.num_sms() as usize;
    let mut g = rng(98);
    let shapes = [
        ("qkvz", 12288usize, 2560usize),
        ("ba", 64, 2560),
        ("out", 2560, 4096),
        ("qgkv", 10240, 2560),
        ("gate_up", 18432, 2560),
        ("down", 2560, 9216),
        ("lm_head", 248320, 2560),
    ];
    for (name, n, kk) in shapes {
        let wbytes = n * kk * 2;
        let copies = (400_000_000usize).div_ceil(wbytes).clamp(1, 8);
        let row = to_bf16(&randn_vec(&mut g, kk, 0.05));
        let mut big: Vec<bf16> = Vec::with_capacity(n * kk);
        for _ in 0..n {
            big.extend_from_slice(&row);
        }
        let ws: Vec<CudaSlice<bf16>> = (0..copies).map(|_| up(&s, &big)).collect();
        drop(big);
        let wps: Vec<u64> = ws.iter().map(|w| ptr(&s, w)).collect();
        let old = Kernels::gemm_plan_for(sms, 16, n, kk);
        // Candidate splits: 1 .. K/256 (ks a multiple of 32), at most 8 spread over the
        // range where ceil(N/256) * splits stays within [0.5, 6] blocks per SM.
        let rb = n.div_ceil(256);
        let mut cands: Vec<GemmPlan> = Vec::new();
        for sp in 1..=(kk / 256).max(1) {
            let ks = kk.div_ceil(sp).div_ceil(32) * 32;
            let p = GemmPlan { splits: kk.div_ceil(ks), ks };
            let units = rb * p.splits;
            if (units * 2 >= sms || p.splits == 1) && units <= 6 * sms && !cands.contains(&p) {
                cands.push(p);
            }
        }
        while cands.len() > 8 {
            let i = cands.len() / 2;
            cands.remove(i);
        }
        if !cands.contains(&old) {
            cands.push(old);
        }
        if !cands.contains(&k.gemm_plan(n, kk)) {
            cands.push(k.gemm_plan(n, kk));
        }
        let max_splits = cands.iter().map(|p| p.splits).max().unwrap();
        let wsb = s.alloc_zeros::<f32>(64 * n * max_splits).unwrap();
        let cnt = s.alloc_zeros::<u32>(Kernels::gemm_counters_len(n)).unwrap();
        let scratch = GemmScratch { ws: ptr(&s, &wsb), ws_floats: wsb.len(), counters: ptr(&s, &cnt), counters_len: cnt.len() };
        let x = up(&s, &randn_vec(&mut g, 64 * kk, 1.0));
        let xb = up(&s, &to_bf16(&randn_vec(&mut g, 64 * kk, 1.0)));
        let y = s.alloc_zeros::<f32>(64 * n).unwrap();
        let iters = if wbytes > 500_000_000 { 4 } else { 20 };
        let one = |m: usize, xt: DType, kind: GemmKind, plan: GemmPlan, tag: &str| {
            let xp = if xt == DType::F32 { ptr(&s, &x) } else { ptr(&s, &xb) };
            let yp = ptr(&s, &y);
            let ms = time_ms(&s, iters, |i| k.gemm_ex(&s, wps[i % copies], xp, xt, yp, DType::F32, m, n, kk, &scratch, plan, kind).unwrap());
            println!(
                "SWEEP {name:8} N={n:6} K={kk:5} M={m:2} x {xt:?} {tag:4} {kind:?} splits {:2} ks {:5}: {:8.1} us, {:6.0} GB/s",
                plan.splits,
                plan.ks,
                ms * 1e3,
                gbps(wbytes as f64, ms)
            );
        };
        for m in [1usize, 8, 32, 64] {
            let base = GemmKind::Register;
            one(m, DType::F32, base, old, "old");
            // The register kernel (M <= 16) under every candidate split: the plan may not
            // depend on M, so the batch-1 optimum per shape is what a plan table would take.
            if m <= 8 {
                for &p in &cands {
                    one(m, DType::F32, base, p, if p == k.gemm_plan(n, kk) { "dflt" } else { "cand" });
                }
            }
            let kind = if m > 16 { GemmKind::Tiled } else { GemmKind::SharedX };
            for &p in &cands {
                one(m, DType::F32, kind, p, if p == k.gemm_plan(n, kk) { "dflt" } else { "cand" });
            }
        }
        for m in [1usize, 32, 64] {
            let base = GemmKind::Register;
            one(m, DType::BF16, base, old, "old");
            one(m, DType::BF16, GemmKind::SharedX, k.gemm_plan(n, kk), "dflt");
        }
    }
}

/// A decode-like chain: per "layer" the MLP projections (gate+up N=18432 K=2560, down
/// N=2560 K=9216) and a qkvz-sized projection, 8 layers with their own weights, back to
/// back; effective weight GB/s with ordinary launches and with PDL.
fn bench_pdl_chain(e: &Env, s: &Arc<CudaStream>, g: &mut rand_chacha::ChaCha8Rng) {
    let k = &e.k;
    let layers = 8;
    let shapes = [(18432usize, 2560usize), (2560, 9216), (12288, 2560)];
    let mut ws = Vec::new();
    for _ in 0..layers {
        for &(n, kk) in &shapes {
            ws.push((up(s, &to_bf16(&randn_vec(g, n * kk, 0.05))), n, kk));
        }
    }
    let bytes: usize = ws.iter().map(|(_, n, kk)| n * kk * 2).sum();
    let x = up(s, &randn_vec(g, 64 * 9216, 1.0));
    let y = s.alloc_zeros::<f32>(64 * 18432).unwrap();
    let max_ws = shapes.iter().map(|&(n, kk)| 64 * n * k.gemm_plan(n, kk).splits).max().unwrap();
    let wsb = s.alloc_zeros::<f32>(max_ws).unwrap();
    let cnt = s.alloc_zeros::<u32>(Kernels::gemm_counters_len(18432)).unwrap();
    let scratch = GemmScratch { ws: ptr(s, &wsb), ws_floats: wsb.len(), counters: ptr(s, &cnt), counters_len: cnt.len() };
    for m in [1usize, 8, 32] {
        for pdl in [false, true] {
            k.set_pdl(pdl);
            let ms = time_ms(s, 3, |_| {
                for (w, n, kk) in &ws {
                    k.gemm(s, ptr(s, w), ptr(s, &x), DType::F32, ptr(s, &y), DType::F32, m, *n, *kk, &scratch).unwrap();
                }
            });
            println!(
                "BENCH chain of {} GEMMs ({:.2} GB of weights) M={m:2} x F32 pdl={pdl}: {:8.1} us, {:6.0} GB/s",
                ws.len(),
                bytes as f64 / 1e9,
                ms * 1e3,
                gbps(bytes as f64, ms)
            );
        }
    }
    k.set_pdl(false);
}

fn bench_gdn(e: &Env, s: &Arc<CudaStream>, g: &mut rand_chacha::ChaCha8Rng) {
    let k = &e.k;
    let d = k.dims().clone();
    let (c, nv, dk, dv) = (d.conv_dim(), d.lin_num_v_heads, d.lin_k_dim, d.lin_v_dim);
    let ssz = nv * dk * dv;
    let ld = c + nv * dv;
    for b in [1usize, 8, 32, 64, 128] {
        let rotate = 4;
        let state = up(s, &randn_vec(g, rotate * b * ssz, 0.1));
        let ring = up(s, &randn_vec(g, rotate * b * 4 * c, 1.0));
        let x = up(s, &randn_vec(g, b * ld, 1.0));
        let ba = up(s, &randn_vec(g, b * 2 * nv, 1.0));
        let cw = up(s, &to_bf16(&randn_vec(g, c * 4, 0.5)));
        let al = up(s, &vec![0.5f32; nv]);
        let dtb = up(s, &vec![0.0f32; nv]);
        let nw = up(s, &to_bf16(&vec![1.0f32; dv]));
        let pos = up(s, &vec![10i32; b]);
        let slot_sets: Vec<CudaSlice<i32>> = (0..rotate).map(|r| up(s, &(0..b as i32).map(|i| (r * b) as i32 + i).collect::<Vec<_>>())).collect();
        let out = s.alloc_zeros::<f32>(b * nv * dv).unwrap();
        let xm = Mat::f32(ptr(s, &x), ld);
        let bm = Mat::f32(ptr(s, &ba), 2 * nv);
        let mut args = GdnDecode {
            qkv: xm, z: xm.cols(c), b: bm, a: bm.cols(nv), conv_w: ptr(s, &cw), conv_state: ptr(s, &ring), state: ptr(s, &state),
            a_log: ptr(s, &al), dt_bias: ptr(s, &dtb), norm_w: ptr(s, &nw), slots: 0, pos: ptr(s, &pos), state_io: 0, out: Mat::f32(ptr(s, &out), nv * dv), batch: b,
        };
        let sl: Vec<u64> = slot_sets.iter().map(|v| ptr(s, v)).collect();
        let ms = time_ms(s, 20, |i| {
            args.slots = sl[i % rotate];
            k.gdn_decode(s, &args).unwrap()
        });
        let bytes = (b * ssz * 4 * 2) as f64;
        println!("BENCH gdn_decode B={b:3}: {:7.1} us, state {:6.0} GB/s (read + write)", ms * 1e3, gbps(bytes, ms));
    }
    // Prefill of one 1024-token sequence: conv, then the recurrence.
    let t = 1024usize;
    let x = up(s, &randn_vec(g, t * ld, 1.0));
    let cw = up(s, &to_bf16(&randn_vec(g, c * 4, 0.5)));
    let ring = s.alloc_zeros::<f32>(4 * c).unwrap();
    let conv_out = s.alloc_zeros::<f32>(t * c).unwrap();
    let (cu, sl, sp) = (up(s, &[0i32, t as i32]), up(s, &[0i32]), up(s, &[0i32]));
    let conv = Conv1d { x: Mat::f32(ptr(s, &x), ld), w: ptr(s, &cw), conv_state: ptr(s, &ring), cu_seqlens: ptr(s, &cu), slots: ptr(s, &sl), start_pos: ptr(s, &sp), out: ptr(s, &conv_out), ld_out: c, nseq: 1 };
    let ms = time_ms(s, 5, |_| k.conv1d(s, &conv).unwrap());
    println!("BENCH conv1d prefill T={t}: {:.1} us", ms * 1e3);
    bench_gdn_prefill_on(e, s, g);
}

/// GDN prefill alone: `KILN_CUDA_BENCH=1 cargo test --release --test cuda_kernels
/// bench_gdn_prefill -- --nocapture`. With KILN_GDN_PREFILL_BASELINE=<path of another
/// gdn_prefill.cu with the same entry points> (e.g. the sequential kernel of commit
/// 3aab5ce, launched as it was: grid (DV/32, NV, nseq), block 512, no dynamic shared
/// memory), that kernel is timed on the same inputs too.
#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn bench_gdn_prefill() {
    if std::env::var("KILN_CUDA_BENCH").ok().as_deref() != Some("1") {
        println!("skipped: set KILN_CUDA_BENCH=1 to time the kernels");
        return;
    }
    let Some(e) = env() else { return };
    let s = stream(e);
    bench_gdn_prefill_on(e, &s, &mut rng(98));
}

/// One 1024-token sequence (the 4B model's 24 linear layers each run this once per 1K
/// prompt) and 8 sequences of 128 tokens, from random conv outputs and states.
fn bench_gdn_prefill_on(e: &Env, s: &Arc<CudaStream>, g: &mut rand_chacha::ChaCha8Rng) {
    let k = &e.k;
    let d = k.dims().clone();
    let (c, nv, dk, dv) = (d.conv_dim(), d.lin_num_v_heads, d.lin_k_dim, d.lin_v_dim);
    let ssz = nv * dk * dv;
    let t = 1024usize;
    let conv_out = up(s, &randn_vec(g, t * c, 1.0));
    let raw = s.alloc_zeros::<f32>(t * nv * dv).unwrap();
    let ba = up(s, &randn_vec(g, t * 2 * nv, 1.0));
    let al = up(s, &(0..nv).map(|i| (1.0 + i as f32 * 0.2).ln()).collect::<Vec<_>>());
    let dtb = up(s, &randn_vec(g, nv, 0.5));
    let bm = Mat::f32(ptr(s, &ba), 2 * nv);
    for nseq in [1usize, 8] {
        let len = t / nseq;
        let state = up(s, &randn_vec(g, nseq * ssz, 0.1));
        let cu = up(s, &(0..=nseq).map(|i| (i * len) as i32).collect::<Vec<_>>());
        let sl = up(s, &(0..nseq as i32).collect::<Vec<_>>());
        let ws = s.alloc_zeros::<u8>(k.gdn_prefill_workspace(t, nseq)).unwrap();
        let pre = GdnPrefill {
            qkv: ptr(s, &conv_out), ld_qkv: c, b: bm, a: bm.cols(nv), a_log: ptr(s, &al), dt_bias: ptr(s, &dtb), state: ptr(s, &state),
            cu_seqlens: ptr(s, &cu), slots: ptr(s, &sl), out: ptr(s, &raw), ld_out: nv * dv, nseq,
            tokens: t, max_tokens: len, workspace: ptr(s, &ws), workspace_bytes: ws.len(),
        };
        let ms = time_ms(s, 5, |_| k.gdn_prefill(s, &pre).unwrap());
        println!("BENCH gdn_prefill (prep + scan) T={t} as {nseq} x {len}: {:.1} us per layer", ms * 1e3);
        if let Ok(path) = std::env::var("KILN_GDN_PREFILL_BASELINE") {
            match bench_gdn_prefill_baseline(e, s, &path, &pre) {
                Ok(ms) => println!("BENCH gdn_prefill (baseline {path}) T={t} as {nseq} x {len}: {:.1} us per layer", ms * 1e3),
                Err(err) => println!("BENCH gdn_prefill baseline not timed: {err:#}"),
            }
        }
    }
}

/// Times the f32 entry point of another gdn_prefill.cu (block 512, no dynamic shared memory).
fn bench_gdn_prefill_baseline(e: &Env, s: &Arc<CudaStream>, path: &str, a: &GdnPrefill) -> anyhow::Result<f64> {
    use std::ffi::c_void;
    let src = std::fs::read_to_string(path)?;
    let (major, minor) = e.ctx.compute_capability()?;
    let arch = compile::arch_for_compute_capability(major, minor).ok_or_else(|| anyhow::anyhow!("no arch for {major}.{minor}"))?;
    let inc: Vec<_> = compile::find_cuda_include().into_iter().collect();
    let m = compile::compile_module("gdn_prefill_baseline", &src, arch, e.k.dims(), &inc)?;
    let module = e.ctx.load_module(cudarc::nvrtc::Ptx::from_binary(m.cubin))?;
    let f = module.load_function("kiln_gdn_prefill_f32")?;
    let d = e.k.dims();
    let grid = ((d.lin_v_dim / 32) as u32, d.lin_num_v_heads as u32, a.nseq as u32);
    let (mut qkv, mut ldq, mut b, mut aa, mut ldba) = (a.qkv, a.ld_qkv as i32, a.b.ptr, a.a.ptr, a.b.ld as i32);
    let (mut al, mut dtb, mut st, mut cu, mut sl, mut out, mut ldo, mut ns) = (a.a_log, a.dt_bias, a.state, a.cu_seqlens, a.slots, a.out, a.ld_out as i32, a.nseq as i32);
    let mut p: Vec<*mut c_void> = vec![
        &mut qkv as *mut _ as *mut c_void, &mut ldq as *mut _ as *mut c_void, &mut b as *mut _ as *mut c_void, &mut aa as *mut _ as *mut c_void,
        &mut ldba as *mut _ as *mut c_void, &mut al as *mut _ as *mut c_void, &mut dtb as *mut _ as *mut c_void, &mut st as *mut _ as *mut c_void,
        &mut cu as *mut _ as *mut c_void, &mut sl as *mut _ as *mut c_void, &mut out as *mut _ as *mut c_void, &mut ldo as *mut _ as *mut c_void,
        &mut ns as *mut _ as *mut c_void,
    ];
    let ms = time_ms(s, 3, |_| unsafe { cudarc::driver::result::launch_kernel(f.cu_function(), grid, (512, 1, 1), 0, s.cu_stream(), &mut p).unwrap() });
    Ok(ms)
}

fn bench_attention(e: &Env, s: &Arc<CudaStream>, g: &mut rand_chacha::ChaCha8Rng) {
    let k = &e.k;
    let d = k.dims().clone();
    let (nh, nkv, hd) = (d.num_heads, d.num_kv_heads, d.head_dim);
    let bs = 16usize;
    // (ctx, batch, max_parts): the step's shapes at ctx 1024 (16 parts, as before session
    // 22), and at 4K / 8K with the engine's 32 parts (issue 8: >= 70 % of copy from 4K).
    for (ctx, b, max_parts) in [(1024usize, 1usize, 16usize), (1024, 8, 16), (1024, 32, 16), (4096, 1, 32), (8192, 1, 32), (8192, 8, 32)] {
        let blocks = b * ctx / bs;
        let kc = up(s, &to_bf16(&randn_vec(g, blocks * nkv * bs * hd, 1.0)));
        let vc = up(s, &to_bf16(&randn_vec(g, blocks * nkv * bs * hd, 1.0)));
        let tables: Vec<i32> = (0..blocks as i32).collect();
        let bt = up(s, &tables);
        let q = up(s, &randn_vec(g, b * nh * hd, 1.0));
        let cl = up(s, &vec![ctx as i32; b]);
        let (na, nm) = k.attn_decode_scratch(b, max_parts);
        let (pa, pm) = (s.alloc_zeros::<f32>(na).unwrap(), s.alloc_zeros::<f32>(nm).unwrap());
        let out = s.alloc_zeros::<f32>(b * nh * hd).unwrap();
        let args = AttnDecode {
            q: ptr(s, &q), k_cache: ptr(s, &kc), v_cache: ptr(s, &vc), block_tables: ptr(s, &bt), bt_stride: ctx / bs, ctx_lens: ptr(s, &cl),
            block_size: bs, part_acc: ptr(s, &pa), part_ml: ptr(s, &pm), max_parts, gate: None, gate_hs: 2 * hd, out: Mat::f32(ptr(s, &out), nh * hd), batch: b,
        };
        let bytes = (b * ctx * nkv * hd * 2 * 2) as f64;
        let ms = time_ms(s, 20, |_| k.attn_decode(s, &args).unwrap());
        println!("BENCH attn_decode ctx={ctx} B={b:2} parts {max_parts}: {:7.1} us (partial + combine), KV {:6.0} GB/s", ms * 1e3, gbps(bytes, ms));
    }
    let t = 1024usize;
    let blocks = t / bs;
    let kc = up(s, &to_bf16(&randn_vec(g, blocks * nkv * bs * hd, 1.0)));
    let vc = up(s, &to_bf16(&randn_vec(g, blocks * nkv * bs * hd, 1.0)));
    let bt = up(s, &(0..blocks as i32).collect::<Vec<_>>());
    let q = up(s, &randn_vec(g, t * nh * hd, 1.0));
    let (cu, st) = (up(s, &[0i32, t as i32]), up(s, &[0i32]));
    let out = s.alloc_zeros::<f32>(t * nh * hd).unwrap();
    let args = AttnPrefill {
        q: ptr(s, &q), k_cache: ptr(s, &kc), v_cache: ptr(s, &vc), cu_seqlens: ptr(s, &cu), start_pos: ptr(s, &st), block_tables: ptr(s, &bt),
        bt_stride: blocks, block_size: bs, out: ptr(s, &out), nseq: 1, max_tokens: t,
    };
    let ms = time_ms(s, 3, |_| k.attn_prefill(s, &args).unwrap());
    let flops = 4.0 * nh as f64 * hd as f64 * (t * (t + 1) / 2) as f64;
    println!("BENCH attn_prefill T={t} (causal, one sequence): {:.1} us per layer, {:.1} TFLOP/s", ms * 1e3, flops / (ms * 1e-3) / 1e12);
    let _: Option<GemmPlan> = None;
}
