//! Direct greedy generation on one backend slot, without the scheduler: the library
//! path that `kiln generate` uses and that the server's output is checked against; plain,
//! or speculative with the MTP head (the same tokens, fewer main-model steps).

use crate::backend::{Backend, DraftChunk, SeqChunk, VerifyChunk, Want};
use crate::backend::cpu::ops::argmax;
use crate::scheduler::SpecCounts;
use anyhow::{ensure, Context, Result};

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
        let fed: Vec<u32> = if k == 0 {
            vec![next]
        } else {
            let d = backend.draft(&[DraftChunk { slot: 0, pos, next, steps: k, blocks: &blocks, limit: vocab_limit }])?.remove(0);
            std::iter::once(next).chain(d).collect()
        };
        let v = backend.verify(&[VerifyChunk { slot: 0, start_pos: pos, tokens: &fed, blocks: &blocks, limit: vocab_limit }])?.remove(0);
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
