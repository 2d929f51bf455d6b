//! Forced acceptance for tests and measurements: a backend wrapper whose drafts come from
//! known plain-greedy continuations instead of the MTP head. `Oracle` proposes exactly the
//! continuation (every draft accepted), `Adversarial` proposes a different token at every
//! position (nothing accepted). Either way the output must equal plain decoding; the first
//! measures a cycle at full acceptance, the second the rollback on every cycle.
//!
//! The wrapper forwards every call to the inner backend (its `draft` too when it has an
//! MTP head, so the MTP cache and the draft cost stay real; without one, verification is
//! still measured) and follows each slot's token history to look up the continuation.

use super::{Backend, Capacity, ChunkLogits, DraftChunk, SeqChunk, Verified, VerifyChunk};
use crate::config::ModelConfig;
use anyhow::{ensure, Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DraftMode {
    /// Propose the known greedy continuation: every draft is accepted.
    Oracle,
    /// Propose a token other than the known continuation's: no draft is accepted.
    Adversarial,
}

pub struct ForcedDraft {
    inner: Box<dyn Backend>,
    mode: DraftMode,
    /// Known sequences: a prompt followed by its plain greedy continuation.
    known: Vec<Vec<u32>>,
    /// Tokens each slot holds.
    history: Vec<Vec<u32>>,
}

impl ForcedDraft {
    /// Wraps `inner`; `known` holds each prompt followed by its plain greedy output.
    pub fn new(inner: Box<dyn Backend>, mode: DraftMode, known: Vec<Vec<u32>>) -> Self {
        let slots = inner.capacity().slots;
        ForcedDraft { inner, mode, known, history: vec![Vec::new(); slots] }
    }

    /// The wrapped backend back.
    pub fn into_inner(self) -> Box<dyn Backend> {
        self.inner
    }

    /// The `steps` known tokens after `seq`, from the first known sequence extending it.
    fn continuation(&self, seq: &[u32], steps: usize) -> Option<&[u32]> {
        self.known.iter().find(|k| k.len() >= seq.len() + steps && k.starts_with(seq)).map(|k| &k[seq.len()..seq.len() + steps])
    }

    fn slot_history(&mut self, slot: usize) -> Result<&mut Vec<u32>> {
        let n = self.history.len();
        self.history.get_mut(slot).with_context(|| format!("slot {slot} out of range ({n} slots)"))
    }
}

impl Backend for ForcedDraft {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn capacity(&self) -> Capacity {
        self.inner.capacity()
    }
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<ChunkLogits>> {
        let out = self.inner.forward(chunks)?;
        for c in chunks {
            let h = self.slot_history(c.slot)?;
            h.truncate(c.start_pos);
            h.extend_from_slice(c.tokens);
        }
        Ok(out)
    }
    fn reset_slot(&mut self, slot: usize) -> Result<()> {
        self.inner.reset_slot(slot)?;
        self.slot_history(slot)?.clear();
        Ok(())
    }
    fn supports_speculation(&self) -> bool {
        true
    }
    fn max_verify_rows(&self) -> usize {
        self.inner.max_verify_rows()
    }
    fn draft(&mut self, seqs: &[DraftChunk<'_>]) -> Result<Vec<Vec<u32>>> {
        let real = if self.inner.supports_speculation() { self.inner.draft(seqs)? } else { seqs.iter().map(|c| vec![0; c.steps]).collect() };
        let mut out = Vec::with_capacity(seqs.len());
        for (c, real) in seqs.iter().zip(real) {
            let mut seq = self.history.get(c.slot).context("slot out of range")?.clone();
            ensure!(seq.len() == c.pos, "forced draft: slot {} holds {} tokens, the draft is for position {}", c.slot, seq.len(), c.pos);
            seq.push(c.next);
            let known = self
                .continuation(&seq, c.steps)
                .with_context(|| format!("forced draft: no known continuation of {} tokens after this {}-token sequence", c.steps, seq.len()))?;
            out.push(match self.mode {
                DraftMode::Oracle => known.to_vec(),
                // Any other id below the limit; never the greedy token, so never accepted.
                DraftMode::Adversarial => known.iter().map(|&t| (t + 1) % c.limit.max(2) as u32).collect(),
            });
            debug_assert_eq!(real.len(), c.steps);
        }
        Ok(out)
    }
    fn verify(&mut self, seqs: &[VerifyChunk<'_>]) -> Result<Vec<Verified>> {
        let out = self.inner.verify(seqs)?;
        for (c, v) in seqs.iter().zip(&out) {
            let h = self.slot_history(c.slot)?;
            h.truncate(c.start_pos);
            h.extend_from_slice(&c.tokens[..v.accepted]);
        }
        Ok(out)
    }
}
