//! Speculation on the CPU backend: verified positions are bit-identical to decode steps,
//! the committed state equals the state of plain decoding whatever was accepted, and the
//! MTP cache gives the same drafts however its catch-ups were cut.

use super::super::{Backend, Capacity, CpuBackend, SeqChunk, Want};
use crate::backend::{DraftChunk, VerifyChunk};
use crate::config::ModelConfig;
use crate::demo::{demo_config, random_weights};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const V: usize = 300;
/// Slot 0's KV pages: enough for max_seq_len 512 in blocks of 16.
const BLOCKS: [u32; 32] = {
    let mut b = [0u32; 32];
    let mut i = 0;
    while i < 32 {
        b[i] = i as u32;
        i += 1;
    }
    b
};

fn model(slots: usize) -> CpuBackend {
    let cfg = ModelConfig { vocab_size: V, ..demo_config() };
    assert_eq!(cfg.mtp_num_layers, 1);
    let w = random_weights(&cfg, 11);
    CpuBackend::new(cfg, w, Capacity { slots, block_size: 16, kv_blocks: 64, max_seq_len: 512 }).unwrap()
}

fn prompt(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(0..V as u32)).collect()
}

fn feed(b: &mut CpuBackend, slot: usize, start: usize, tokens: &[u32], want: Want) -> Vec<f32> {
    let c = SeqChunk { slot, start_pos: start, tokens, blocks: &BLOCKS, want, allowed: None };
    b.forward(&[c]).unwrap().remove(0).data
}

/// Plain greedy: prefill, then `n` single-token decode steps. Returns (tokens, logits of
/// every decode step's output).
fn plain(b: &mut CpuBackend, p: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut row = feed(b, 0, 0, p, Want::Last);
    let (mut toks, mut rows) = (vec![], vec![]);
    for i in 0..n {
        let t = crate::backend::cpu::ops::argmax(&row) as u32;
        toks.push(t);
        row = feed(b, 0, p.len() + i, &[t], Want::Last);
        rows.push(row.clone());
    }
    (toks, rows)
}

fn verify(b: &mut CpuBackend, start: usize, tokens: &[u32]) -> crate::backend::Verified {
    b.verify(&[VerifyChunk { slot: 0, start_pos: start, tokens, blocks: &BLOCKS, limit: V }]).unwrap().remove(0)
}

#[test]
fn verify_is_bit_identical_to_decode_and_commits_exactly_the_accepted_tokens() {
    let p = prompt(37, 1);
    let mut reference = model(1);
    let (want, rows) = plain(&mut reference, &p, 12);
    // Drafts right for the first `good` positions, then wrong: every acceptance length.
    for good in 0..=3usize {
        let mut b = model(1);
        feed(&mut b, 0, 0, &p, Want::Last);
        let mut fed = vec![want[0]];
        for (j, &t) in want[1..4].iter().enumerate() {
            fed.push(if j < good { t } else { (t + 1) % V as u32 });
        }
        let v = verify(&mut b, p.len(), &fed);
        assert_eq!(v.accepted, good + 1, "good drafts {good}");
        // Every position's greedy token is what decode gave there, until the first wrong draft.
        assert_eq!(&v.greedy[..good + 1], &want[1..good + 2]);
        assert_eq!(v.emitted(), &want[1..good + 2]);
        // The slot now holds the prompt + the accepted tokens, with the state plain decoding
        // had: every following decode step's logits are equal bit for bit.
        for (i, &t) in want[good + 1..].iter().enumerate() {
            let row = feed(&mut b, 0, p.len() + v.accepted + i, &[t], Want::Last);
            assert_eq!(row, rows[good + 1 + i], "good {good}: decode step {i} after the commit differs");
        }
    }
}

#[test]
fn drafts_leave_the_main_state_alone_and_do_not_depend_on_how_the_cache_caught_up() {
    let p = prompt(21, 2);
    let mut reference = model(1);
    let (want, rows) = plain(&mut reference, &p, 8);
    // A: one catch-up over the whole prompt and 4 generated tokens.
    let mut a = model(1);
    feed(&mut a, 0, 0, &p, Want::Last);
    let mut pos = p.len();
    for &t in &want[..4] {
        feed(&mut a, 0, pos, &[t], Want::Last);
        pos += 1;
    }
    let draft = |b: &mut CpuBackend, pos: usize, next: u32| {
        b.mtp_logits(&DraftChunk { slot: 0, pos, next, steps: 3, blocks: &BLOCKS, limit: V }).unwrap()
    };
    let da = draft(&mut a, pos, want[4]);
    assert_eq!(da.len(), 3);
    // The same draft twice: the cache keeps only fed pairs, so the result repeats exactly.
    assert_eq!(draft(&mut a, pos, want[4]), da);
    // B: a draft after every step (the cache grows a pair or two at a time).
    let mut b = model(1);
    feed(&mut b, 0, 0, &p, Want::Last);
    draft(&mut b, p.len(), want[0]);
    let mut pos_b = p.len();
    for &t in &want[..4] {
        feed(&mut b, 0, pos_b, &[t], Want::Last);
        pos_b += 1;
        draft(&mut b, pos_b, want[pos_b - p.len()]);
    }
    assert_eq!(draft(&mut b, pos_b, want[4]), da, "drafts depend on how the MTP cache was filled");
    // Drafting never touched the main model: decoding goes on exactly as plain decoding.
    assert_eq!(feed(&mut a, 0, pos, &[want[4]], Want::Last), rows[4]);
    // The backend's `draft` is the argmax of these logits.
    let toks = a.draft(&[DraftChunk { slot: 0, pos: pos + 1, next: want[5], steps: 2, blocks: &BLOCKS, limit: 7 }]).unwrap();
    assert_eq!(toks[0].len(), 2);
    assert!(toks[0].iter().all(|&t| t < 7), "drafts respect the vocabulary limit: {toks:?}");
}

#[test]
fn verify_feeds_the_mtp_cache_like_decode() {
    // After a verify, the MTP head sees the accepted positions' hidden states exactly as
    // if they had been decoded one by one.
    let p = prompt(30, 3);
    let mut reference = model(1);
    let (want, _) = plain(&mut reference, &p, 6);
    let mut dec = model(1);
    feed(&mut dec, 0, 0, &p, Want::Last);
    for (i, &t) in want[..3].iter().enumerate() {
        feed(&mut dec, 0, p.len() + i, &[t], Want::Last);
    }
    let mut ver = model(1);
    feed(&mut ver, 0, 0, &p, Want::Last);
    let v = verify(&mut ver, p.len(), &[want[0], want[1], want[2], 0]);
    assert_eq!(v.accepted, if want[3] == 0 { 4 } else { 3 });
    if v.accepted == 3 {
        let d = |b: &mut CpuBackend| b.mtp_logits(&DraftChunk { slot: 0, pos: p.len() + 3, next: want[3], steps: 2, blocks: &BLOCKS, limit: V }).unwrap();
        assert_eq!(d(&mut ver), d(&mut dec));
    }
}

#[test]
fn speculation_errors_are_clear() {
    let mut b = model(2);
    let p = prompt(5, 4);
    feed(&mut b, 0, 0, &p, Want::Last);
    let e = b.draft(&[DraftChunk { slot: 0, pos: 3, next: 1, steps: 2, blocks: &BLOCKS, limit: V }]).unwrap_err().to_string();
    assert!(e.contains("holds 5 tokens"), "{e}");
    let e = b.draft(&[DraftChunk { slot: 1, pos: 0, next: 1, steps: 2, blocks: &BLOCKS, limit: V }]).unwrap_err().to_string();
    assert!(e.contains("no token to draft from"), "{e}");
    let c = VerifyChunk { slot: 0, start_pos: 5, tokens: &[1, 2], blocks: &BLOCKS, limit: V };
    let e = b.verify(&[c.clone(), c]).unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
    // A model without an MTP head says so.
    let cfg = ModelConfig { vocab_size: V, mtp_num_layers: 0, ..demo_config() };
    let w = random_weights(&cfg, 1);
    let mut plain = CpuBackend::new(cfg, w, Capacity { slots: 1, block_size: 16, kv_blocks: 32, max_seq_len: 64 }).unwrap();
    assert!(!plain.supports_speculation());
    feed(&mut plain, 0, 0, &p, Want::Last);
    let e = plain.draft(&[DraftChunk { slot: 0, pos: 5, next: 1, steps: 1, blocks: &BLOCKS, limit: V }]).unwrap_err().to_string();
    assert!(e.contains("no MTP head"), "{e}");
}
