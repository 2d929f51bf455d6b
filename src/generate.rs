//! Direct greedy generation on one backend slot, without the scheduler: the library
//! path that `kiln generate` uses and that the server's output is checked against; plain,
//! or speculative with the MTP head (the same tokens, fewer main-model steps).

use crate::backend::{Backend, DraftChunk, SeqChunk, VerifyChunk, Want};
use crate::backend::cpu::ops::argmax;
use crate::scheduler::SpecCounts;
use anyhow::{ensure, Context, Result};
use std::time::Instant;

/// Greedy-decodes up to `max_new_tokens` after `prompt` in slot 0 (which it resets),
/// stopping after the first token in `eos`. Returns the new tokens (EOS included, as
/// SGLang counts it). Ids at or above `vocab_limit` (the embedding's padding rows,
/// beyond the tokenizer's vocabulary) never win.
pub fn greedy(backend: &mut dyn Backend, prompt: &[u32], max_new_tokens: usize, eos: &[u32], vocab_limit: usize) -> Result<Vec<u32>> {
    let blocks = prepare(backend, prompt, max_new_tokens)?;
    let mut out = Vec::with_capacity(max_new_tokens);
    let mut pos = 0;
    let mut feed: Vec<u32> = prompt.to_vec();
    while out.len() < max_new_tokens {
        let chunk = SeqChunk { slot: 0, start_pos: pos, tokens: &feed, blocks: &blocks, want: Want::Argmax { limit: vocab_limit }, allowed: None };
        let out0 = backend.forward(&[chunk])?.remove(0);
        pos += feed.len();
        let next = match out0.argmax {
            Some(t) => t,
            None => argmax(&out0.last().context("the backend returned neither a token nor logits")?[..vocab_limit]) as u32,
        };
        out.push(next);
        if eos.contains(&next) {
            break;
        }
        feed = vec![next];
    }
    Ok(out)
}

/// Checks that the prompt and its output fit slot 0, resets it, and returns its blocks.
fn prepare(backend: &mut dyn Backend, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
    ensure!(!prompt.is_empty(), "greedy: empty prompt");
    let cap = backend.capacity();
    ensure!(
        prompt.len() + max_new_tokens <= cap.max_seq_len,
        "greedy: prompt ({}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len {}",
        prompt.len(),
        cap.max_seq_len
    );
    let needed_blocks = (prompt.len() + max_new_tokens).div_ceil(cap.block_size);
    ensure!(needed_blocks <= cap.kv_blocks, "greedy: needs {needed_blocks} KV blocks, pool has {}", cap.kv_blocks);
    backend.reset_slot(0)?;
    Ok((0..needed_blocks as u32).collect())
}

/// `greedy` with speculation: each cycle drafts up to `draft_steps` tokens with the MTP
/// head and verifies them in one step; the output is exactly `greedy`'s. Also returns the
/// speculation counters.
pub fn greedy_speculative(
    backend: &mut dyn Backend,
    prompt: &[u32],
    max_new_tokens: usize,
    eos: &[u32],
    vocab_limit: usize,
    draft_steps: usize,
) -> Result<(Vec<u32>, SpecCounts)> {
    ensure!(backend.supports_speculation(), "greedy_speculative: the {} backend has no MTP head to draft with", backend.name());
    let blocks = prepare(backend, prompt, max_new_tokens)?;
    let mut counts = SpecCounts::default();
    let mut out = Vec::with_capacity(max_new_tokens);
    if max_new_tokens == 0 {
        return Ok((out, counts));
    }
    let first = backend.forward(&[SeqChunk { slot: 0, start_pos: 0, tokens: prompt, blocks: &blocks, want: Want::Argmax { limit: vocab_limit }, allowed: None }])?.remove(0);
    let next = match first.argmax {
        Some(t) => t,
        None => argmax(&first.last().context("the backend returned neither a token nor logits")?[..vocab_limit]) as u32,
    };
    out.push(next);
    let mut pos = prompt.len();
    while out.len() < max_new_tokens && !eos.contains(out.last().expect("one token at least")) {
        let next = *out.last().expect("one token at least");
        // A cycle emits up to k + 1 tokens: stay within max_new_tokens.
        let k = draft_steps.min(max_new_tokens - out.len() - 1);
        let v = if k == 0 {
            backend.verify(&[VerifyChunk { slot: 0, start_pos: pos, tokens: &[next], blocks: &blocks, limit: vocab_limit }])?.remove(0)
        } else {
            backend.speculate(&[DraftChunk { slot: 0, pos, next, steps: k, blocks: &blocks, limit: vocab_limit }], vocab_limit)?.remove(0)
        };
        counts.record(k, v.accepted);
        pos += v.accepted;
        for &t in v.emitted() {
            out.push(t);
            if eos.contains(&t) {
                break;
            }
        }
    }
    Ok((out, counts))
}

/// A start-up trial of speculation (`kiln serve --speculative-algorithm auto`): the same
/// prompt decoded plainly and with speculation on slot 0, each timed after a short warm-up
/// of its path (graph captures and first-use costs do not count).
#[derive(Clone, Debug)]
pub struct SpeculationTrial {
    pub tokens: usize,
    pub plain_s: f64,
    pub spec_s: f64,
    /// Whether speculation gave exactly plain decoding's tokens (it must).
    pub identical: bool,
    pub counts: SpecCounts,
}

/// Speculation must be at least this much faster per token in the trial to be turned on.
pub const SPEC_TRIAL_MARGIN: f64 = 0.9;
/// Fewer tokens than this (an early EOS) are too few to time: the trial says no.
pub const SPEC_TRIAL_MIN_TOKENS: usize = 16;

impl SpeculationTrial {
    /// On when speculation reproduced plain decoding over enough tokens to time and beat
    /// it by the margin.
    pub fn pays(&self) -> bool {
        self.identical && self.tokens >= SPEC_TRIAL_MIN_TOKENS && self.spec_s < SPEC_TRIAL_MARGIN * self.plain_s
    }

    /// The decision and its numbers in one sentence ("on: ..." or "off: ...").
    pub fn summary(&self) -> String {
        let per_tok = |secs: f64| secs * 1e3 / self.tokens.max(1) as f64;
        format!(
            "{}: {} tokens at concurrency 1 took {:.2} ms per token plainly and {:.2} speculatively ({:.2} tokens per verify){}",
            if self.pays() { "on" } else { "off" },
            self.tokens,
            per_tok(self.plain_s),
            per_tok(self.spec_s),
            self.counts.accept_length(),
            if self.identical { "" } else { "; the speculative tokens DIFFERED from plain decoding's" }
        )
    }
}

/// Runs the trial: `new_tokens` after `prompt`, plainly and with `draft_steps` drafts per cycle.
pub fn speculation_trial(backend: &mut dyn Backend, prompt: &[u32], new_tokens: usize, eos: &[u32], vocab_limit: usize, draft_steps: usize) -> Result<SpeculationTrial> {
    let warm = new_tokens.min(8);
    greedy(backend, prompt, warm, eos, vocab_limit)?;
    greedy_speculative(backend, prompt, warm, eos, vocab_limit, draft_steps)?;
    let t = Instant::now();
    let plain = greedy(backend, prompt, new_tokens, eos, vocab_limit)?;
    let plain_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (spec, counts) = greedy_speculative(backend, prompt, new_tokens, eos, vocab_limit, draft_steps)?;
    let spec_s = t.elapsed().as_secs_f64();
    Ok(SpeculationTrial { tokens: plain.len(), plain_s, spec_s, identical: plain == spec, counts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trial_turns_speculation_on_only_when_exact_and_faster() {
        let t = |plain_s: f64, spec_s: f64, identical: bool| SpeculationTrial { tokens: 64, plain_s, spec_s, identical, counts: SpecCounts::default() };
        assert!(t(0.32, 0.15, true).pays());
        assert!(!t(0.32, 0.30, true).pays(), "within the margin: plain decoding");
        assert!(!t(0.32, 0.40, true).pays());
        assert!(!t(0.32, 0.15, false).pays(), "a speculative output that differs never turns it on");
        assert!(!SpeculationTrial { tokens: 0, ..t(0.0, 0.0, true) }.pays());
        assert!(!SpeculationTrial { tokens: SPEC_TRIAL_MIN_TOKENS - 1, ..t(0.32, 0.15, true) }.pays(), "an early EOS is too few tokens to time");
        assert!(t(0.32, 0.15, true).summary().starts_with("on: 64 tokens"));
        assert!(t(0.32, 0.15, false).summary().contains("DIFFERED"));
    }

    #[test]
    fn the_trial_on_the_demo_model_gives_plain_decodings_tokens() {
        let (cfg, w) = crate::demo::demo_weights();
        let cap = crate::backend::Capacity { slots: 1, block_size: 16, kv_blocks: 16, max_seq_len: 256 };
        let mut be = crate::backend::cpu::CpuBackend::new(cfg, w, cap).unwrap();
        let vocab = be.config().vocab_size;
        let trial = speculation_trial(&mut be, &[1, 2, 3, 4, 5], 24, &[], vocab, 3).unwrap();
        assert_eq!(trial.tokens, 24);
        assert!(trial.identical, "speculation changed the demo model's greedy tokens");
        assert!(trial.counts.verify_ct > 0 && trial.plain_s > 0.0 && trial.spec_s > 0.0, "{trial:?}");
    }
}
