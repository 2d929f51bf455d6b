//! The whole cuda backend against the CPU backend (the f32 reference) on the
//! kernel-sized toy model of tests/plan_fixture: the same prompts prefilled (skinny and
//! cuBLASLt paths) and decoded, logits compared by normalised error, greedy tokens
//! compared, and the cuda backend's batch invariance checked bit for bit. Needs a GPU:
//! `#[ignore]`d here (listed as not run), run on the device with `--ignored`.
#![cfg(feature = "cuda")]

mod plan_fixture;

use kiln::backend::cpu::CpuBackend;
use kiln::backend::cuda::compile::{self, KernelDims};
use kiln::backend::cuda::{CudaBackend, CudaOptions};
use kiln::backend::{Backend, Capacity, SeqChunk, Want};
use kiln::plan::{Arch, DType, KernelImage};
use plan_fixture::{built_as, Opts};

/// ‖a − b‖ / ‖b‖ in f64; infinite when `a` holds a NaN or infinity.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    if a.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((*x - *y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, x)| if *x > v[best] { i } else { best })
}

/// Prefills `prompt` in chunks of `chunk` tokens, then decodes `steps` tokens greedily
/// (feeding the reference's tokens, so both backends see the same inputs); returns the
/// logits row after each fed position.
fn run(be: &mut dyn Backend, slot: usize, prompt: &[u32], chunk: usize, feed: &[u32], blocks: &[u32]) -> Vec<Vec<f32>> {
    be.reset_slot(slot).unwrap();
    let mut rows = Vec::new();
    let mut pos = 0;
    while pos < prompt.len() {
        let end = (pos + chunk).min(prompt.len());
        let want = if end == prompt.len() { Want::Last } else { Want::Nothing };
        let out = be.forward(&[SeqChunk { slot, start_pos: pos, tokens: &prompt[pos..end], blocks, want, allowed: None }]).unwrap();
        if want == Want::Last {
            rows.push(out[0].data.clone());
        }
        pos = end;
    }
    for (i, t) in feed.iter().enumerate() {
        let tok = [*t];
        let out = be.forward(&[SeqChunk { slot, start_pos: prompt.len() + i, tokens: &tok, blocks, want: Want::Last, allowed: None }]).unwrap();
        rows.push(out[0].data.clone());
    }
    rows
}

/// The toy model's plan, built with kernels for this GPU.
fn toy_plan() -> plan_fixture::Built {
    toy_plan_as(false)
}

/// The toy plan with bf16 GEMM operands, or fp16 ones (`gemm_f16`: fp16 weights and
/// kernels, docs/numerics.md).
fn toy_plan_as(gemm_f16: bool) -> plan_fixture::Built {
    let ctx = cudarc::driver::CudaContext::new(0).expect("a CUDA device");
    let (major, minor) = ctx.compute_capability().unwrap();
    let arch = Arch::from_compute_capability(major, minor).unwrap();
    drop(ctx);
    let o = Opts { kernel_dims: true, ..Opts::default() };
    let cfg_json = plan_fixture::config_json(&o);
    let cfg = kiln::config::ModelConfig::from_json(&cfg_json).unwrap();
    let inc = compile::find_cuda_include().expect("CUDA headers (KILN_CUDA_INCLUDE)");
    let dims = KernelDims { gemm_f16, ..KernelDims::from_config(&cfg) };
    let kernels: Vec<KernelImage> = compile::compile_all(arch.as_str(), &dims, &[inc])
        .unwrap()
        .into_iter()
        .map(|m| KernelImage { name: m.name, cubin: m.cubin })
        .collect();
    built_as(&o, Some(arch), &kernels, if gemm_f16 { DType::F16 } else { DType::Bf16 })
}

/// Options for the toy model: `running` slots, 256-token sequences, 512-token steps.
fn toy_options(running: usize) -> CudaOptions {
    CudaOptions { max_running: Some(running), max_seq_len: 256, max_step_tokens: 512, ..Default::default() }
}

/// KV blocks for `n` slots, 16 each (slot s owns blocks 16s..16s + 15).
fn stripes(n: u32) -> Vec<Vec<u32>> {
    (0..n).map(|s| (s * 16..(s + 1) * 16).collect()).collect()
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn cuda_backend_matches_the_cpu_backend_on_the_toy_model() {
    matches_cpu_and_batch_invariant(&toy_plan());
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn an_f16_plan_matches_the_cpu_backend_and_stays_batch_invariant() {
    // fp16 GEMM weights and operands (one MMA per product): the same bounds as bf16's.
    matches_cpu_and_batch_invariant(&toy_plan_as(true));
}

/// The plan's logits against the CPU backend's (prefill on both GEMM paths, then decode),
/// and its decode rows bit for bit alone and among 7 other sequences.
fn matches_cpu_and_batch_invariant(b: &plan_fixture::Built) {
    let opt = toy_options(8);
    let mut gpu = CudaBackend::load(&b.plan, None, &opt).unwrap();
    let (cpu_cfg, w) = kiln::checkpoint::load(&b.model).unwrap();
    let cap = Capacity { slots: 8, block_size: 16, kv_blocks: 8 * 16, max_seq_len: 256 };
    let mut cpu = CpuBackend::new(cpu_cfg, w, cap).unwrap();
    let vocab = b.cfg.vocab_size as u32;
    let per = 256 / gpu.capacity().block_size;
    let blocks: Vec<u32> = (0..per as u32).collect();
    // Prompt lengths and chunk sizes: all-skinny (5 tokens), the cuBLASLt path (70 in one
    // chunk), and chunks that cross GDN chunk boundaries (130 in chunks of 65).
    for (len, chunk) in [(5usize, 64usize), (70, 128), (130, 65)] {
        let prompt: Vec<u32> = (0..len as u32).map(|i| (i * 7 + 3) % vocab).collect();
        let feed: Vec<u32> = (0..8u32).map(|i| (i * 5 + 1) % vocab).collect();
        let want = run(&mut cpu, 0, &prompt, chunk, &feed, &blocks);
        let got = run(&mut gpu, 0, &prompt, chunk, &feed, &blocks);
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            let e = rel_err(g, r);
            // The GPU reads exactly the stored bf16 weights; decode rows keep fp32
            // activations split into bf16 hi + lo (~1e-5 relative), prefill chunks of
            // more than 64 tokens feed cuBLASLt bf16 activations (2^-9 relative rounding
            // per element, amplified by 4 layers of random weights); an f16 plan rounds
            // every GEMM input to fp16 (2^-12), finer than that. 3e-2 is 3x the
            // full-size bar against fp32 (1.1e-2); a wrong index or mask gives errors
            // near 1.
            assert!(e < 3e-2, "prompt {len} (chunks of {chunk}), row {i}: rel err {e:.3e}");
            let (ga, ra) = (argmax(g), argmax(r));
            let mut sorted = r.clone();
            sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
            // The greedy token agrees wherever the reference's top-2 margin is clear.
            if sorted[0] - sorted[1] > 0.05 * sorted[0].abs().max(1.0) {
                assert_eq!(ga, ra, "prompt {len}, row {i}: greedy token differs");
            }
        }
    }
    // Batch invariance, bit for bit: slot 0's decode rows alone and among 7 others.
    let prompt: Vec<u32> = (0..40u32).map(|i| (i * 3 + 2) % vocab).collect();
    let feed: Vec<u32> = (0..6u32).map(|i| (i * 11 + 4) % vocab).collect();
    let alone = run(&mut gpu, 0, &prompt, 64, &feed, &blocks);
    let stripes = stripes(8);
    let mut gpu8 = CudaBackend::load(&b.plan, None, &toy_options(8)).unwrap();
    for (s, stripe) in stripes.iter().enumerate() {
        let p: Vec<u32> = if s == 0 { prompt.clone() } else { (0..(20 + s as u32 * 9)).map(|i| (i * 13 + s as u32) % vocab).collect() };
        gpu8.reset_slot(s).unwrap();
        gpu8.forward(&[SeqChunk { slot: s, start_pos: 0, tokens: &p, blocks: stripe, want: Want::Nothing, allowed: None }]).unwrap();
    }
    let lens: Vec<usize> = (0..8).map(|s| if s == 0 { prompt.len() } else { 20 + s * 9 }).collect();
    for (i, t) in feed.iter().enumerate() {
        let toks: Vec<[u32; 1]> = (0..8).map(|s| if s == 0 { [*t] } else { [(s as u32 + i as u32) % vocab] }).collect();
        let chunks: Vec<SeqChunk> =
            (0..8).map(|s| SeqChunk { slot: s, start_pos: lens[s] + i, tokens: &toks[s], blocks: &stripes[s], want: Want::Last, allowed: None }).collect();
        let out = gpu8.forward(&chunks).unwrap();
        assert_eq!(out[0].data, alone[1 + i], "decode row {i} differs when 7 other sequences share its step");
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn packed_weights_give_the_row_major_bits() {
    // The decode GEMMs reading packed weights (`CudaOptions::packed_weights`) against the
    // row-major ones: prefill and decode logits bit-identical, alone and in a batch of 8
    // (the toy model packs out, o, fc, gate_up and qgkv; the rest stays row-major).
    let b = toy_plan();
    let opt = |packed| CudaOptions { packed_weights: Some(packed), ..toy_options(8) };
    let mut rows = CudaBackend::load(&b.plan, None, &opt(false)).unwrap();
    let mut packed = CudaBackend::load(&b.plan, None, &opt(true)).unwrap();
    let vocab = b.cfg.vocab_size as u32;
    let blocks: Vec<u32> = (0..16).collect();
    for (len, chunk) in [(5usize, 64usize), (70, 128), (40, 16)] {
        let prompt: Vec<u32> = (0..len as u32).map(|i| (i * 7 + 3) % vocab).collect();
        let feed: Vec<u32> = (0..8u32).map(|i| (i * 5 + 1) % vocab).collect();
        let a = run(&mut rows, 0, &prompt, chunk, &feed, &blocks);
        let p = run(&mut packed, 0, &prompt, chunk, &feed, &blocks);
        assert!(a.iter().flatten().all(|v| v.is_finite()), "prompt {len}: non-finite logits");
        assert_eq!(a, p, "prompt {len} (chunks of {chunk}): packed weights change the logits");
    }
    // Eight decode rows in one step (the shared-x kernel's batch).
    let stripes = stripes(8);
    let mut outs = Vec::new();
    for be in [&mut rows, &mut packed] {
        for (s, stripe) in stripes.iter().enumerate() {
            let p: Vec<u32> = (0..(10 + s as u32 * 3)).map(|i| (i * 13 + s as u32) % vocab).collect();
            be.reset_slot(s).unwrap();
            be.forward(&[SeqChunk { slot: s, start_pos: 0, tokens: &p, blocks: stripe, want: Want::Nothing, allowed: None }]).unwrap();
        }
        let toks: Vec<[u32; 1]> = (0..8u32).map(|s| [(s * 3 + 1) % vocab]).collect();
        let chunks: Vec<SeqChunk> = (0..8).map(|s| SeqChunk { slot: s, start_pos: 10 + s * 3, tokens: &toks[s], blocks: &stripes[s], want: Want::Last, allowed: None }).collect();
        outs.push(be.forward(&chunks).unwrap().into_iter().map(|o| o.data).collect::<Vec<_>>());
    }
    assert_eq!(outs[0], outs[1], "a batch of 8: packed weights change the logits");
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn a_long_prefill_chunk_computes_the_same_bits_alone_and_in_a_mixed_step() {
    // A chunk longer than 64 tokens (cuBLASLt, bf16 activations) alone, where every GEMM
    // input is written as bf16 in place, and in a step that also holds decode rows and a
    // short chunk, where its rows come last (`decode_first`) and their GEMM inputs go to
    // `x_bf16` (`Rows::bf16_from`): the chunk's last logits and the decode steps after it
    // (which read its KV and GDN state) bit-identical, whatever order the caller gives.
    // The f16 plan too (fp16 GEMM inputs there).
    long_chunk_alone_and_mixed(&toy_plan());
    long_chunk_alone_and_mixed(&toy_plan_as(true));
}

fn long_chunk_alone_and_mixed(b: &plan_fixture::Built) {
    let opt = toy_options(8);
    let mut gpu = CudaBackend::load(&b.plan, None, &opt).unwrap();
    let vocab = b.cfg.vocab_size as u32;
    let stripes = stripes(8);
    let long: Vec<u32> = (0..100u32).map(|i| (i * 17 + 5) % vocab).collect();
    let feed: Vec<u32> = (0..4u32).map(|i| (i * 29 + 3) % vocab).collect();
    let alone = run(&mut gpu, 0, &long, 128, &feed, &stripes[0]);
    for order in [[0usize, 1, 2, 3], [1, 3, 2, 0]] {
        // Slots 1 and 2 decode (10-token prompts), slot 3 prefills 20 tokens, slot 4 the long chunk.
        for s in [1usize, 2] {
            let p: Vec<u32> = (0..10u32).map(|i| (i * 13 + s as u32) % vocab).collect();
            gpu.reset_slot(s).unwrap();
            gpu.forward(&[SeqChunk { slot: s, start_pos: 0, tokens: &p, blocks: &stripes[s], want: Want::Nothing, allowed: None }]).unwrap();
        }
        gpu.reset_slot(3).unwrap();
        gpu.reset_slot(4).unwrap();
        let short: Vec<u32> = (0..20u32).map(|i| (i * 11 + 2) % vocab).collect();
        let ones = [[7u32 % vocab], [9u32 % vocab]];
        let all = [
            SeqChunk { slot: 4, start_pos: 0, tokens: &long, blocks: &stripes[4], want: Want::Last, allowed: None },
            SeqChunk { slot: 1, start_pos: 10, tokens: &ones[0], blocks: &stripes[1], want: Want::Last, allowed: None },
            SeqChunk { slot: 3, start_pos: 0, tokens: &short, blocks: &stripes[3], want: Want::Last, allowed: None },
            SeqChunk { slot: 2, start_pos: 10, tokens: &ones[1], blocks: &stripes[2], want: Want::Last, allowed: None },
        ];
        let chunks: Vec<SeqChunk> = order.iter().map(|&i| all[i].clone()).collect();
        let out = gpu.forward(&chunks).unwrap();
        let at = order.iter().position(|&i| i == 0).unwrap();
        assert!(out[at].data.iter().all(|v| v.is_finite()), "order {order:?}: non-finite logits");
        assert_eq!(out[at].data, alone[0], "order {order:?}: the long chunk's last logits differ beside decode rows and a short chunk");
        for (i, t) in feed.iter().enumerate() {
            let tok = [*t];
            let o = gpu.forward(&[SeqChunk { slot: 4, start_pos: long.len() + i, tokens: &tok, blocks: &stripes[4], want: Want::Last, allowed: None }]).unwrap();
            assert_eq!(o[0].data, alone[1 + i], "order {order:?}: decode step {i} after the mixed prefill differs");
        }
    }
}

/// Structured output's greedy token on the device: steps mixing masked argmax rows,
/// plain argmax rows and logit rows (decode steps through the graphs, and an eager step
/// with a prefill chunk) give each masked row the CPU twin's masked argmax of the logits
/// the same row gets when it asks for them (a row's result never depends on its step).
#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn masked_greedy_rows_take_the_argmax_over_their_allowed_ids() {
    use kiln::backend::cpu::ops::argmax_masked;
    let b = toy_plan();
    let opt = toy_options(8);
    let mut gpu = CudaBackend::load(&b.plan, None, &opt).unwrap();
    let vocab = b.cfg.vocab_size;
    let limit = vocab - 5;
    let words = vocab.div_ceil(32);
    let stripes = stripes(4);
    let prompts: Vec<Vec<u32>> = (0..4u32).map(|s| (0..(10 + s * 7)).map(|i| (i * 13 + s) % vocab as u32).collect()).collect();
    let mut seed = 0x9e37_79b9u32;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    // Steps 0..3: all four slots decode (graph); step 3 adds slot 3's prefill (eager).
    for step in 0..4 {
        let masks: Vec<Vec<u32>> = (0..4).map(|s| match (s + step) % 4 {
            0 => (0..words).map(|_| rand()).collect(),
            1 => { let mut m = vec![0u32; words]; let id = rand() as usize % limit; m[id / 32] = 1 << (id % 32); m }
            2 => vec![u32::MAX; words],
            _ => (0..words).map(|_| rand() & rand() & rand()).collect(),
        }).collect();
        let run = |gpu: &mut CudaBackend, masked: bool| {
            for s in 0..4 {
                gpu.reset_slot(s).unwrap();
                let p = &prompts[s];
                let n = if step == 3 && s == 3 { p.len() - 4 } else { p.len() - 1 };
                gpu.forward(&[SeqChunk { slot: s, start_pos: 0, tokens: &p[..n], blocks: &stripes[s], want: Want::Nothing, allowed: None }]).unwrap();
            }
            let chunks: Vec<SeqChunk> = (0..4)
                .map(|s| {
                    let p = &prompts[s];
                    let n = if step == 3 && s == 3 { p.len() - 4 } else { p.len() - 1 };
                    // Slot 2 stays unmasked; with `masked` off every row wants its logits.
                    let (want, allowed) = match (masked, s) {
                        (false, _) => (Want::Last, None),
                        (true, 2) => (Want::Argmax { limit }, None),
                        (true, _) => (Want::Argmax { limit }, Some(&masks[s][..])),
                    };
                    SeqChunk { slot: s, start_pos: n, tokens: &p[n..], blocks: &stripes[s], want, allowed }
                })
                .collect();
            gpu.forward(&chunks).unwrap()
        };
        let rows = run(&mut gpu, false);
        let got = run(&mut gpu, true);
        for s in 0..4 {
            let row = rows[s].last().unwrap();
            let want = if s == 2 { argmax_masked(row, limit, &vec![u32::MAX; words]) } else { argmax_masked(row, limit, &masks[s]) };
            assert_eq!(got[s].argmax, Some(want as u32), "step {step} slot {s}");
            assert!(got[s].data.is_empty(), "step {step} slot {s}: an argmax row copied its logits out");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn cuda_verify_is_exact_against_its_own_plain_decoding() {
    // kiln::backend::verify_check on the toy plan: every verified position's greedy token
    // is plain decoding's, accepted lengths follow the drafts, and the step after each
    // commit is bit-identical to plain decoding (batch 1 and 5, sequences of unequal
    // lengths, ring wrap-around at every offset).
    // The f16 plan too: its verify rows compute like its decode rows.
    for (verify_graphs, n, f16) in [(false, 1usize, false), (false, 5, false), (true, 1, false), (true, 5, false), (true, 5, true)] {
        let b = toy_plan_as(f16);
        let opt = CudaOptions { spec_positions: 4, spec_rows: 8, verify_graphs, ..toy_options(8) };
        let mut gpu = CudaBackend::load(&b.plan, None, &opt).unwrap();
        let vocab = gpu.config().vocab_size;
        let per = 256 / gpu.capacity().block_size;
        let prompts: Vec<Vec<u32>> = (0..n).map(|s| (0..20 + 7 * s as u32).map(|i| (i * 131 + 7 * s as u32 + 3) % vocab as u32).collect()).collect();
        let blocks: Vec<Vec<u32>> = (0..n).map(|s| ((s * per) as u32..((s + 1) * per) as u32).collect()).collect();
        let r = kiln::backend::verify_check::check(&mut gpu, &prompts, &blocks, 30, 3, vocab).unwrap();
        println!("batch {n}, verify graphs {verify_graphs}, f16 {f16}: {r:?}");
    }
    let b = toy_plan();
    let vocab = b.cfg.vocab_size;
    // Without verify scratch the backend refuses clearly.
    let mut plain = CudaBackend::load(&b.plan, None, &toy_options(2)).unwrap();
    let t = [1u32, 2];
    let blocks: Vec<u32> = (0..16).collect();
    let err = plain.verify(&[kiln::backend::VerifyChunk { slot: 0, start_pos: 0, tokens: &t, blocks: &blocks, limit: vocab }]).unwrap_err();
    assert!(format!("{err:#}").contains("without verify scratch"), "{err:#}");
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn cuda_speculation_with_the_mtp_head_gives_plain_greedy_output() {
    // The whole cycle on the device with real MTP drafts: the output equals plain greedy
    // decoding (on the same backend), and the device drafts agree with the CPU backend's
    // MTP head on the toy model (a wrong pairing or position accepts about nothing).
    let b = toy_plan();
    let opt = CudaOptions { spec_positions: 4, spec_rows: 2, ..toy_options(2) };
    let mut gpu = CudaBackend::load(&b.plan, None, &opt).unwrap();
    assert!(gpu.supports_speculation());
    let vocab = gpu.config().vocab_size;
    let (cpu_cfg, w) = kiln::checkpoint::load(&b.model).unwrap();
    let mut cpu = CpuBackend::new(cpu_cfg, w, Capacity { slots: 2, block_size: 16, kv_blocks: 32, max_seq_len: 256 }).unwrap();
    for len in [1usize, 9, 70] {
        let prompt: Vec<u32> = (0..len as u32).map(|i| (i * 29 + 5) % vocab as u32).collect();
        let plain = kiln::generate::greedy(&mut gpu, &prompt, 40, &[], vocab).unwrap();
        let (spec, counts) = kiln::generate::greedy_speculative(&mut gpu, &prompt, 40, &[], vocab, 3).unwrap();
        assert_eq!(spec, plain, "prompt {len}: speculative output differs from plain greedy");
        println!("prompt {len}: {counts:?}");
        // Drafts from the same state on both backends (after the same prefill).
        let blocks: Vec<u32> = (0..16).collect();
        let mut drafts = Vec::new();
        for be in [&mut gpu as &mut dyn Backend, &mut cpu] {
            be.reset_slot(0).unwrap();
            be.forward(&[SeqChunk { slot: 0, start_pos: 0, tokens: &prompt, blocks: &blocks, want: Want::Nothing, allowed: None }]).unwrap();
            let d = be.draft(&[kiln::backend::DraftChunk { slot: 0, pos: len, next: plain[0], steps: 3, blocks: &blocks, limit: vocab }]).unwrap();
            drafts.push(d[0].clone());
        }
        println!("prompt {len}: cuda drafts {:?}, cpu drafts {:?}", drafts[0], drafts[1]);
        assert_eq!(drafts[0][0], drafts[1][0], "prompt {len}: the first draft differs from the CPU MTP head's");
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn a_timeline_build_times_every_launch_of_a_decode_graph() {
    // Kernels built with KILN_TIMELINE=1 (the diagnostic of `kiln-eval timeline`): one
    // graph-replayed decode step leaves one timed launch per logged launch, in order.
    // (Other tests compiling meanwhile may get the timeline too: it changes no result.)
    std::env::set_var("KILN_TIMELINE", "1");
    let b = toy_plan();
    std::env::remove_var("KILN_TIMELINE");
    let opt = toy_options(4);
    let mut gpu = CudaBackend::load(&b.plan, None, &opt).unwrap();
    assert!(gpu.kernels().timeline().is_some(), "the timeline build's modules have no kiln_timeline");
    let vocab = gpu.config().vocab_size as u32;
    let stripes = stripes(4);
    let prompt: Vec<u32> = (0..20u32).map(|i| (i * 11 + 2) % vocab).collect();
    for (s, blocks) in stripes.iter().enumerate() {
        gpu.reset_slot(s).unwrap();
        gpu.forward(&[SeqChunk { slot: s, start_pos: 0, tokens: &prompt, blocks, want: Want::Nothing, allowed: None }]).unwrap();
    }
    let step = |gpu: &mut CudaBackend, pos: usize| {
        let toks: Vec<[u32; 1]> = (0..4u32).map(|s| [(s * 3 + pos as u32) % vocab]).collect();
        let chunks: Vec<SeqChunk> = (0..4).map(|s| SeqChunk { slot: s, start_pos: pos, tokens: &toks[s], blocks: &stripes[s], want: Want::Argmax { limit: vocab as usize }, allowed: None }).collect();
        gpu.forward(&chunks).unwrap();
    };
    gpu.kernels().record_launches(true);
    step(&mut gpu, 20); // captures the graph of bucket 4
    let log = gpu.kernels().record_launches(false);
    assert!(log.len() > 10, "the capture logged {} launches", log.len());
    gpu.take_timeline().unwrap();
    step(&mut gpu, 21);
    let (records, lost) = gpu.take_timeline().unwrap();
    assert!(!lost && !records.is_empty());
    assert!(records.iter().all(|r| r.t_enter <= r.t_wait && r.t_wait <= r.t_end && r.t_end > 0), "unordered times in a record");
    let launches = kiln::backend::cuda::timeline::launches(&records);
    assert_eq!(launches.len(), log.len(), "every logged launch of the graph is on the timeline once");
    let rows = kiln::backend::cuda::timeline::rows(&launches, &log, |m, l| format!("{m}:{l}"));
    // On a mismatch, the launches around it as logged and as recorded (blocks, source site,
    // entry / release / end in ns from the first entry), so the device log says which side
    // is off (session 19: an add_rmsnorm named where the log has an m8 GEMM).
    let around = |i: usize| {
        let t0 = launches.iter().map(|l| l.first_enter).min().unwrap_or(0);
        (i.saturating_sub(3)..(i + 4).min(log.len()))
            .map(|j| {
                let l = &launches[j];
                format!("  {j}: log {} ({} blocks) | recorded {}:{} {} blocks, enter {} release {} end {}", log[j].name, log[j].blocks, l.module, l.line, l.blocks, l.first_enter - t0, l.first_wait - t0, l.last_end - t0)
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (i, (r, l)) in rows.iter().zip(&log).enumerate() {
        assert_eq!(r.name, l.name, "launch order at {i}:\n{}", around(i));
        assert!(r.blocks <= l.blocks && r.blocks > 0, "{}: {} blocks recorded of {}", l.name, r.blocks, l.blocks);
    }
    assert!(rows.iter().any(|r| r.weight_bytes > 0), "the GEMMs carry their weight bytes");
    assert!(rows.windows(2).all(|w| w[0].release_us <= w[1].release_us && w[0].end_us <= w[1].release_us + 0.1), "releases in order, each after its predecessor's end");
    println!("toy decode step at batch 4: {:.1} us over {} launches", rows.iter().map(|r| r.advance_us).sum::<f64>(), rows.len());
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn the_cycle_on_the_device_equals_draft_then_verify() {
    // `speculate` on the device (drafts fed, acceptance and the commit's choice on the GPU,
    // one read-back) against the two calls it replaces, from the same state in two slots
    // of one backend: the same greedy tokens and accepted lengths every cycle, then the
    // same next decode step's logits bit for bit (recurrent state, conv rings, KV and the
    // pending MTP state committed alike). Vocabulary limits force the acceptance: drafts
    // over 1 id are all token 0, so a verify limit of 1 accepts every draft, 2 some, the
    // whole vocabulary about none. Drafts of unequal length in the batch of 3.
    use kiln::backend::speculative::draft_then_verify;
    use kiln::backend::DraftChunk;
    let b = toy_plan();
    let opt = CudaOptions { spec_positions: 4, spec_rows: 8, ..toy_options(16) };
    let mut gpu = CudaBackend::load(&b.plan, None, &opt).unwrap();
    let vocab = gpu.config().vocab_size;
    let per = 256 / gpu.capacity().block_size;
    let stripe = |s: usize| -> Vec<u32> { ((s * per) as u32..((s + 1) * per) as u32).collect() };
    for (n, verify_limit) in [(1usize, 1usize), (3, 2), (8, vocab), (8, 1), (3, vocab)] {
        let prompts: Vec<Vec<u32>> = (0..n).map(|s| (0..9 + 5 * s as u32).map(|i| (i * 37 + 11 * s as u32 + 1) % vocab as u32).collect()).collect();
        let mut pos = vec![0usize; 2 * n];
        let mut next = vec![0u32; 2 * n];
        for s in 0..2 * n {
            gpu.reset_slot(s).unwrap();
            let p = &prompts[s % n];
            let out = gpu.forward(&[SeqChunk { slot: s, start_pos: 0, tokens: p, blocks: &stripe(s), want: Want::Argmax { limit: verify_limit }, allowed: None }]).unwrap();
            (pos[s], next[s]) = (p.len(), out[0].argmax.unwrap());
        }
        let blocks: Vec<Vec<u32>> = (0..2 * n).map(stripe).collect();
        let mut accepted_total = 0;
        for cycle in 0..6 {
            let chunks = |group: usize| -> Vec<DraftChunk> {
                (0..n)
                    .map(|i| {
                        let s = group * n + i;
                        let steps = if n == 3 { 1 + (i + cycle) % 3 } else { 3 };
                        DraftChunk { slot: s, pos: pos[s], next: next[s], steps, blocks: &blocks[s], limit: 1 }
                    })
                    .collect()
            };
            let (fused_chunks, two_chunks) = (chunks(0), chunks(1));
            let fused = gpu.speculate(&fused_chunks, verify_limit).unwrap();
            let two = draft_then_verify(&mut gpu, &two_chunks, verify_limit).unwrap();
            assert_eq!(fused, two, "n {n} limit {verify_limit} cycle {cycle}");
            for (i, v) in fused.iter().enumerate() {
                accepted_total += v.accepted;
                for s in [i, n + i] {
                    pos[s] += v.accepted;
                    next[s] = v.greedy[v.accepted - 1];
                }
            }
        }
        println!("n {n} verify limit {verify_limit}: {accepted_total} tokens accepted over {} sequence cycles", 6 * n);
        // One plain step on all 2n slots: the committed states must be the same.
        let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let chunks: Vec<SeqChunk> = (0..2 * n).map(|s| SeqChunk { slot: s, start_pos: pos[s], tokens: &toks[s], blocks: &blocks[s], want: Want::Last, allowed: None }).collect();
        let out = gpu.forward(&chunks).unwrap();
        for i in 0..n {
            let (a, b) = (&out[i].data, &out[n + i].data);
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "n {n} limit {verify_limit}: sequence {i}'s next logits differ between the two cycles");
        }
    }
}
