//! Speculative decoding on the CPU backend: the MTP head that drafts, and verification
//! with per-position state kept in scratch and the accepted position committed.
//!
//! MTP semantics (as SGLang's `qwen3_5_mtp.py` and vLLM's `qwen3_5_mtp.py` + EAGLE proposer
//! run Qwen3.5): for the pair (h_t, x_{t+1}), with h_t the main model's final-normed hidden
//! state at position t (the vector its lm_head reads) and x_{t+1} the token after it,
//! u = fc(concat[pre_fc_norm_embedding(embed(x_{t+1})), pre_fc_norm_hidden(h_t)]) (embedding
//! half first), then `mtp.layers.0` (a full-attention decoder layer with its own KV cache)
//! at RoPE position t, then `mtp.norm`; the tied lm_head gives the draft for x_{t+2}. A
//! chained step feeds the MTP's own mtp.norm output and its draft back at position t+1.
//! The cache covers the prompt: the first draft call after prefill runs the layer over
//! every prompt pair (the prompt shifted by one).

use super::ops;
use super::state::MtpState;
use super::{full_attention, mlp_residual, CpuBackend, KvStore};
use crate::backend::speculative::accepted_len;
use crate::backend::{DraftChunk, Verified, VerifyChunk};
use crate::checkpoint::{Mixer, MtpWeights, Weights};
use crate::config::ModelConfig;
use anyhow::{bail, ensure, Context, Result};

/// Appends the final-normed hidden rows of freshly fed `tokens` to the rows the MTP head
/// has not paired yet.
pub(super) fn record_hidden(m: &mut MtpState, tokens: &[u32], normed: &[f32]) {
    m.pending_tokens.extend_from_slice(tokens);
    m.pending_hidden.extend_from_slice(normed);
}

/// The MTP head over pairs: row i pairs `hidden` row i (h_t) with `next_tokens[i]`
/// (x_{t+1}) for t = start + i. Appends the pairs' K/V to the MTP cache (which holds
/// `start` pairs) and returns the mtp.norm outputs, one row per pair.
fn mtp_forward(
    cfg: &ModelConfig,
    w: &Weights,
    mtp: &MtpWeights,
    cache: &mut MtpState,
    next_tokens: &[u32],
    hidden: &[f32],
    start: usize,
) -> Result<Vec<f32>> {
    let h = cfg.hidden_size;
    let eps = cfg.rms_norm_eps as f32;
    let n = next_tokens.len();
    ensure!(hidden.len() == n * h, "mtp: {} hidden rows for {n} tokens", hidden.len() / h);
    let mut emb = Vec::with_capacity(n * h);
    for &t in next_tokens {
        ensure!((t as usize) < cfg.vocab_size, "token id {t} is outside the vocabulary ({})", cfg.vocab_size);
        emb.extend_from_slice(&w.embed[t as usize * h..(t as usize + 1) * h]);
    }
    let e = ops::rms_norm(&emb, &mtp.pre_fc_norm_embedding, eps, 1.0);
    let g = ops::rms_norm(hidden, &mtp.pre_fc_norm_hidden, eps, 1.0);
    // fc reads concat[e, g]: the embedding half first.
    let mut cat = Vec::with_capacity(2 * n * h);
    for r in 0..n {
        cat.extend_from_slice(&e[r * h..(r + 1) * h]);
        cat.extend_from_slice(&g[r * h..(r + 1) * h]);
    }
    let mut x = ops::matmul_wt(&cat, &mtp.fc, 2 * h);
    // Qwen3.5 ships one MTP layer (mtp_num_hidden_layers 1), as SGLang and vLLM run it.
    let layer = mtp.layers.first().context("the MTP head has no layer")?;
    let Mixer::Full(fw) = &layer.mixer else { bail!("mtp.layers.0 must be a full-attention layer") };
    let normed = ops::rms_norm(&x, &layer.input_norm, eps, 1.0);
    let mixed = full_attention(cfg, fw, &normed, KvStore::Contiguous { k: &mut cache.k, v: &mut cache.v }, start);
    x.iter_mut().zip(&mixed).for_each(|(a, b)| *a += b);
    mlp_residual(cfg, layer, &mut x);
    Ok(ops::rms_norm(&x, &mtp.norm, eps, 1.0))
}

impl CpuBackend {
    pub(super) fn check_distinct_slots(&self, slots: impl Iterator<Item = usize>) -> Result<()> {
        let mut seen = vec![false; self.slots.len()];
        for s in slots {
            ensure!(s < seen.len(), "slot {s} out of range ({} slots)", seen.len());
            ensure!(!std::mem::replace(&mut seen[s], true), "slot {s} appears twice in one step");
        }
        Ok(())
    }

    /// The draft logits of each chained MTP step for one sequence (`c.steps` rows of the
    /// full vocabulary); the drafts are their argmaxes below `c.limit`. Brings the MTP
    /// cache up to the pairs whose both halves are fed tokens; the pair with `c.next` and
    /// the chained steps' entries are computed but not kept (the next call recomputes the
    /// former identically, and the latter depend on drafts).
    pub fn mtp_logits(&mut self, c: &DraftChunk<'_>) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.cfg;
        let h = cfg.hidden_size;
        let mtp = self.w.mtp.as_ref().context("this model has no MTP head (no mtp.* tensors)")?;
        ensure!(c.slot < self.slots.len(), "slot {} out of range ({} slots)", c.slot, self.slots.len());
        ensure!(c.steps >= 1, "a draft needs at least one step");
        let st = &mut self.slots[c.slot];
        ensure!(st.len == c.pos, "cpu backend: slot {} holds {} tokens but the draft is for position {}", c.slot, st.len, c.pos);
        ensure!(c.pos >= 1, "cpu backend: slot {} has no token to draft from", c.slot);
        let m = &mut st.mtp;
        ensure!(
            m.len + m.pending_tokens.len() == c.pos,
            "cpu backend: slot {} MTP cache ({} pairs + {} pending) is out of step with position {}",
            c.slot,
            m.len,
            m.pending_tokens.len(),
            c.pos
        );
        let kv_width = cfg.num_kv_heads * cfg.head_dim;
        let keep_pairs = c.pos - 1;
        // Pairs t = m.len .. pos-1: x_{t+1} is the next pending token, and `next` for the last.
        let next_tokens: Vec<u32> = m.pending_tokens[1..].iter().copied().chain([c.next]).collect();
        let hidden = std::mem::take(&mut m.pending_hidden);
        let start = m.len;
        let mut out = mtp_forward(cfg, &self.w, mtp, m, &next_tokens, &hidden, start)?;
        // Keep the row of position pos-1 pending: its pair uses the not-yet-fed `next`.
        m.pending_hidden = hidden[(keep_pairs - start) * h..].to_vec();
        m.pending_tokens.drain(..keep_pairs - start);
        let mut rows = Vec::with_capacity(c.steps);
        let limit = c.limit.clamp(1, cfg.vocab_size);
        for step in 0..c.steps {
            let last = out[out.len() - h..].to_vec();
            let logits = ops::matmul_wt(&last, self.w.lm_head(), h);
            let draft = ops::argmax(&logits[..limit]) as u32;
            rows.push(logits);
            if step + 1 < c.steps {
                // Chained step: the MTP's own output and draft at the next position.
                out = mtp_forward(cfg, &self.w, mtp, m, &[draft], &last, c.pos + step)?;
            }
        }
        m.k.truncate(keep_pairs * kv_width);
        m.v.truncate(keep_pairs * kv_width);
        m.len = keep_pairs;
        Ok(rows)
    }

    pub(super) fn draft_one(&mut self, c: &DraftChunk<'_>) -> Result<Vec<u32>> {
        let limit = c.limit.clamp(1, self.cfg.vocab_size);
        Ok(self.mtp_logits(c)?.iter().map(|row| ops::argmax(&row[..limit]) as u32).collect())
    }

    /// Feeds `c.tokens` one position at a time through exactly the decode path, keeping
    /// the Gated DeltaNet state after each position in scratch; then commits the state
    /// after the last accepted position and cuts the KV caches there.
    pub(super) fn verify_one(&mut self, c: &VerifyChunk<'_>) -> Result<Verified> {
        ensure!(!c.tokens.is_empty(), "verify for slot {} has no tokens", c.slot);
        let h = self.cfg.hidden_size;
        let eps = self.cfg.rms_norm_eps as f32;
        let limit = c.limit.clamp(1, self.cfg.vocab_size);
        let mut greedy = Vec::with_capacity(c.tokens.len());
        let mut hidden = Vec::with_capacity(c.tokens.len() * h);
        let mut gdn_after = Vec::with_capacity(c.tokens.len());
        for (i, &t) in c.tokens.iter().enumerate() {
            let x = self.run_layers(c.slot, c.start_pos + i, &[t], c.blocks)?;
            let normed = ops::rms_norm(&x, &self.w.norm, eps, 1.0);
            let logits = ops::matmul_wt(&normed, self.w.lm_head(), h);
            greedy.push(ops::argmax(&logits[..limit]) as u32);
            hidden.extend_from_slice(&normed);
            let st = &self.slots[c.slot];
            gdn_after.push((st.conv.clone(), st.recurrent.clone()));
        }
        let accepted = accepted_len(c.tokens, &greedy);
        let keep = c.start_pos + accepted;
        let st = &mut self.slots[c.slot];
        (st.conv, st.recurrent) = gdn_after.swap_remove(accepted - 1);
        // The paged K/V rows of rejected positions stay in their pages past `len`: no
        // step reads past a sequence's length, and the next tokens overwrite them.
        st.len = keep;
        if self.w.mtp.is_some() {
            record_hidden(&mut st.mtp, &c.tokens[..accepted], &hidden[..accepted * h]);
        }
        Ok(Verified { greedy, accepted })
    }
}

#[cfg(test)]
#[path = "speculative_tests.rs"]
mod tests;
