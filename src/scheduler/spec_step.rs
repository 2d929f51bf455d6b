//! The engine's speculative step (a child of `engine.rs`): which decoding sequences run a
//! draft + verify cycle this step, the two backend calls, and the emission of each burst
//! of accepted tokens through the same stop rules as one token at a time: the burst ends
//! at the first stop (nothing after it is emitted) and arrives as one update (no token lost).
//!
//! Only plain greedy sequences speculate (no logprobs, penalties, grammar or banned stop tokens):
//! their output is exactly plain decoding's, whatever is accepted. Sampled and logprob
//! requests decode plainly in the same step.

use super::Engine;
use crate::backend::speculative::DraftFailed;
use crate::backend::DraftChunk;
use crate::sampling::Sampled;
use crate::scheduler::request::{FinishReason, Output};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// A sequence that speculates this step: its index in `running` and its draft count.
pub(super) struct SpecRow {
    pub idx: usize,
    pub k: usize,
}

impl Engine {
    /// Whether running[i] may speculate: it is decoding (its last token sampled, not yet
    /// fed) and needs nothing but greedy tokens.
    fn spec_eligible(&self, i: usize) -> bool {
        let s = &self.running[i];
        let p = s.sampler.params();
        s.tokens.len() - s.fed == 1
            && s.out_len() >= 1
            && s.out_len() >= s.req.stop.min_new_tokens
            && p.is_greedy()
            && !p.has_penalties()
            && !p.is_constrained() // drafts and verification know nothing of the grammar
            && !s.lp_want.any()
            && !s.req.logprobs.enabled
            && !s.input_lp_pending
    }

    /// Decides this step's speculation (the policy, then per sequence its draft count
    /// within its output and context room) and reserves KV blocks for the verified tokens.
    pub(super) fn plan_speculation(&mut self) -> Vec<SpecRow> {
        if self.spec.is_none() {
            return vec![];
        }
        let eligible: Vec<usize> = (0..self.running.len()).filter(|&i| self.spec_eligible(i)).collect();
        let decoding = self.running.iter().filter(|s| s.tokens.len() - s.fed == 1).count();
        let Some(rt) = self.spec.as_mut() else { return vec![] };
        if eligible.is_empty() || !rt.decide(decoding) {
            return vec![];
        }
        let k_max = rt.cfg.num_steps;
        let max_rows = self.backend.max_verify_rows();
        // More eligible than the backend's verify takes: the rest decode plainly beside
        // them, and the next step starts after the last one taken (round robin).
        let first = if eligible.len() > max_rows { rt.next_first % eligible.len() } else { 0 };
        let mut rows = Vec::with_capacity(eligible.len().min(max_rows));
        let mut taken = 0;
        for (n, i) in eligible.iter().cycle().skip(first).take(eligible.len()).copied().enumerate() {
            if rows.len() == max_rows {
                break;
            }
            taken = first + n + 1;
            let s = &mut self.running[i];
            // A cycle emits up to k + 1 tokens and fills positions up to n + k.
            let room_out = s.max_new.saturating_sub(s.out_len()).saturating_sub(1);
            let room_ctx = self.cfg.context_len.saturating_sub(s.tokens.len());
            let k = k_max.min(room_out).min(room_ctx);
            if k == 0 || !self.blocks.grow(&mut s.blocks, s.tokens.len() + k) {
                continue;
            }
            rows.push(SpecRow { idx: i, k });
        }
        if let Some(rt) = self.spec.as_mut() {
            rt.next_first = taken;
        }
        rows
    }

    /// Records the cost of a step of plain decode rows only (the cost model's baseline).
    pub(super) fn observe_plain_step(&mut self, plan: &[(usize, usize, crate::backend::Want)], no_spec: bool, secs: f64) {
        if let Some(rt) = self.spec.as_mut() {
            if no_spec && !plan.is_empty() && plan.iter().all(|p| p.1 == 1) {
                rt.costs.observe_plain(plan.len(), secs);
            }
        }
    }

    /// Drafts, verifies and emits for `rows`; finished sequences go onto `done`. Returns
    /// the number of tokens emitted.
    pub(super) fn run_speculation(&mut self, rows: &[SpecRow], done: &mut Vec<(usize, Output)>) -> usize {
        if rows.is_empty() {
            return 0;
        }
        let limit = self.vocab_limit;
        let draft_limit = self.spec.as_ref().and_then(|rt| rt.cfg.draft_vocab).map_or(limit, |d| d.clamp(1, limit));
        let t0 = Instant::now();
        let verified = {
            let chunks: Vec<DraftChunk<'_>> = rows
                .iter()
                .map(|r| {
                    let s = &self.running[r.idx];
                    let next = *s.tokens.last().expect("a decoding sequence has tokens");
                    DraftChunk { slot: s.slot.expect("running sequences hold a slot"), pos: s.fed, next, steps: r.k, blocks: &s.blocks, limit: draft_limit }
                })
                .collect();
            self.backend.speculate(&chunks, limit)
        };
        let cycle_secs = t0.elapsed().as_secs_f64();
        let verified = match verified {
            Ok(v) if v.len() == rows.len() && v.iter().zip(rows).all(|(v, r)| v.greedy.len() == r.k + 1 && (1..=r.k + 1).contains(&v.accepted)) => v,
            Ok(_) => return self.fail_rows(rows, "backend error: the speculative cycle returned malformed results".into(), done),
            // A failed draft touched only the MTP head: the sequences go on plainly.
            Err(e) if e.downcast_ref::<DraftFailed>().is_some() => return self.turn_off(format!("{e:#}")),
            Err(e) => return self.fail_rows(rows, format!("backend error: {e:#}"), done),
        };
        let accepted: Vec<usize> = verified.iter().map(|v| v.accepted).collect();
        if let Some(rt) = self.spec.as_mut() {
            let k_max = rows.iter().map(|r| r.k).max().unwrap_or(1);
            rt.costs.observe_cycle(rows.len(), k_max, rt.cfg.num_steps, cycle_secs);
            rt.observe_acceptance(&accepted);
        }
        self.stats.spec_verify_ct.fetch_add(rows.len() as u64, Relaxed);
        self.stats.spec_verify_tokens.fetch_add(accepted.iter().sum::<usize>() as u64, Relaxed);
        let mut generated = 0;
        for (r, v) in rows.iter().zip(&verified) {
            let s = &mut self.running[r.idx];
            s.fed += v.accepted;
            s.spec.record(r.k, v.accepted);
            let (n, out) = self.emit_burst(r.idx, v.emitted());
            generated += n;
            if let Some(out) = out {
                done.push((r.idx, out));
            }
        }
        generated
    }

    /// Appends `tokens` to running[i] one at a time through the stop rules, stopping at
    /// the first finish, and delivers them as one update. Returns the tokens appended and
    /// the final output when the request is done.
    fn emit_burst(&mut self, i: usize, tokens: &[u32]) -> (usize, Option<Output>) {
        let mut merged: Option<Output> = None;
        let mut n = 0;
        for &t in tokens {
            self.running[i].sampler.observe(t);
            let out = self.append_token(i, Sampled { token: t, ..Default::default() });
            n += 1;
            let m = merged.get_or_insert_with(Output::default);
            merge(m, out);
            if m.finish.is_some() {
                break;
            }
        }
        (n, merged.and_then(|m| self.deliver(i, m)))
    }

    /// A failed draft touched only the MTP head's state: speculation stops for good and the
    /// sequences decode plainly from the next step (nothing was emitted or fed this step).
    fn turn_off(&mut self, why: String) -> usize {
        tracing::error!("speculative decoding turned off: the MTP draft failed ({why}); every sequence decodes plainly from now on");
        self.stats.backend_errors.fetch_add(1, Relaxed);
        if let Some(rt) = self.spec.as_mut() {
            rt.turned_off = true;
        }
        0
    }

    /// Ends every request in `rows` with a 500 (a backend failure mid-cycle).
    fn fail_rows(&mut self, rows: &[SpecRow], msg: String, done: &mut Vec<(usize, Output)>) -> usize {
        tracing::error!("{msg}");
        self.stats.backend_errors.fetch_add(1, Relaxed);
        for r in rows {
            let prompt_tokens = self.running[r.idx].prompt_len;
            done.push((r.idx, Output { finish: Some(FinishReason::abort(msg.clone(), Some(500))), prompt_tokens, ..Default::default() }));
        }
        0
    }
}

/// Folds the update of one more token into the burst's update.
fn merge(into: &mut Output, o: Output) {
    into.ids.extend(o.ids);
    into.text.push_str(&o.text);
    into.logprobs.extend(o.logprobs);
    if into.input_logprobs.is_none() {
        into.input_logprobs = o.input_logprobs;
    }
    into.finish = o.finish;
    into.prompt_tokens = o.prompt_tokens;
    into.cached_tokens = o.cached_tokens;
    into.spec = o.spec;
}
