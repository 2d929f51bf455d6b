//! The engine's token output path (a child of `engine.rs`): prompt logprobs from a prefill
//! chunk's logits, sampling every sequence's next token (spread over threads for large
//! batches), appending a token with the stop rules (length, stop tokens, stop strings,
//! detokenization) and handing the update to the client.

use super::Engine;
use crate::sampling::{self, Sampled};
use crate::scheduler::request::{FinishReason, Output, TokenLogprob};
use crate::scheduler::seq::Seq;
use crate::scheduler::text::StopStep;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

impl Engine {
    pub(super) fn collect_input_lp(&mut self, i: usize, start: usize, n: usize, l: &crate::backend::ChunkLogits) {
        let limit = self.vocab_limit;
        let s = &mut self.running[i];
        let Some((lo, hi)) = s.input_lp_rows() else { return };
        for r in 0..n.min(l.rows) {
            let p = start + r;
            if p < lo || p > hi {
                continue;
            }
            let row = &l.row(r)[..limit.min(l.row(r).len())];
            let next = s.tokens[p + 1];
            let lse = sampling::log_sum_exp(row, 1.0);
            let lp = |id: usize| (row[id] as f64 - lse) as f32;
            s.input_lp.push(TokenLogprob {
                id: next,
                logprob: Some(if (next as usize) < row.len() { lp(next as usize) } else { f32::NEG_INFINITY }),
                top: sampling::top_n(row, s.lp_want.top_n).into_iter().map(|t| (t as u32, lp(t))).collect(),
                ids: s.lp_want.ids.iter().map(|&t| (t, if (t as usize) < row.len() { lp(t as usize) } else { f32::NEG_INFINITY })).collect(),
            });
        }
    }

    /// Samples the next token of every sequence in `jobs` (running index, logits row; in
    /// increasing index order). Large batches are spread over a few threads: each
    /// sequence's sampler is independent, and a vocabulary-sized row per token is the
    /// scheduler's main CPU cost.
    pub(super) fn sample_all(&mut self, jobs: &[(usize, &[f32])]) -> Vec<Sampled> {
        let (eos, limit) = (&self.cfg.eos_token_ids, self.vocab_limit);
        let mut work: Vec<(&mut Seq, &[f32])> = Vec::with_capacity(jobs.len());
        let mut next = jobs.iter().peekable();
        for (i, s) in self.running.iter_mut().enumerate() {
            if let Some(&&(j, row)) = next.peek() {
                if i == j {
                    work.push((s, row));
                    next.next();
                }
            }
        }
        assert_eq!(work.len(), jobs.len(), "sampling jobs must come in running order");
        let one = |(s, row): &mut (&mut Seq, &[f32])| {
            let banned: Vec<u32> = if s.out_len() < s.req.stop.min_new_tokens {
                eos.iter().chain(&s.req.stop.stop_token_ids).copied().collect()
            } else {
                vec![]
            };
            let smp = s.sampler.sample(row, limit, &banned, &s.lp_want);
            s.sampler.observe(smp.token);
            smp
        };
        let threads = if work.len() >= 16 { self.sample_threads.min(work.len() / 8) } else { 1 };
        if threads <= 1 {
            return work.iter_mut().map(one).collect();
        }
        let per = work.len().div_ceil(threads);
        std::thread::scope(|sc| {
            let handles: Vec<_> = work.chunks_mut(per).map(|ch| sc.spawn(move || ch.iter_mut().map(one).collect::<Vec<_>>())).collect();
            handles.into_iter().flat_map(|h| h.join().expect("sampling thread panicked")).collect()
        })
    }

    /// Appends a sampled token to running[i], applies the stop rules and sends a
    /// streaming update, or returns the final output when the request is done.
    pub(super) fn on_token(&mut self, i: usize, sampled: Sampled) -> Option<Output> {
        let out = self.append_token(i, sampled);
        self.deliver(i, out)
    }

    /// Appends a token to running[i] and applies the stop rules: the update it makes.
    pub(super) fn append_token(&mut self, i: usize, sampled: Sampled) -> Output {
        let eos = &self.cfg.eos_token_ids;
        let codec = self.codec.clone();
        let s = &mut self.running[i];
        let t = sampled.token;
        s.tokens.push(t);
        let now = Instant::now();
        match s.last_token_at {
            None => self.stats.ttft.observe(now.duration_since(s.req.arrival).as_secs_f64()),
            Some(prev) => self.stats.itl.observe(now.duration_since(prev).as_secs_f64()),
        }
        s.first_token_at.get_or_insert(now);
        s.last_token_at = Some(now);
        self.stats.generation_tokens.fetch_add(1, Relaxed);

        let stop = &s.req.stop;
        let mut finish = if s.out_len() >= s.max_new {
            Some(FinishReason::Length(s.max_new))
        } else if !stop.ignore_eos && (stop.stop_token_ids.contains(&t) || eos.contains(&t)) {
            Some(FinishReason::StopToken(t))
        } else {
            None
        };
        let trim_token = matches!(finish, Some(FinishReason::StopToken(_))) && !stop.no_stop_trim;
        let mut text = if trim_token { String::new() } else { s.detok.push(&*codec, t) };
        if finish.is_some() {
            text.push_str(&s.detok.finish(&*codec));
            let mut all = s.stopper.flush();
            all.push_str(&text);
            text = all;
        } else {
            match s.stopper.push(&text) {
                StopStep::Emit(e) => text = e,
                StopStep::Matched { emit, stop } => {
                    text = emit;
                    finish = Some(FinishReason::StopString(stop));
                }
            }
        }
        let lp = TokenLogprob { id: t, logprob: sampled.logprob, top: sampled.top, ids: sampled.ids };
        let mut out = Output {
            ids: vec![t],
            text,
            logprobs: if s.req.logprobs.enabled { vec![lp] } else { vec![] },
            input_logprobs: None,
            finish,
            prompt_tokens: s.prompt_len,
            cached_tokens: s.cached_tokens,
            spec: self.spec.as_ref().map(|_| s.spec),
        };
        if s.req.logprobs.enabled && !s.input_lp.is_empty() {
            out.input_logprobs = Some(std::mem::take(&mut s.input_lp));
        }
        out
    }

    /// Sends a non-final update; returns the output instead when the request is done
    /// (finished, or its client went away).
    pub(super) fn deliver(&mut self, i: usize, out: Output) -> Option<Output> {
        if out.finish.is_some() {
            return Some(out);
        }
        if self.running[i].tx.send(out).is_err() {
            return Some(Output { finish: Some(FinishReason::abort("the client disconnected", None)), ..Default::default() });
        }
        None
    }
}
