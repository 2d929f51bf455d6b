//! Direct greedy generation on one backend slot, without the scheduler: the library
//! path that `kiln generate` uses and that the server's output is checked against.

use crate::backend::{Backend, SeqChunk, Want};
use crate::backend::cpu::ops::argmax;
use anyhow::{ensure, Context, Result};

/// Greedy-decodes up to `max_new_tokens` after `prompt` in slot 0 (which it resets),
/// stopping after the first token in `eos`. Returns the new tokens (EOS included, as
/// SGLang counts it). Ids at or above `vocab_limit` (the embedding's padding rows,
/// beyond the tokenizer's vocabulary) never win.
pub fn greedy(backend: &mut dyn Backend, prompt: &[u32], max_new_tokens: usize, eos: &[u32], vocab_limit: usize) -> Result<Vec<u32>> {
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
    let blocks: Vec<u32> = (0..needed_blocks as u32).collect();
    backend.reset_slot(0)?;
    let mut out = Vec::with_capacity(max_new_tokens);
    let mut pos = 0;
    let mut feed: Vec<u32> = prompt.to_vec();
    while out.len() < max_new_tokens {
        let chunk = SeqChunk { slot: 0, start_pos: pos, tokens: &feed, blocks: &blocks, want: Want::Argmax { limit: vocab_limit } };
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
