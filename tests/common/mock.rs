//! A deterministic mock backend and a byte-level codec for fast scheduler/server tests.
//!
//! Logits of a position depend only on the tokens its slot has seen (a rolling hash),
//! so any mix-up of slots, positions or chunking by the scheduler changes the output.
//! The backend checks the chunk contract (distinct slots, start_pos == tokens held,
//! blocks covering the chunk, no block in two chunks) and fails the step otherwise.
//! Padding rows (ids >= 257) get huge logits, so an unmasked sampler picks them.

#![allow(dead_code)]

use anyhow::{bail, ensure, Result};
use kiln::backend::{Backend, Capacity, ChunkLogits, SeqChunk, Want};
use kiln::config::ModelConfig;
use kiln::scheduler::Codec;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const EOS: u32 = 256;
pub const VALID_VOCAB: usize = 257;
pub const ROWS: usize = 272;

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn unit(h: u64, id: u64) -> f32 {
    (mix(h ^ mix(id.wrapping_add(1))) >> 40) as f32 / (1u64 << 24) as f32
}

/// Hash of a token history.
pub fn history_hash(tokens: &[u32]) -> u64 {
    tokens.iter().fold(0x1234_5678u64, |h, &t| mix(h ^ (t as u64).wrapping_mul(0x100_0000_01B3)))
}

/// The logits row after `hash` (a history): letters and space are likely, EOS
/// occasionally wins, padding rows are huge.
pub fn logits_for(hash: u64) -> Vec<f32> {
    (0..ROWS)
        .map(|id| {
            let u = unit(hash, id as u64);
            match id {
                _ if id as u32 == EOS => 3.0 + u,
                0x61..=0x7a | 0x20 => 3.0 + u,
                _ if id < 256 => u,
                _ => 100.0,
            }
        })
        .collect()
}

/// Greedy continuation straight from the mock's logits (ids below VALID_VOCAB).
pub fn reference_greedy(prompt: &[u32], max_new: usize, stop_on_eos: bool) -> Vec<u32> {
    let mut toks = prompt.to_vec();
    let mut out = vec![];
    while out.len() < max_new {
        let row = logits_for(history_hash(&toks));
        let t = kiln::sampling::argmax(&row[..VALID_VOCAB]) as u32;
        out.push(t);
        toks.push(t);
        if stop_on_eos && t == EOS {
            break;
        }
    }
    out
}

#[derive(Default)]
pub struct MockStats {
    pub forwards: AtomicU64,
    pub max_chunks: AtomicUsize,
    pub max_step_tokens: AtomicUsize,
    pub max_prefill_chunk: AtomicUsize,
    pub mixed_steps: AtomicU64,
    /// (start position, length) of every multi-token (prefill) chunk.
    pub prefill_chunks: Mutex<Vec<(usize, usize)>>,
    pub resets: AtomicU64,
    /// Chunks that asked for a greedy argmax under a token mask (structured output).
    pub masked_argmax: AtomicU64,
    pub delay_ms: AtomicU64,
    pub fail_next: AtomicBool,
    pub errors: Mutex<Vec<String>>,
}

pub struct MockBackend {
    cfg: ModelConfig,
    cap: Capacity,
    slots: Vec<Vec<u32>>,
    pub stats: Arc<MockStats>,
}

pub fn mock_config() -> ModelConfig {
    let mut c = kiln::demo::demo_config();
    c.vocab_size = ROWS;
    c.eos_token_ids = vec![EOS];
    c
}

impl MockBackend {
    pub fn new(cap: Capacity) -> Self {
        MockBackend { cfg: mock_config(), cap, slots: vec![vec![]; cap.slots], stats: Arc::new(MockStats::default()) }
    }

    fn check(&self, chunks: &[SeqChunk<'_>]) -> Result<()> {
        let mut slots = HashSet::new();
        let mut blocks = HashSet::new();
        for c in chunks {
            ensure!(c.slot < self.cap.slots, "slot {} out of range", c.slot);
            ensure!(slots.insert(c.slot), "slot {} appears twice in one step", c.slot);
            ensure!(!c.tokens.is_empty(), "empty chunk");
            let held = self.slots[c.slot].len();
            ensure!(c.start_pos == held, "slot {} holds {held} tokens, chunk starts at {}", c.slot, c.start_pos);
            let end = c.start_pos + c.tokens.len();
            ensure!(end <= self.cap.max_seq_len, "slot {} reaches {end} > max_seq_len", c.slot);
            ensure!(c.blocks.len() * self.cap.block_size >= end, "slot {}: {} blocks cannot hold {end} tokens", c.slot, c.blocks.len());
            for &b in c.blocks {
                ensure!((b as usize) < self.cap.kv_blocks, "block {b} out of range");
                ensure!(blocks.insert(b), "block {b} used by two sequences in one step");
            }
            ensure!(c.tokens.iter().all(|&t| (t as usize) < ROWS), "token outside the vocabulary");
        }
        Ok(())
    }
}

impl Backend for MockBackend {
    fn name(&self) -> &'static str {
        "mock"
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn capacity(&self) -> Capacity {
        self.cap
    }
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<ChunkLogits>> {
        let st = self.stats.clone();
        st.forwards.fetch_add(1, Relaxed);
        let d = st.delay_ms.load(Relaxed);
        if d > 0 {
            std::thread::sleep(Duration::from_millis(d));
        }
        if st.fail_next.swap(false, Relaxed) {
            bail!("injected failure");
        }
        if let Err(e) = self.check(chunks) {
            st.errors.lock().unwrap().push(e.to_string());
            return Err(e);
        }
        st.max_chunks.fetch_max(chunks.len(), Relaxed);
        st.max_step_tokens.fetch_max(chunks.iter().map(|c| c.tokens.len()).sum(), Relaxed);
        st.prefill_chunks.lock().unwrap().extend(chunks.iter().filter(|c| c.tokens.len() > 1).map(|c| (c.start_pos, c.tokens.len())));
        let prefill: Vec<usize> = chunks.iter().map(|c| c.tokens.len()).filter(|&n| n > 1).collect();
        if let Some(m) = prefill.iter().max() {
            st.max_prefill_chunk.fetch_max(*m, Relaxed);
            if chunks.iter().any(|c| c.tokens.len() == 1) {
                st.mixed_steps.fetch_add(1, Relaxed);
            }
        }
        let mut out = Vec::with_capacity(chunks.len());
        for c in chunks {
            let hist = &mut self.slots[c.slot];
            let mut rows = vec![];
            for (i, &t) in c.tokens.iter().enumerate() {
                hist.push(t);
                let want = match c.want {
                    Want::Nothing => false,
                    Want::Last | Want::Argmax { .. } => i + 1 == c.tokens.len(),
                    Want::All => true,
                };
                if want {
                    rows.extend(logits_for(history_hash(hist)));
                }
            }
            let argmax = match c.want {
                Want::Argmax { limit } => {
                    let last = &rows[rows.len() - ROWS..];
                    if c.allowed.is_some() {
                        st.masked_argmax.fetch_add(1, Relaxed);
                    }
                    Some(kiln::backend::cpu::ops::greedy(last, limit, c.allowed) as u32)
                }
                _ => None,
            };
            out.push(ChunkLogits { rows: rows.len() / ROWS, data: rows, argmax });
        }
        Ok(out)
    }
    fn reset_slot(&mut self, slot: usize) -> Result<()> {
        self.stats.resets.fetch_add(1, Relaxed);
        self.slots[slot].clear();
        Ok(())
    }
}

/// Byte-level codec: ids 0..256 are bytes, 256 is `<eos>` (special), others decode to "".
pub struct ByteCodec;

impl Codec for ByteCodec {
    fn encode(&self, text: &str, _add_special_tokens: bool) -> Result<Vec<u32>> {
        let mut out = vec![];
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("<eos>") {
                out.push(EOS);
                rest = r;
            } else {
                let c = rest.chars().next().unwrap();
                let mut buf = [0u8; 4];
                out.extend(c.encode_utf8(&mut buf).bytes().map(|b| b as u32));
                rest = &rest[c.len_utf8()..];
            }
        }
        Ok(out)
    }
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let mut bytes = vec![];
        for &i in ids {
            if i < 256 {
                bytes.push(i as u8);
            } else if i == EOS && !skip_special_tokens {
                bytes.extend_from_slice(b"<eos>");
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    fn vocab_size(&self) -> usize {
        VALID_VOCAB
    }
    fn eos_token_ids(&self) -> Vec<u32> {
        vec![EOS]
    }
    fn token_bytes(&self) -> Option<Vec<Vec<u8>>> {
        let mut bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        bytes.push(b"\xff<eos>".to_vec());
        Some(bytes)
    }
    fn render_chat(&self, messages: &Value, _tools: Option<&Value>, kwargs: &Map<String, Value>) -> Result<String> {
        let mut s = String::new();
        for m in messages.as_array().into_iter().flatten() {
            let role = m["role"].as_str().unwrap_or("user");
            let content: String = match &m["content"] {
                Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
                c => c.as_str().unwrap_or("").to_string(),
            };
            s.push_str(&format!("<{role}>{content}\n"));
        }
        s.push_str("<assistant>");
        if kwargs.get("enable_thinking") == Some(&Value::Bool(false)) {
            s.push_str("<nothink>");
        }
        if kwargs.get("mock_think") == Some(&Value::Bool(true)) {
            s.push_str("<think>\n");
        }
        Ok(s)
    }
}

pub fn cap(slots: usize, kv_blocks: usize, block_size: usize, max_seq_len: usize) -> Capacity {
    Capacity { slots, block_size, kv_blocks, max_seq_len }
}
