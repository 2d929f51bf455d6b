//! kiln-eval: correctness and speed measurements of a backend on the GPU machine.
//!
//!   kiln-eval logits --plan P --cases cases.json --out ours.f32
//!       teacher-forced logits at every continuation position (the rows
//!       scripts/gpu_reference.py compares with HF fp32/bf16), free-running greedy
//!       match, and batch invariance (one request alone vs among 31 others).
//!   kiln-eval bench --plan P [--batch 1,8,32,64] [--ctx 1024] [--prefill 1024]
//!       decode-step and prefill timings.
//!   kiln-eval verify --plan P [--batch 1,4,8] [--drafts 3] [--steps 24] [--ctx 1024]
//!       speculative verification against plain decoding (exact tokens, accepted
//!       lengths, bit-identical logits after the commit) and its time per call.
//!   kiln-eval timeline --plan P [--batch 1,8,64] [--ctx 1024] [--steps 5] [--prefill N] [--out F] [--blocks F]
//!       one decode step per batch size replayed from its graph, every kernel's blocks
//!       timed inside it (a plan built with KILN_TIMELINE=1, backend/cuda/timeline.rs).

use anyhow::{ensure, Context, Result};
use clap::{Parser, Subcommand};
use kiln::backend::cpu::ops::argmax;
use kiln::backend::cuda::{CudaBackend, CudaOptions};
use kiln::backend::{Backend, SeqChunk, VerifyChunk, Want};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Logits {
        #[arg(long)]
        plan: PathBuf,
        #[arg(long)]
        cases: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    Bench {
        #[arg(long)]
        plan: PathBuf,
        #[arg(long, default_value = "1,8,32,64,128,256")]
        batch: String,
        #[arg(long, default_value_t = 1024)]
        ctx: usize,
        #[arg(long, default_value_t = 1024)]
        prefill: usize,
        #[arg(long, default_value_t = 30)]
        iters: usize,
        /// Mixed steps "B:P,...": B decode rows (ctx tokens each) and one P-token prefill
        /// chunk in the same step, as a server runs them under load.
        #[arg(long, default_value = "")]
        mixed: String,
    },
    Verify {
        #[arg(long)]
        plan: PathBuf,
        #[arg(long, default_value = "1,4,8")]
        batch: String,
        #[arg(long, default_value_t = 3)]
        drafts: usize,
        #[arg(long, default_value_t = 24)]
        steps: usize,
        #[arg(long, default_value_t = 1024)]
        ctx: usize,
    },
    Timeline {
        #[arg(long)]
        plan: PathBuf,
        #[arg(long, default_value = "1,8,64")]
        batch: String,
        #[arg(long, default_value_t = 1024)]
        ctx: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Also a prefill of this many tokens in one chunk (0: none).
        #[arg(long, default_value_t = 0)]
        prefill: usize,
        /// Also a verify step (MTP speculation) of this many drafts per sequence at each
        /// batch (0: none): where the verify's time goes beside a decode step's.
        #[arg(long, default_value_t = 0)]
        verify_drafts: usize,
        /// Every launch of each batch's median step as JSON lines.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Every block of each batch's median step as JSON lines (launch, SM, block,
        /// release and end from the launch's first release): which blocks end late.
        #[arg(long)]
        blocks: Option<PathBuf>,
    },
}

/// Blocks 0.. for slot `slot` when every slot owns a fixed stripe of `per` blocks.
fn stripe(slot: usize, per: usize) -> Vec<u32> {
    ((slot * per) as u32..((slot + 1) * per) as u32).collect()
}

/// Prefills `prompt` into `slot` in pieces of at most `budget` tokens; returns the last row.
fn prefill(be: &mut dyn Backend, slot: usize, prompt: &[u32], blocks: &[u32], budget: usize) -> Result<Vec<f32>> {
    be.reset_slot(slot)?;
    let mut pos = 0;
    let mut last = Vec::new();
    while pos < prompt.len() {
        let end = (pos + budget).min(prompt.len());
        let want = if end == prompt.len() { Want::Last } else { Want::Nothing };
        let c = SeqChunk { slot, start_pos: pos, tokens: &prompt[pos..end], blocks, want, allowed: None };
        let mut out = be.forward(&[c])?;
        if want == Want::Last {
            last = out.remove(0).data;
        }
        pos = end;
    }
    Ok(last)
}

fn logits(plan: PathBuf, cases: PathBuf, out: PathBuf) -> Result<()> {
    let opt = CudaOptions { max_running: Some(256), max_seq_len: 4096, ..Default::default() };
    let mut be = CudaBackend::load(&plan, None, &opt)?;
    let per = opt.max_seq_len / be.capacity().block_size;
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cases)?)?;
    let prompts: Vec<Vec<u32>> = serde_json::from_value(v["prompts"].clone())?;
    let conts: Vec<Vec<u32>> = serde_json::from_value(v["continuations"].clone())?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(&out)?);
    let (mut free_match, mut free_total) = (0usize, 0usize);
    for (p, c) in prompts.iter().zip(&conts) {
        let blocks = stripe(0, per);
        let mut row = prefill(&mut be, 0, p, &blocks, 2048)?;
        let mut free_ok = true;
        for (i, &tok) in c.iter().enumerate() {
            for x in &row {
                f.write_all(&x.to_le_bytes())?;
            }
            if free_ok && argmax(&row) as u32 == tok {
                free_match += 1;
            } else {
                free_ok = false;
            }
            free_total += 1;
            let feed = [tok];
            let ch = SeqChunk { slot: 0, start_pos: p.len() + i, tokens: &feed, blocks: &blocks, want: Want::Last, allowed: None };
            row = be.forward(&[ch])?.remove(0).data;
        }
        for x in &row {
            f.write_all(&x.to_le_bytes())?;
        }
    }
    f.flush()?;
    println!("free-running greedy prefix match with HF fp32: {free_match}/{free_total} tokens");

    // Batch invariance: prompt 0 alone, then in slot 5 among 7, 63 and 255 other sequences.
    let greedy = |be: &mut CudaBackend, n: usize| -> Result<Vec<u32>> {
        let target = if n > 1 { 5 } else { 0 };
        let mut toks = vec![0u32; n];
        let mut lens = vec![0usize; n];
        for s in 0..n {
            let pr = if s == target { &prompts[0] } else { &prompts[(s + 1) % prompts.len()] };
            let row = prefill(be, s, pr, &stripe(s, per), 2048)?;
            toks[s] = argmax(&row) as u32;
            lens[s] = pr.len();
        }
        let mut out = vec![toks[target]];
        let all_blocks: Vec<Vec<u32>> = (0..n).map(|s| stripe(s, per)).collect();
        for _ in 0..31 {
            let feeds: Vec<[u32; 1]> = toks.iter().map(|t| [*t]).collect();
            let chunks: Vec<SeqChunk> = (0..n)
                .map(|s| SeqChunk { slot: s, start_pos: lens[s], tokens: &feeds[s], blocks: &all_blocks[s], want: Want::Last, allowed: None })
                .collect();
            let rows = be.forward(&chunks)?;
            for s in 0..n {
                toks[s] = argmax(&rows[s].data) as u32;
                lens[s] += 1;
            }
            out.push(toks[target]);
        }
        Ok(out)
    };
    let alone = greedy(&mut be, 1)?;
    for n in [8, 64, 256] {
        let batched = greedy(&mut be, n)?;
        println!(
            "batch invariance (32 greedy tokens, alone vs among {} others): {}",
            n - 1,
            if alone == batched { "identical" } else { "DIFFERENT" }
        );
        ensure!(alone == batched, "batch invariance failed at batch {n}: {alone:?} vs {batched:?}");
    }
    mixed_step_invariance(&mut be, &prompts, per)
}

/// Prompt 0's 32 greedy steps alone, then again while every step also carries prefill
/// chunks of other prompts (one of 100 tokens: the cuBLASLt path; one of 17: the skinny
/// path). Its logits rows must be bit-identical: a decode row's arithmetic may not
/// depend on what shares its step.
fn mixed_step_invariance(be: &mut CudaBackend, prompts: &[Vec<u32>], per: usize) -> Result<()> {
    let run = |be: &mut CudaBackend, mixed: bool| -> Result<Vec<Vec<f32>>> {
        let target = 3;
        let tb = stripe(target, per);
        let mut row = prefill(be, target, &prompts[0], &tb, 2048)?;
        let mut len = prompts[0].len();
        let mut rows = Vec::new();
        // Companions: (slot, prompt, chunk size, position reached).
        let mut comp: Vec<(usize, &Vec<u32>, usize, usize)> = if mixed {
            vec![(8, &prompts[1 % prompts.len()], 100, 0), (9, &prompts[2 % prompts.len()], 17, 0)]
        } else {
            Vec::new()
        };
        let comp_blocks: Vec<Vec<u32>> = comp.iter().map(|c| stripe(c.0, per)).collect();
        for c in &comp {
            be.reset_slot(c.0)?;
        }
        for _ in 0..32 {
            let tok = [argmax(&row) as u32];
            let mut chunks = vec![SeqChunk { slot: target, start_pos: len, tokens: &tok, blocks: &tb, want: Want::Last, allowed: None }];
            for (c, blocks) in comp.iter_mut().zip(&comp_blocks) {
                if c.3 >= c.1.len() {
                    be.reset_slot(c.0)?;
                    c.3 = 0;
                }
                let end = (c.3 + c.2).min(c.1.len());
                chunks.push(SeqChunk { slot: c.0, start_pos: c.3, tokens: &c.1[c.3..end], blocks, want: Want::Nothing, allowed: None });
                c.3 = end;
            }
            row = be.forward(&chunks)?.remove(0).data;
            rows.push(row.clone());
            len += 1;
        }
        Ok(rows)
    };
    let alone = run(be, false)?;
    let mixed = run(be, true)?;
    let max_diff = alone.iter().flatten().zip(mixed.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let same = alone.iter().flatten().zip(mixed.iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits());
    println!(
        "mixed-step invariance (32 decode steps alone vs sharing steps with prefill chunks of 100 and 17 tokens): {}",
        if same { "bit-identical logits".to_string() } else { format!("DIFFERENT (max abs logit difference {max_diff:.3e})") }
    );
    ensure!(same, "mixed-step invariance failed: max abs logit difference {max_diff:.3e}");
    Ok(())
}

fn bench(plan: PathBuf, batch: String, ctx: usize, prefill_len: usize, iters: usize, mixed: String) -> Result<()> {
    let batches: Vec<usize> = batch.split(',').map(|b| b.trim().parse().context("--batch")).collect::<Result<_>>()?;
    let mixed: Vec<(usize, usize)> = mixed
        .split(',')
        .filter(|m| !m.trim().is_empty())
        .map(|m| {
            let (b, p) = m.trim().split_once(':').context("--mixed takes B:P pairs")?;
            Ok((b.parse().context("--mixed B")?, p.parse().context("--mixed P")?))
        })
        .collect::<Result<_>>()?;
    let maxb = batches.iter().chain(mixed.iter().map(|m| &m.0)).copied().max().unwrap();
    let longest = mixed.iter().map(|m| m.1).max().unwrap_or(0).max(prefill_len);
    let step_tokens = mixed.iter().map(|m| m.0 + m.1).max().unwrap_or(0).max(2048);
    // One slot past the decode rows for the mixed steps' prefill chunk.
    let opt = CudaOptions { max_running: Some(maxb.max(1) + usize::from(!mixed.is_empty())), max_seq_len: (ctx + iters + 16).max(longest + 16), max_step_tokens: step_tokens, ..Default::default() };
    let mut be = CudaBackend::load(&plan, None, &opt)?;
    let per = opt.max_seq_len.div_ceil(be.capacity().block_size);
    let vocab = be.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..longest.max(ctx) as u32).map(|i| (i * 7919 + 13) % 248_000 % vocab).collect();
    // Prefill timing.
    let blocks0 = stripe(0, per);
    prefill(&mut be, 0, &prompt[..prefill_len], &blocks0, 2048)?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        prefill(&mut be, 0, &prompt[..prefill_len], &blocks0, 2048)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("prefill {prefill_len} tokens: median {:.2} ms", times[times.len() / 2]);
    // Decode steps at ctx, per batch size (every slot holds the same context).
    let profile = std::env::var("KILN_PROFILE_DECODE").is_ok_and(|v| v == "1");
    for s in 0..maxb {
        prefill(&mut be, s, &prompt[..ctx], &stripe(s, per), 2048)?;
    }
    for &b in &batches {
        let all_blocks: Vec<Vec<u32>> = (0..b).map(|s| stripe(s, per)).collect();
        let mut ts = Vec::new();
        for it in 0..iters {
            let feeds: Vec<[u32; 1]> = (0..b).map(|s| [(s as u32 * 31 + it as u32) % vocab]).collect();
            let chunks: Vec<SeqChunk> = (0..b)
                .map(|s| SeqChunk { slot: s, start_pos: ctx, tokens: &feeds[s], blocks: &all_blocks[s], want: Want::Argmax { limit: 248_077.min(vocab as usize) }, allowed: None })
                .collect();
            // KILN_PROFILE_DECODE=1: the last step of each batch size between
            // cuProfilerStart/Stop, for `ncu --profile-from-start off` (device_run.sh).
            let prof = (profile && it + 1 == iters).then(cudarc::driver::Profiler::new).transpose()?;
            let t0 = Instant::now();
            be.forward(&chunks)?;
            ts.push(t0.elapsed().as_secs_f64() * 1e3);
            drop(prof);
        }
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("decode batch {b} ctx {ctx}: median {:.3} ms/step (greedy on device), min {:.3}", ts[ts.len() / 2], ts[0]);
    }
    let limit = 248_077.min(vocab as usize);
    for &(b, p) in &mixed {
        let (pslot, pblocks) = (maxb, stripe(maxb, per));
        let all_blocks: Vec<Vec<u32>> = (0..b).map(|s| stripe(s, per)).collect();
        let mut ts = Vec::new();
        for it in 0..10 {
            be.reset_slot(pslot)?;
            let feeds: Vec<[u32; 1]> = (0..b).map(|s| [(s as u32 * 31 + it as u32) % vocab]).collect();
            let mut chunks: Vec<SeqChunk> = (0..b)
                .map(|s| SeqChunk { slot: s, start_pos: ctx, tokens: &feeds[s], blocks: &all_blocks[s], want: Want::Argmax { limit }, allowed: None })
                .collect();
            chunks.push(SeqChunk { slot: pslot, start_pos: 0, tokens: &prompt[..p], blocks: &pblocks, want: Want::Argmax { limit }, allowed: None });
            let t0 = Instant::now();
            be.forward(&chunks)?;
            ts.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("mixed step: decode batch {b} ctx {ctx} + prefill {p}: median {:.3} ms/step, min {:.3}", ts[ts.len() / 2], ts[0]);
    }
    Ok(())
}

/// `kiln::backend::verify_check` on the GPU at each batch size: exactness, then the time
/// of one verify call of `drafts + 1` tokens per sequence against one plain decode step.
fn verify(plan: PathBuf, batch: String, drafts: usize, steps: usize, ctx: usize) -> Result<()> {
    let batches: Vec<usize> = batch.split(',').map(|b| b.trim().parse().context("--batch")).collect::<Result<_>>()?;
    let maxb = *batches.iter().max().context("--batch")?;
    // Room for the check (steps + prompts up to 3 * batch longer) and spec_tpot (65 tokens).
    let max_seq_len = ctx + maxb * 3 + steps.max(65) + 16;
    let opt = CudaOptions { max_running: Some(maxb), max_seq_len, spec_positions: drafts + 1, spec_rows: maxb, ..Default::default() };
    let mut be = CudaBackend::load(&plan, None, &opt)?;
    let per = max_seq_len.div_ceil(be.capacity().block_size);
    let vocab = be.config().vocab_size;
    let limit = 248_077.min(vocab);
    for &b in &batches {
        let prompts: Vec<Vec<u32>> = (0..b).map(|s| (0..(ctx + 3 * s) as u32).map(|i| (i * 7919 + 13 + 101 * s as u32) % limit as u32).collect()).collect();
        let blocks: Vec<Vec<u32>> = (0..b).map(|s| stripe(s, per)).collect();
        let r = kiln::backend::verify_check::check(&mut be, &prompts, &blocks, steps, drafts, limit)?;
        println!(
            "verify batch {b} ctx {ctx} drafts {drafts}: exact ({} cycles, {:.2} tokens per cycle); decode step median {:.3} ms, verify median {:.3} ms ({:.2}x a decode step)",
            r.cycles,
            r.accepted_tokens as f64 / (r.cycles * b).max(1) as f64,
            r.decode_secs * 1e3,
            r.verify_secs * 1e3,
            r.verify_secs / r.decode_secs
        );
    }
    spec_tpot(Box::new(be), ctx, drafts, limit)
}

/// Batch 1: time per output token of plain greedy decoding and of whole speculative
/// cycles (the MTP head's drafts when the plan has one, else none) at full and at zero
/// acceptance (forced drafts), each from the time of 65 tokens less that of 1 (the
/// prefill); every output must equal plain greedy.
fn spec_tpot(mut be: Box<dyn Backend>, ctx: usize, drafts: usize, limit: usize) -> Result<()> {
    use kiln::backend::forced_draft::{DraftMode, ForcedDraft};
    use kiln::generate::{greedy, greedy_speculative};
    let prompt: Vec<u32> = (0..ctx as u32).map(|i| (i * 104_729 + 7) % limit as u32).collect();
    let n = 65;
    let timed = |f: &mut dyn FnMut(usize) -> Result<Vec<u32>>| -> Result<(f64, Vec<u32>)> {
        let t0 = Instant::now();
        f(1)?;
        let one = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let out = f(n)?;
        Ok(((t1.elapsed().as_secs_f64() - one) / (n - 1) as f64, out))
    };
    let (plain_tpot, plain) = timed(&mut |k| greedy(be.as_mut(), &prompt, k, &[], limit))?;
    println!("batch 1 ctx {ctx}: plain greedy {:.3} ms per token", plain_tpot * 1e3);
    let known = vec![prompt.iter().chain(&plain).copied().collect::<Vec<u32>>()];
    for mode in [DraftMode::Oracle, DraftMode::Adversarial] {
        let mut fd = ForcedDraft::new(be, mode, known.clone());
        let (tpot, out) = timed(&mut |k| greedy_speculative(&mut fd, &prompt, k, &[], limit, drafts).map(|r| r.0))?;
        ensure!(out == plain, "speculative output ({mode:?} drafts) differs from plain greedy");
        println!(
            "batch 1 ctx {ctx}: speculative, {mode:?} drafts ({drafts} per cycle): {:.3} ms per token ({:.2}x plain), output identical",
            tpot * 1e3,
            tpot / plain_tpot
        );
        be = fd.into_inner();
    }
    if be.supports_speculation() {
        // The MTP head's own drafts through `speculate` (the scheduler's call: on the cuda
        // backend the whole cycle with one read-back). Random weights accept about nothing,
        // so this is the time of a cycle.
        let mut counts = Default::default();
        let (tpot, out) = timed(&mut |k| {
            let (out, c) = greedy_speculative(be.as_mut(), &prompt, k, &[], limit, drafts)?;
            counts = c;
            Ok(out)
        })?;
        ensure!(out == plain, "speculative output (MTP drafts) differs from plain greedy");
        let per_cycle = counts.accept_length();
        println!(
            "batch 1 ctx {ctx}: speculative, MTP drafts ({drafts} per cycle): {:.3} ms per token, {per_cycle:.2} tokens per cycle, {:.3} ms per cycle, output identical",
            tpot * 1e3,
            tpot * per_cycle * 1e3
        );
        draft_times(be.as_mut(), &prompt, &plain, drafts, limit)?;
    }
    Ok(())
}

/// Batch 1: the time of one draft call (`drafts` chained MTP steps) over the whole
/// vocabulary and over the first 32768 ids (`--speculative-draft-vocab 32768`).
fn draft_times(be: &mut dyn Backend, prompt: &[u32], plain: &[u32], drafts: usize, limit: usize) -> Result<()> {
    let blocks: Vec<u32> = (0..(prompt.len() + drafts + 16).div_ceil(be.capacity().block_size) as u32).collect();
    be.reset_slot(0)?;
    be.forward(&[SeqChunk { slot: 0, start_pos: 0, tokens: prompt, blocks: &blocks, want: Want::Nothing, allowed: None }])?;
    for vocab in [limit, 32768.min(limit)] {
        let chunk = kiln::backend::DraftChunk { slot: 0, pos: prompt.len(), next: plain[0], steps: drafts, blocks: &blocks, limit: vocab };
        let mut ts = Vec::new();
        for _ in 0..20 {
            let t0 = Instant::now();
            be.draft(std::slice::from_ref(&chunk))?;
            ts.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        ts.sort_by(f64::total_cmp);
        println!("batch 1: a draft of {drafts} MTP steps over the first {vocab} ids: median {:.3} ms", ts[ts.len() / 2]);
    }
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    match Cli::parse().cmd {
        Cmd::Logits { plan, cases, out } => logits(plan, cases, out),
        Cmd::Bench { plan, batch, ctx, prefill, iters, mixed } => bench(plan, batch, ctx, prefill, iters, mixed),
        Cmd::Verify { plan, batch, drafts, steps, ctx } => verify(plan, batch, drafts, steps, ctx),
        Cmd::Timeline { plan, batch, ctx, steps, prefill, verify_drafts, out, blocks } => timeline(plan, batch, ctx, steps, prefill, verify_drafts, out, blocks),
    }
}

/// `kiln-eval timeline`: per batch size, the decode graph captured with the launch log on
/// (to name the launches), then `steps` steps each timed block by block; the step with
/// the median span is printed launch by launch and summed per kernel. With `prefill`, a
/// prefill of that many tokens in one chunk (launch by launch) the same way.
#[allow(clippy::too_many_arguments)]
fn timeline(plan: PathBuf, batch: String, ctx: usize, steps: usize, prefill_len: usize, drafts: usize, out: Option<PathBuf>, blocks_out: Option<PathBuf>) -> Result<()> {
    use kiln::backend::cuda::timeline::{block_times, launches, rows, BlockRecord, Launch, Row};
    let batches: Vec<usize> = batch.split(',').map(|b| b.trim().parse().context("--batch")).collect::<Result<_>>()?;
    let maxb = *batches.iter().max().context("--batch")?;
    // A verify step commits what it accepts, so each timed one moves its sequences on.
    let max_seq_len = (ctx + steps + 32 + (drafts + 1) * (steps + 2)).max(prefill_len + 16);
    let mut opt = CudaOptions { max_running: Some(maxb), max_seq_len, max_step_tokens: prefill_len.max(2048), ..Default::default() };
    if drafts > 0 {
        (opt.spec_positions, opt.spec_rows) = (drafts + 1, maxb);
    }
    let mut be = CudaBackend::load(&plan, None, &opt)?;
    be.take_timeline()?;
    let per = opt.max_seq_len.div_ceil(be.capacity().block_size);
    let vocab = be.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..max_seq_len as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    for s in 0..maxb {
        prefill(&mut be, s, &prompt[..ctx], &stripe(s, per), 2048)?;
    }
    let site = |m: u32, l: u32| format!("{}:{l}", kiln::backend::cuda::compile::SOURCES.get(m as usize).map_or("?", |s| s.0));
    let mut json = out.as_ref().map(std::fs::File::create).transpose()?.map(std::io::BufWriter::new);
    let mut block_json = blocks_out.as_ref().map(std::fs::File::create).transpose()?.map(std::io::BufWriter::new);
    // Times `runs` repetitions of `run` with the launches named by `log`; prints the median.
    let mut report = |title: String, tag: &str, log: &[kiln::backend::cuda::timeline::LaunchInfo], be: &mut CudaBackend, runs: usize, run: &mut dyn FnMut(&mut CudaBackend, usize) -> Result<()>| -> Result<()> {
        be.take_timeline()?;
        // Per run: its span, rows, and (for --blocks) its records and launches.
        let mut timed: Vec<(f64, Vec<Row>, Vec<BlockRecord>, Vec<Launch>)> = Vec::new();
        for it in 0..runs.max(1) {
            run(be, it)?;
            let (records, lost) = be.take_timeline()?;
            ensure!(!lost, "{title}: the timeline buffer overflowed");
            let ls = launches(&records);
            let r = rows(&ls, log, site);
            let (records, ls) = if block_json.is_some() { (records, ls) } else { (Vec::new(), Vec::new()) };
            timed.push((r.iter().map(|x| x.advance_us).sum(), r, records, ls));
        }
        timed.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (span, r, records, ls) = &timed[timed.len() / 2];
        if let Some(f) = block_json.as_mut() {
            for b in block_times(records, ls) {
                let v = serde_json::json!({"run": tag, "i": b.launch, "kernel": r[b.launch].name, "sm": b.sm, "block": b.block,
                    "release_us": b.release_us, "end_us": b.end_us});
                writeln!(f, "{v}")?;
            }
        }
        let handoffs: f64 = r.iter().map(|x| x.handoff_us).sum();
        println!("{title}: span {span:.1} us over {} launches, {handoffs:.1} us of it in hand-offs (median of {}; {} launches logged)", r.len(), timed.len(), log.len());
        println!("  (p10/p50/p90: the blocks' ends, and last-rel the last block's release, in us after the first release)");
        println!("  {:>4} {:<34} {:>6} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>6} {:>8} {:>6} {:>6} {:>6}", "#", "kernel", "blocks", "enter", "release", "end", "advance", "busy", "handoff", "GB/s", "last-rel", "p10", "p50", "p90");
        for (i, x) in r.iter().enumerate() {
            let gbs = if x.weight_bytes > 0 && x.advance_us > 0.0 { format!("{:.0}", x.weight_bytes as f64 / x.advance_us / 1e3) } else { String::new() };
            println!(
                "  {i:>4} {:<34} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>8.1} {:>8.1} {:>7.1} {gbs:>6} {:>8.1} {:>6.1} {:>6.1} {:>6.1}",
                x.name, x.blocks, x.enter_us, x.release_us, x.end_us, x.advance_us, x.busy_us, x.handoff_us, x.last_release_from_first_us, x.end_q_us[0], x.end_q_us[1], x.end_q_us[2]
            );
            if let Some(f) = json.as_mut() {
                let v = serde_json::json!({"run": tag, "i": i, "kernel": x.name, "blocks": x.blocks, "enter_us": x.enter_us, "release_us": x.release_us,
                    "end_us": x.end_us, "advance_us": x.advance_us, "busy_us": x.busy_us, "handoff_us": x.handoff_us, "weight_bytes": x.weight_bytes,
                    "last_release_us": x.last_release_from_first_us, "end_p10_us": x.end_q_us[0], "end_p50_us": x.end_q_us[1], "end_p90_us": x.end_q_us[2]});
                writeln!(f, "{v}")?;
            }
        }
        println!("  per kernel: launches, step time advanced (share), busy, hand-offs, weight GB/s over the advance");
        for k in kiln::backend::cuda::timeline::by_kernel(r) {
            let gbs = if k.weight_gbs > 0.0 { format!("{:.0}", k.weight_gbs) } else { String::new() };
            println!(
                "    {:<28} {:>4} {:>9.1} us ({:>4.1} %) {:>9.1} us {:>8.1} us {gbs:>6}",
                k.kernel, k.launches, k.advance_us, 100.0 * k.advance_us / span, k.busy_us, k.handoff_us
            );
        }
        Ok(())
    };
    for &b in &batches {
        let blocks: Vec<Vec<u32>> = (0..b).map(|s| stripe(s, per)).collect();
        let mut step = |be: &mut CudaBackend, it: usize| -> Result<()> {
            let feeds: Vec<[u32; 1]> = (0..b).map(|s| [(s as u32 * 31 + it as u32) % vocab]).collect();
            let chunks: Vec<SeqChunk> = (0..b)
                .map(|s| SeqChunk { slot: s, start_pos: ctx, tokens: &feeds[s], blocks: &blocks[s], want: Want::Argmax { limit: vocab as usize }, allowed: None })
                .collect();
            be.forward(&chunks).map(|_| ())
        };
        // The first step captures this bucket's graph: its launches, in graph order.
        be.kernels().record_launches(true);
        step(&mut be, 0)?;
        let log = be.kernels().record_launches(false);
        step(&mut be, 1)?;
        report(format!("decode batch {b} ctx {ctx}"), &format!("decode{b}"), &log, &mut be, steps, &mut step)?;
        if drafts > 0 {
            // Drafts that are all wrong (any id but the greedy one would do): each verify
            // accepts one token, so the sequences move on by one per run.
            let mut fed = vec![ctx; b];
            let limit = vocab as usize;
            let mut verify = |be: &mut CudaBackend, it: usize| -> Result<()> {
                let toks: Vec<Vec<u32>> = (0..b).map(|s| (0..=drafts as u32).map(|q| (s as u32 * 31 + it as u32 * 7 + q) % vocab).collect()).collect();
                let chunks: Vec<VerifyChunk> = (0..b).map(|s| VerifyChunk { slot: s, start_pos: fed[s], tokens: &toks[s], blocks: &blocks[s], limit }).collect();
                for (s, v) in be.verify(&chunks)?.iter().enumerate() {
                    fed[s] += v.accepted;
                }
                Ok(())
            };
            be.kernels().record_launches(true);
            verify(&mut be, 0)?;
            let log = be.kernels().record_launches(false);
            verify(&mut be, 1)?;
            report(format!("verify batch {b} ctx {ctx} drafts {drafts}"), &format!("verify{b}"), &log, &mut be, steps, &mut verify)?;
        }
    }
    if prefill_len > 0 {
        // Launch by launch (a prefill chunk has no graph): the log of each run is its own.
        let blocks = stripe(0, per);
        let mut chunk = |be: &mut CudaBackend, _it: usize| -> Result<()> {
            be.reset_slot(0)?;
            let c = SeqChunk { slot: 0, start_pos: 0, tokens: &prompt[..prefill_len], blocks: &blocks, want: Want::Last, allowed: None };
            be.forward(&[c]).map(|_| ())
        };
        be.kernels().record_launches(true);
        chunk(&mut be, 0)?;
        let log = be.kernels().record_launches(false);
        report(format!("prefill {prefill_len} tokens (one chunk; cuBLASLt GEMMs record nothing: they show in the next launch's advance)"), &format!("prefill{prefill_len}"), &log, &mut be, steps, &mut chunk)?;
    }
    Ok(())
}
