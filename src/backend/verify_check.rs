//! An end-to-end exactness check of a backend's `verify` against its own plain decoding,
//! for any backend: the CPU backend runs it in CI, `kiln-eval verify` and
//! tests/cuda_backend.rs run it on the GPU.
//!
//! Per sequence: plain greedy decoding gives tokens t_0..t_n and the logits of every step.
//! Then, from the same prompt, cycles verify `[t_f, d_1..d_k]` where the first `m` drafts
//! are right (t_{f+1}..t_{f+m}) and the rest wrong, with m cycling 0..=k (and differing
//! between the sequences of one call, so one verify accepts different lengths). Every
//! cycle must accept exactly m + 1 tokens (k + 1 when every draft is right) and return
//! the plain greedy tokens; at the end, one plain decode step from the committed state
//! must give logits bit-identical to plain decoding's at that position.

use super::{Backend, SeqChunk, VerifyChunk, Want};
use anyhow::{ensure, Context, Result};
use std::time::Instant;

/// What `check` measured (seconds are medians over the runs).
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub cycles: usize,
    pub accepted_tokens: usize,
    /// One plain decode step of the whole batch.
    pub decode_secs: f64,
    /// One verify call of the whole batch.
    pub verify_secs: f64,
}

/// The greedy token of a logits row over ids below `limit` (first index wins ties).
fn greedy(row: &[f32], limit: usize) -> u32 {
    crate::backend::cpu::ops::argmax(&row[..limit.min(row.len())]) as u32
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the check on slots `0..prompts.len()` (block tables `blocks[s]`), `steps` plain
/// tokens per sequence, `drafts` (k) drafts per verify.
pub fn check(be: &mut dyn Backend, prompts: &[Vec<u32>], blocks: &[Vec<u32>], steps: usize, drafts: usize, limit: usize) -> Result<VerifyReport> {
    let n = prompts.len();
    ensure!(n > 0 && blocks.len() == n && steps > drafts, "verify check: one block table per prompt, and more steps than drafts");
    let feed = |be: &mut dyn Backend, rows: &[(usize, usize, &[u32])], want: Want| -> Result<Vec<Vec<f32>>> {
        let chunks: Vec<SeqChunk> = rows.iter().map(|&(s, start, tokens)| SeqChunk { slot: s, start_pos: start, tokens, blocks: &blocks[s], want, allowed: None }).collect();
        Ok(be.forward(&chunks)?.into_iter().map(|c| c.data).collect())
    };
    let prefill_all = |be: &mut dyn Backend| -> Result<Vec<u32>> {
        let mut first = Vec::with_capacity(n);
        for (s, p) in prompts.iter().enumerate() {
            be.reset_slot(s)?;
            first.push(greedy(&feed(be, &[(s, 0, p)], Want::Last)?[0], limit));
        }
        Ok(first)
    };
    // Plain decoding: tokens[s][j] = t_j, logits[s][j] = the row that gave t_{j+1}.
    let mut tokens: Vec<Vec<u32>> = prefill_all(be)?.into_iter().map(|t| vec![t]).collect();
    let mut logits: Vec<Vec<Vec<f32>>> = vec![Vec::new(); n];
    let mut decode_times = Vec::new();
    for j in 0..steps {
        let last: Vec<[u32; 1]> = tokens.iter().map(|t| [t[j]]).collect();
        let rows: Vec<(usize, usize, &[u32])> = (0..n).map(|s| (s, prompts[s].len() + j, &last[s][..])).collect();
        let t0 = Instant::now();
        let out = feed(be, &rows, Want::Last)?;
        decode_times.push(t0.elapsed().as_secs_f64());
        for (s, row) in out.into_iter().enumerate() {
            tokens[s].push(greedy(&row, limit));
            logits[s].push(row);
        }
    }
    // Speculative cycles from the same prompts.
    prefill_all(be)?;
    let mut fed = vec![0usize; n]; // tokens after the prompt the slot holds
    let mut report = VerifyReport::default();
    let mut verify_times = Vec::new();
    loop {
        // A cycle may keep drafts + 1 tokens; the final check needs plain decoding's logits
        // at the position after (index fed < steps).
        let live: Vec<usize> = (0..n).filter(|&s| fed[s] + drafts + 1 < steps).collect();
        if live.is_empty() {
            break;
        }
        let right: Vec<usize> = live.iter().map(|&s| (report.cycles + s) % (drafts + 1)).collect();
        let inputs: Vec<Vec<u32>> = live
            .iter()
            .zip(&right)
            .map(|(&s, &m)| {
                let t = &tokens[s][fed[s]..=fed[s] + drafts];
                // A wrong draft is any other id below the limit.
                t.iter().enumerate().map(|(i, &x)| if i <= m { x } else { (x + 1) % limit as u32 }).collect()
            })
            .collect();
        let chunks: Vec<VerifyChunk> = live
            .iter()
            .zip(&inputs)
            .map(|(&s, f)| VerifyChunk { slot: s, start_pos: prompts[s].len() + fed[s], tokens: f, blocks: &blocks[s], limit })
            .collect();
        let t0 = Instant::now();
        let out = be.verify(&chunks)?;
        verify_times.push(t0.elapsed().as_secs_f64());
        ensure!(out.len() == live.len(), "verify returned {} results for {} sequences", out.len(), live.len());
        for ((&s, &m), v) in live.iter().zip(&right).zip(&out) {
            let want = &tokens[s][fed[s] + 1..=fed[s] + drafts + 1];
            let at = format!("sequence {s}, cycle {}, {m} of {drafts} drafts right", report.cycles);
            let expect_acc = if m == drafts { drafts + 1 } else { m + 1 };
            ensure!(v.accepted == expect_acc, "{at}: accepted {} tokens, expected {expect_acc}", v.accepted);
            ensure!(v.greedy[..v.accepted] == want[..v.accepted], "{at}: greedy tokens {:?} differ from plain decoding's {:?}", v.greedy, want);
            fed[s] += v.accepted;
            report.accepted_tokens += v.accepted;
        }
        report.cycles += 1;
    }
    // One plain step from every committed state: bit-identical to plain decoding there.
    let last: Vec<[u32; 1]> = (0..n).map(|s| [tokens[s][fed[s]]]).collect();
    let rows: Vec<(usize, usize, &[u32])> = (0..n).map(|s| (s, prompts[s].len() + fed[s], &last[s][..])).collect();
    let after = feed(be, &rows, Want::Last)?;
    for (s, row) in after.iter().enumerate() {
        let plain = logits[s].get(fed[s]).context("verify check: ran past plain decoding")?;
        let same = row.len() == plain.len() && row.iter().zip(plain).all(|(a, b)| a.to_bits() == b.to_bits());
        let diff = row.iter().zip(plain).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        ensure!(same, "sequence {s}: the step after {} verified tokens is not bit-identical to plain decoding (max abs logit difference {diff:.3e})", fed[s]);
    }
    report.decode_secs = median(decode_times);
    report.verify_secs = median(verify_times);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::{Capacity, ChunkLogits, Verified};
    use crate::config::ModelConfig;
    use crate::demo::{demo_config, random_weights};

    const V: usize = 300;

    fn cpu(slots: usize) -> CpuBackend {
        let cfg = ModelConfig { vocab_size: V, ..demo_config() };
        let w = random_weights(&cfg, 5);
        CpuBackend::new(cfg, w, Capacity { slots, block_size: 16, kv_blocks: slots * 8, max_seq_len: 128 }).unwrap()
    }

    fn inputs(n: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
        let prompts = (0..n).map(|s| (0..5 + 3 * s as u32).map(|i| (i * 37 + 11 * s as u32 + 1) % V as u32).collect()).collect();
        let blocks = (0..n).map(|s| (s as u32 * 8..(s as u32 + 1) * 8).collect()).collect();
        (prompts, blocks)
    }

    #[test]
    fn the_cpu_backend_verifies_exactly() {
        let (prompts, blocks) = inputs(3);
        let r = check(&mut cpu(3), &prompts, &blocks, 14, 3, V).unwrap();
        assert!(r.cycles >= 4 && r.accepted_tokens > r.cycles, "{r:?}");
    }

    /// A backend whose commit keeps one rejected position's state: the check must fail.
    struct KeepsOneTooMany(CpuBackend);

    impl Backend for KeepsOneTooMany {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn config(&self) -> &ModelConfig {
            self.0.config()
        }
        fn capacity(&self) -> Capacity {
            self.0.capacity()
        }
        fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<ChunkLogits>> {
            self.0.forward(chunks)
        }
        fn reset_slot(&mut self, slot: usize) -> Result<()> {
            self.0.reset_slot(slot)
        }
        fn verify(&mut self, seqs: &[VerifyChunk<'_>]) -> Result<Vec<Verified>> {
            // Verifies one more position than asked to keep when a draft was rejected:
            // the plain step afterwards then starts from the wrong state.
            let mut out = self.0.verify(seqs)?;
            for (c, v) in seqs.iter().zip(&mut out) {
                if v.accepted < c.tokens.len() {
                    let extra = [c.tokens[v.accepted]];
                    let chunk = SeqChunk { slot: c.slot, start_pos: c.start_pos + v.accepted, tokens: &extra, blocks: c.blocks, want: Want::Nothing, allowed: None };
                    self.0.forward(&[chunk])?;
                    // ...and rolls the length back so positions still line up.
                    self.0.truncate_for_test(c.slot, c.start_pos + v.accepted)?;
                }
            }
            Ok(out)
        }
    }

    #[test]
    fn a_commit_that_keeps_a_rejected_position_fails_the_check() {
        let (prompts, blocks) = inputs(2);
        let err = check(&mut KeepsOneTooMany(cpu(2)), &prompts, &blocks, 14, 3, V).unwrap_err().to_string();
        assert!(err.contains("not bit-identical") || err.contains("differ from plain"), "{err}");
    }
}
