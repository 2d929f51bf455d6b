//! What the scheduler thread costs per step on the host, with the real Qwen3.5 tokenizer
//! and a backend that computes nothing: every microsecond here is one the GPU waits for
//! between decode steps (the scheduler runs a step, then its host work, then the next).
//! A measurement, not a test:
//! `cargo test --release --test host_overhead -- --ignored --nocapture`.

use anyhow::Result;
use kiln::backend::{Backend, Capacity, ChunkLogits, SeqChunk, SnapshotId, Want};
use kiln::config::ModelConfig;
use kiln::sampling::SamplingParams;
use kiln::scheduler::{self, GenRequest, Output, SchedulerConfig, StopConfig};
use kiln::tokenizer::Tokenizer;
use std::sync::Arc;
use std::time::Instant;

/// Answers every chunk at once: the greedy token is the next id of an English text.
struct NullBackend {
    cfg: ModelConfig,
    cap: Capacity,
    text: Vec<u32>,
    next_snapshot: SnapshotId,
}

impl Backend for NullBackend {
    fn name(&self) -> &'static str {
        "null"
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn capacity(&self) -> Capacity {
        self.cap
    }
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<ChunkLogits>> {
        Ok(chunks
            .iter()
            .map(|c| match c.want {
                Want::Argmax { .. } => {
                    let pos = c.start_pos + c.tokens.len();
                    ChunkLogits { argmax: Some(self.text[(pos + 7 * c.slot) % self.text.len()]), ..Default::default() }
                }
                Want::Nothing => ChunkLogits::default(),
                other => panic!("the null backend answers greedy requests only, not {other:?}"),
            })
            .collect())
    }
    fn reset_slot(&mut self, _slot: usize) -> Result<()> {
        Ok(())
    }
    fn snapshot_capacity(&self) -> usize {
        4096
    }
    fn snapshot_state(&mut self, _slot: usize) -> Result<SnapshotId> {
        self.next_snapshot += 1;
        Ok(self.next_snapshot)
    }
    fn restore_state(&mut self, _snapshot: SnapshotId, _slot: usize) -> Result<()> {
        Ok(())
    }
    fn drop_snapshot(&mut self, _snapshot: SnapshotId) -> Result<()> {
        Ok(())
    }
}

#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn scheduler_host_time_per_decode_step() {
    let tok = Tokenizer::bundled().unwrap();
    let sentence = "The quick brown fox jumps over the lazy dog, and then it writes a short essay about the history of computing, with numbers like 3.14159 and names like Ada Lovelace. ";
    let text = tok.encode(&sentence.repeat(8), false).unwrap();
    let cfg = kiln::demo::demo_config();
    let eos = cfg.eos_token_ids.clone();
    let (prompt_len, new_tokens) = (512usize, 256usize);
    for batch in [1usize, 16, 64] {
        let cap = Capacity { slots: batch, block_size: 16, kv_blocks: batch * 64, max_seq_len: 1024 };
        let backend = NullBackend { cfg: cfg.clone(), cap, text: text.clone(), next_snapshot: 0 };
        let sc = SchedulerConfig { eos_token_ids: eos.clone(), max_running: batch, ..Default::default() };
        let h = scheduler::spawn(Box::new(backend), Arc::new(tok.clone()), sc).unwrap();
        let t0 = Instant::now();
        let tickets: Vec<_> = (0..batch)
            .map(|i| {
                let prompt: Vec<u32> = (0..prompt_len).map(|p| text[(p + 13 * i) % text.len()]).collect();
                let stop = StopConfig { max_new_tokens: new_tokens, ignore_eos: true, ..Default::default() };
                h.submit(GenRequest::new("r", prompt, SamplingParams::greedy(), stop)).unwrap()
            })
            .collect();
        let mut chars = 0usize;
        for mut t in tickets {
            loop {
                let o: Output = t.blocking_recv().expect("the scheduler ended early");
                chars += o.text.len();
                if o.finish.is_some() {
                    break;
                }
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        let steps = h.stats().steps.load(std::sync::atomic::Ordering::Relaxed) as f64;
        println!(
            "batch {batch:>3}: {steps:.0} steps in {:.1} ms: {:.1} us of host time per step, {:.2} us per token ({chars} chars)",
            wall * 1e3,
            wall / steps * 1e6,
            wall / (batch * new_tokens) as f64 * 1e6
        );
    }
}
