//! A scripted backend for end-to-end tests of what the server does with a model's text
//! (tool calls, malformed markup): with the byte codec of `mock.rs`, it writes a chosen
//! reply, byte by byte, then EOS.
//!
//! The reply is picked from the rendered prompt (`<role>content\n...<assistant>`): of
//! the `(trigger, reply)` rules, the one whose trigger appears last in the prompt wins
//! (e.g. `("<user>", call)` and `("<tool>", answer)` answer a tool result with text).
//! Tokens already after `<assistant>` count as written. Where a grammar masks the
//! scripted byte, EOS comes first if allowed, else the lowest allowed id.
//! Everything else (the HTTP server, scheduler, sampler, detokenizer) is the real code.

use super::mock::{mock_config, ByteCodec, EOS, ROWS};
use super::server::TestServer;
use anyhow::Result;
use kiln::backend::{Backend, Capacity, ChunkLogits, SeqChunk, Want};
use kiln::config::ModelConfig;
use kiln::scheduler::SchedulerConfig;
use kiln::server::ServerConfig;
use std::sync::Arc;

const ASSISTANT: &[u8] = b"<assistant>";

pub struct ScriptedBackend {
    cfg: ModelConfig,
    cap: Capacity,
    slots: Vec<Vec<u32>>,
    rules: Vec<(String, String)>,
}

fn rfind(hay: &[u32], needle: &[u8]) -> Option<usize> {
    (0..=hay.len().checked_sub(needle.len())?).rev().find(|&i| hay[i..i + needle.len()].iter().zip(needle).all(|(&a, &b)| a == b as u32))
}

impl ScriptedBackend {
    pub fn new(cap: Capacity, rules: &[(&str, &str)]) -> Self {
        let rules = rules.iter().map(|(t, r)| (t.to_string(), r.to_string())).collect();
        ScriptedBackend { cfg: mock_config(), cap, slots: vec![vec![]; cap.slots], rules }
    }

    /// The token that follows `hist`: the next byte of the chosen reply, else EOS.
    fn next_token(&self, hist: &[u32]) -> u32 {
        let Some(start) = rfind(hist, ASSISTANT) else { return EOS };
        let prompt = &hist[..start];
        let rule = self.rules.iter().filter_map(|(t, r)| rfind(prompt, t.as_bytes()).map(|at| (at, r))).max_by_key(|(at, _)| *at);
        let written = hist.len() - start - ASSISTANT.len();
        match rule {
            Some((_, reply)) => reply.as_bytes().get(written).map_or(EOS, |&b| b as u32),
            None => EOS,
        }
    }
}

impl Backend for ScriptedBackend {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn capacity(&self) -> Capacity {
        self.cap
    }
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<ChunkLogits>> {
        let mut out = Vec::with_capacity(chunks.len());
        for c in chunks {
            self.slots[c.slot].truncate(c.start_pos);
            let mut rows = vec![];
            for (i, &t) in c.tokens.iter().enumerate() {
                self.slots[c.slot].push(t);
                let want = match c.want {
                    Want::Nothing => false,
                    Want::Last | Want::Argmax { .. } => i + 1 == c.tokens.len(),
                    Want::All => true,
                };
                if want {
                    // EOS leads the rest, so where a grammar forbids the scripted byte
                    // the reply ends as soon as the grammar allows
                    let mut row = vec![0.0f32; ROWS];
                    row[EOS as usize] = 1.0;
                    row[self.next_token(&self.slots[c.slot]) as usize] = 1e4;
                    rows.extend(row);
                }
            }
            // A grammar's mask (greedy structured output) picks from the row above.
            let argmax = match (c.want, c.allowed) {
                (Want::Argmax { limit }, Some(mask)) => Some(kiln::backend::cpu::ops::argmax_masked(&rows[rows.len() - ROWS..], limit, mask) as u32),
                (Want::Argmax { .. }, None) => Some(self.next_token(&self.slots[c.slot])),
                _ => None,
            };
            out.push(ChunkLogits { rows: rows.len() / ROWS, data: rows, argmax });
        }
        Ok(out)
    }
    fn reset_slot(&mut self, slot: usize) -> Result<()> {
        self.slots[slot].clear();
        Ok(())
    }
}

/// An in-process server whose model answers by `rules` (see the file comment).
pub fn scripted_server(rules: &[(&str, &str)]) -> TestServer {
    let cap = super::mock::cap(4, 256, 16, 1024);
    let sched = SchedulerConfig { eos_token_ids: vec![EOS], ..SchedulerConfig::default() };
    TestServer::start(Box::new(ScriptedBackend::new(cap, rules)), Arc::new(ByteCodec), sched, ServerConfig::default())
}
