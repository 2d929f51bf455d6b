//! The scheduler loop (runs on its own thread, owns the backend).

use super::cache::{self, PrefixCacheState};
use super::policy::{self, CutSchedule};
use super::pool::{BlockPool, SlotPool};
use super::prefix_cache::Hit;
use super::request::{FinishReason, Output, TokenLogprob};
use super::stats::Stats;
use super::text::{Detok, StopStrings};
use super::seq::{input_lp_start, Seq};
use super::speculative::SpecRuntime;
use super::{Codec, Command, SchedulerConfig, Submission};
use crate::backend::{Backend, SeqChunk, Want};
use crate::sampling::{LogprobWant, Sampled, Sampler};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

// Speculative decoding: the per-step cycle of draft + verify + burst emission.
#[path = "spec_step.rs"]
mod spec_step;
// The token output path: input logprobs, sampling, stop rules, delivery.
#[path = "emit.rs"]
mod emit;

pub(crate) struct Engine {
    backend: Box<dyn Backend>,
    codec: Arc<dyn Codec>,
    cfg: SchedulerConfig,
    vocab_limit: usize,
    stats: Arc<Stats>,
    rx: Receiver<Command>,
    slots: SlotPool,
    blocks: BlockPool,
    waiting: VecDeque<Seq>,
    /// In admission order (the last is the newest, retracted first).
    running: Vec<Seq>,
    drain_deadline: Option<Instant>,
    disconnected: bool,
    /// Threads for sampling large batches.
    sample_threads: usize,
    /// Where prompts are cut into prefill chunks (the prefix cache's cuts when it is on).
    cuts: CutSchedule,
    prefix_cache: Option<PrefixCacheState>,
    /// Speculative decoding policy and measurements (None: off).
    spec: Option<SpecRuntime>,
}

impl Engine {
    pub fn new(
        backend: Box<dyn Backend>,
        codec: Arc<dyn Codec>,
        cfg: SchedulerConfig,
        vocab_limit: usize,
        stats: Arc<Stats>,
        rx: Receiver<Command>,
    ) -> Self {
        let cap = backend.capacity();
        let sample_threads = match cfg.sample_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).clamp(1, 8),
            n => n,
        };
        // Prefill chunks end at fixed absolute positions, never where the budget happens to
        // run out: a prompt is then cut the same way alone or under load, so its numerics
        // (GEMM path, GDN chunking) never depend on other requests.
        let snapshots = backend.snapshot_capacity();
        let prefix_cache = cache::cache_cuts(&cfg, &cap, snapshots).map(|cuts| PrefixCacheState::new(cuts, cap.block_size, snapshots));
        let cuts = prefix_cache.as_ref().map_or(CutSchedule::uniform(cache::chunk_budget(&cfg)), |c| *c.cuts());
        let spec = cfg.speculative.clone().map(SpecRuntime::new);
        Engine {
            slots: SlotPool::new(cap.slots, "slot"),
            blocks: BlockPool::new(cap.kv_blocks, cap.block_size),
            backend,
            codec,
            cfg,
            vocab_limit,
            stats,
            rx,
            waiting: VecDeque::new(),
            running: Vec::new(),
            drain_deadline: None,
            disconnected: false,
            sample_threads,
            cuts,
            prefix_cache,
            spec,
        }
    }

    pub fn run(mut self) {
        loop {
            self.pump_commands();
            if let Some(deadline) = self.drain_deadline {
                if Instant::now() >= deadline {
                    self.abort_everything("the server shut down before this request finished", Some(503));
                }
            }
            if self.running.is_empty() && self.waiting.is_empty() && (self.drain_deadline.is_some() || self.disconnected) {
                break;
            }
            self.reap_closed();
            self.admit();
            self.publish();
            if !self.running.is_empty() {
                self.step();
            }
            self.publish();
        }
        // Submissions that raced with the end: answer them rather than drop them.
        while let Ok(c) = self.rx.try_recv() {
            if let Command::Submit(sub) = c {
                self.stats.queued.fetch_sub(1, Relaxed);
                self.stats.active.fetch_sub(1, Relaxed);
                self.stats.requests_aborted.fetch_add(1, Relaxed);
                let _ = sub.tx.send(Output {
                    finish: Some(FinishReason::abort("the server is shutting down", Some(503))),
                    prompt_tokens: sub.req.prompt.len(),
                    ..Default::default()
                });
            }
        }
        self.publish();
    }

    // ---- commands ----

    fn pump_commands(&mut self) {
        let idle = self.running.is_empty() && self.waiting.is_empty();
        if idle && !self.disconnected && self.drain_deadline.is_none() {
            match self.rx.recv() {
                Ok(c) => self.command(c),
                Err(_) => self.disconnected = true,
            }
        }
        loop {
            match self.rx.try_recv() {
                Ok(c) => self.command(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.disconnected = true;
                    break;
                }
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Submit(s) => self.enqueue(*s),
            Command::Cancel(id) => self.abort_where(|s| s.id == id, "the client disconnected", None),
            Command::AbortRid(rid) => self.abort_where(|s| s.req.rid == rid, "aborted by /abort_request", None),
            Command::AbortAll => self.abort_where(|_| true, "aborted by /abort_request (abort_all)", None),
            Command::Shutdown { grace } => {
                let d = Instant::now() + grace;
                self.drain_deadline = Some(self.drain_deadline.map_or(d, |old| old.min(d)));
                // Requests that never started get their 503 now, not after the grace period.
                self.abort_where(|s| !s.ever_admitted, "the server is shutting down", Some(503));
            }
            Command::FlushCache(reply) => {
                let flushed = self.flush_cache();
                self.publish();
                let _ = reply.send(flushed);
            }
        }
    }

    fn flush_cache(&mut self) -> Result<(), String> {
        if !self.running.is_empty() || !self.waiting.is_empty() {
            return Err(format!("{} requests are running and {} waiting", self.running.len(), self.waiting.len()));
        }
        match self.prefix_cache.as_mut() {
            Some(c) => c.flush(&mut self.blocks, &mut *self.backend),
            None => Ok(()),
        }
    }

    fn enqueue(&mut self, sub: Submission) {
        let Submission { id, req, tx } = sub;
        self.stats.prompt_tokens.fetch_add(req.prompt.len() as u64, Relaxed);
        let prompt_len = req.prompt.len();
        let reject = if self.drain_deadline.is_some() {
            Some(("the server is shutting down".to_string(), 503))
        } else if prompt_len == 0 {
            Some(("the prompt is empty".to_string(), 400))
        } else if prompt_len >= self.cfg.context_len {
            Some((
                format!("The input ({prompt_len} tokens) is longer than the model's context length ({} tokens).", self.cfg.context_len),
                400,
            ))
        } else if let Some(bad) = req.prompt.iter().find(|&&t| t as usize >= self.vocab_limit) {
            Some((format!("token id {bad} is outside the vocabulary (0..{})", self.vocab_limit), 400))
        } else {
            None
        };
        if let Some((message, status)) = reject {
            self.stats.queued.fetch_sub(1, Relaxed);
            self.stats.active.fetch_sub(1, Relaxed);
            self.stats.requests_aborted.fetch_add(1, Relaxed);
            let _ = tx.send(Output {
                finish: Some(FinishReason::abort(message, Some(status))),
                prompt_tokens: prompt_len,
                ..Default::default()
            });
            return;
        }
        let max_new = req.stop.max_new_tokens.min(self.cfg.context_len - prompt_len);
        let lp_want = LogprobWant {
            token: req.logprobs.enabled,
            top_n: if req.logprobs.enabled { req.logprobs.top_n } else { 0 },
            ids: if req.logprobs.enabled { req.logprobs.token_ids.clone() } else { vec![] },
        };
        let mut input_lp = Vec::new();
        if req.logprobs.enabled {
            let start = input_lp_start(&req, prompt_len);
            input_lp.push(TokenLogprob { id: req.prompt[start], logprob: None, top: vec![], ids: vec![] });
        }
        let seq = Seq {
            id,
            tokens: req.prompt.clone(),
            prompt_len,
            fed: 0,
            slot: None,
            blocks: Vec::new(),
            max_new,
            sampler: Sampler::new(req.sampling.clone()),
            detok: Detok::new(&*self.codec, &req.prompt, req.stop.skip_special_tokens),
            stopper: StopStrings::new(req.stop.stop.clone(), req.stop.no_stop_trim),
            lp_want,
            input_lp_pending: req.logprobs.enabled,
            input_lp,
            first_token_at: None,
            last_token_at: None,
            ever_admitted: false,
            cached_tokens: 0,
            prefill_end: 0,
            cache_node: None,
            spec: Default::default(),
            req,
            tx,
        };
        if seq.max_new == 0 {
            // Nothing to generate (max_new_tokens 0): finish at once, as SGLang does.
            let mut seq = seq;
            self.stats.queued.fetch_sub(1, Relaxed);
            let out = self.final_output(&mut seq, FinishReason::Length(0), String::new());
            self.finish(seq, out);
            return;
        }
        self.waiting.push_back(seq);
    }

    // ---- aborts and release ----

    fn abort_where(&mut self, pred: impl Fn(&Seq) -> bool, message: &str, status: Option<u16>) {
        let mut i = 0;
        while i < self.waiting.len() {
            if pred(&self.waiting[i]) {
                let mut s = self.waiting.remove(i).expect("index checked");
                self.stats.queued.fetch_sub(1, Relaxed);
                let out = self.final_output(&mut s, FinishReason::abort(message, status), String::new());
                self.finish(s, out);
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            if pred(&self.running[i]) {
                let mut s = self.running.remove(i);
                let out = self.final_output(&mut s, FinishReason::abort(message, status), String::new());
                self.finish(s, out);
            } else {
                i += 1;
            }
        }
    }

    fn abort_everything(&mut self, message: &str, status: Option<u16>) {
        self.abort_where(|_| true, message, status);
    }

    /// Requests whose client went away (output receiver dropped).
    fn reap_closed(&mut self) {
        if self.waiting.iter().chain(self.running.iter()).any(|s| s.tx.is_closed()) {
            self.abort_where(|s| s.tx.is_closed(), "the client disconnected", None);
        }
    }

    /// Frees a sequence's slot and blocks; `take`/`drain` make a second call a no-op.
    fn release(&mut self, s: &mut Seq) {
        if let Some(slot) = s.slot.take() {
            self.slots.release(slot, s.id);
        }
        self.blocks.release_all(&mut s.blocks);
        if let Some(c) = self.prefix_cache.as_mut() {
            c.release(s, &mut self.blocks, &mut *self.backend);
        }
    }

    /// Releases `s`, sends its final output and records it.
    fn finish(&mut self, mut s: Seq, out: Output) {
        self.release(&mut s);
        let aborted = matches!(out.finish, Some(FinishReason::Abort { .. }));
        let _ = s.tx.send(out);
        self.stats.active.fetch_sub(1, Relaxed);
        if aborted {
            self.stats.requests_aborted.fetch_add(1, Relaxed);
        } else {
            self.stats.requests_finished.fetch_add(1, Relaxed);
        }
        self.stats.e2e.observe(s.req.arrival.elapsed().as_secs_f64());
    }

    fn final_output(&self, s: &mut Seq, reason: FinishReason, mut text: String) -> Output {
        if matches!(reason, FinishReason::Abort { .. }) {
            text.push_str(&s.stopper.flush());
        }
        Output {
            text,
            input_logprobs: self.take_input_lp(s),
            finish: Some(reason),
            prompt_tokens: s.prompt_len,
            cached_tokens: s.cached_tokens,
            ..Default::default()
        }
    }

    fn take_input_lp(&self, s: &mut Seq) -> Option<Vec<TokenLogprob>> {
        (s.req.logprobs.enabled && !s.input_lp.is_empty()).then(|| std::mem::take(&mut s.input_lp))
    }

    // ---- admission ----

    fn admit(&mut self) {
        while let Some(front) = self.waiting.front() {
            if self.running.len() >= self.cfg.max_running || self.slots.free_count() == 0 {
                break;
            }
            // The cached prefix to resume from (its path locked), or a fresh start.
            let running = self.running.len();
            let hit = match self.prefix_cache.as_mut() {
                Some(c) => {
                    let limit = policy::resume_limit(front.tokens.len(), front.input_lp_rows().map(|(lo, _)| lo));
                    c.admit(&front.tokens, limit, running, &mut self.blocks, &mut *self.backend)
                }
                None => policy::admits(self.blocks.free_count(), self.blocks.blocks_for(front.tokens.len() + 1), running).then(Hit::default),
            };
            let Some(hit) = hit else { break };
            let mut s = self.waiting.pop_front().expect("front exists");
            self.stats.queued.fetch_sub(1, Relaxed);
            let slot = self.slots.alloc(s.id).expect("a slot is free");
            s.slot = Some(slot);
            self.blocks.retain(&hit.blocks);
            s.blocks.clone_from(&hit.blocks);
            let grown = self.blocks.grow(&mut s.blocks, s.tokens.len() + 1);
            debug_assert!(grown);
            s.fed = hit.pos;
            s.cached_tokens = hit.pos;
            self.stats.cached_tokens.fetch_add(hit.pos as u64, Relaxed);
            s.prefill_end = s.tokens.len();
            s.cache_node = self.prefix_cache.is_some().then_some(hit.node);
            if !s.ever_admitted {
                s.ever_admitted = true;
                self.stats.queue_time.observe(s.req.arrival.elapsed().as_secs_f64());
            }
            let started = match hit.snapshot {
                Some(snapshot) => self.backend.restore_state(snapshot, slot),
                None => self.backend.reset_slot(slot),
            };
            if let Err(e) = started {
                self.stats.backend_errors.fetch_add(1, Relaxed);
                let out = self.final_output(&mut s, FinishReason::abort(format!("backend error: {e:#}"), Some(500)), String::new());
                self.finish(s, out);
                continue;
            }
            self.running.push(s);
        }
    }

    /// Puts the sequence at `idx` back at the front of the queue, freeing its state.
    fn retract(&mut self, idx: usize) {
        let mut s = self.running.remove(idx);
        self.release(&mut s);
        s.fed = 0;
        if s.input_lp_pending {
            s.input_lp.truncate(1);
        }
        self.stats.retractions.fetch_add(1, Relaxed);
        self.stats.queued.fetch_add(1, Relaxed);
        self.waiting.push_front(s);
    }

    /// Makes sure every running sequence has blocks for the tokens it holds after this
    /// step, retracting the newest sequences when the pool runs dry.
    fn reserve_blocks(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let need = self.running[i].tokens.len();
            let s = &mut self.running[i];
            if self.blocks.grow(&mut s.blocks, need) {
                i += 1;
                continue;
            }
            // Cached spans nobody uses go before a running sequence does.
            let short = self.blocks.blocks_for(need) - s.blocks.len();
            if let Some(c) = self.prefix_cache.as_mut() {
                if c.make_room(short, &mut self.blocks, &mut *self.backend) {
                    continue;
                }
            }
            if self.running.len() == 1 {
                // Cannot happen when the pool holds one full-length sequence (checked at
                // start-up); fail the request rather than spin.
                let mut s = self.running.remove(0);
                let out = self.final_output(&mut s, FinishReason::abort("KV cache exhausted", Some(500)), String::new());
                self.finish(s, out);
                return;
            }
            let victim = self.running.len() - 1;
            self.retract(victim);
            // Retry i (unless it was the victim itself).
        }
    }

    // ---- one step ----

    fn step(&mut self) {
        let started = Instant::now();
        self.reserve_blocks();
        if self.running.is_empty() {
            return;
        }
        // Sequences that run a draft + verify cycle this step (spec_step.rs).
        let spec_rows = self.plan_speculation();
        let mut speculating = vec![false; self.running.len()];
        spec_rows.iter().for_each(|r| speculating[r.idx] = true);
        let spec_extra: usize = spec_rows.iter().map(|r| r.k).sum();
        // Plan: (index into running, tokens, want). The budget covers every token of the
        // step: one per decoding sequence first (k + 1 per speculating one), prefill chunks
        // from what is left.
        let decoding = self.running.iter().filter(|s| s.tokens.len() - s.fed == 1).count();
        let budget = self.cfg.chunked_prefill_size.saturating_sub(decoding + spec_extra);
        let prefill_len = self.prefills_that_fit(&speculating, budget);
        let mut plan: Vec<(usize, usize, Want)> = Vec::new();
        let vocab_limit = self.vocab_limit;
        for (i, s) in self.running.iter().enumerate() {
            // A decode row always runs (speculating ones run in their own cycle); a prefill
            // chunk when the policy fitted it into the budget.
            let decode = !speculating[i] && s.tokens.len() - s.fed == 1;
            let Some(n) = (if decode { Some(1) } else { prefill_len[i] }) else { continue };
            let needs_rows = s.input_lp_rows().is_some_and(|(lo, hi)| s.fed <= hi && s.fed + n > lo);
            let last = s.fed + n == s.tokens.len();
            // Greedy without penalties, logprobs or banned stop tokens needs only the argmax,
            // which a device backend computes without copying the logits out; a grammar's
            // mask goes along (`SeqChunk::allowed`), computed below for the rows that run.
            let p = s.sampler.params();
            let device_greedy = p.is_greedy() && !p.has_penalties() && !s.lp_want.any() && s.out_len() >= s.req.stop.min_new_tokens;
            let want = if needs_rows {
                Want::All
            } else if last && device_greedy {
                Want::Argmax { limit: vocab_limit }
            } else if last {
                Want::Last
            } else {
                Want::Nothing
            };
            plan.push((i, n, want));
        }
        // Grammar masks of the greedy rows, computed on the CPU before the step and alive
        // through `forward`; the chosen token advances the grammar in `observe`.
        let masks: Vec<Option<Vec<u32>>> = plan
            .iter()
            .map(|&(i, _, want)| match want {
                Want::Argmax { .. } => self.running[i].sampler.device_mask(),
                _ => None,
            })
            .collect();
        let t0 = Instant::now();
        let result = if plan.is_empty() {
            Ok(vec![])
        } else {
            let chunks: Vec<SeqChunk<'_>> = plan
                .iter()
                .zip(&masks)
                .map(|(&(i, n, want), mask)| {
                    let s = &self.running[i];
                    SeqChunk {
                        slot: s.slot.expect("running sequences hold a slot"),
                        start_pos: s.fed,
                        tokens: &s.tokens[s.fed..s.fed + n],
                        blocks: &s.blocks,
                        want,
                        allowed: mask.as_deref(),
                    }
                })
                .collect();
            self.backend.forward(&chunks)
        };
        let decode_only = spec_rows.is_empty() && !plan.is_empty() && plan.iter().all(|p| p.1 == 1);
        if decode_only {
            self.stats.decode_forward.observe(t0.elapsed().as_secs_f64());
        }
        self.observe_plain_step(&plan, spec_rows.is_empty(), t0.elapsed().as_secs_f64());
        self.stats.steps.fetch_add(1, Relaxed);
        let logits = match result {
            Ok(l) if l.len() == plan.len() => l,
            other => {
                let msg = match other {
                    Err(e) => format!("backend error: {e:#}"),
                    Ok(l) => format!("backend error: {} logits for {} chunks", l.len(), plan.len()),
                };
                tracing::error!("{msg}");
                self.stats.backend_errors.fetch_add(1, Relaxed);
                let ids: Vec<u64> = plan.iter().map(|&(i, _, _)| self.running[i].id).collect();
                self.abort_where(|s| ids.contains(&s.id), &msg, Some(500));
                return;
            }
        };
        let mut done: Vec<(usize, Output)> = Vec::new();
        let mut jobs: Vec<(usize, &[f32])> = Vec::new();
        let mut greedy_tokens: Vec<(usize, u32)> = Vec::new();
        let mut generated = 0usize;
        for (&(i, n, want), l) in plan.iter().zip(&logits) {
            let start = self.running[i].fed;
            self.running[i].fed += n;
            if let Some(c) = self.prefix_cache.as_mut() {
                c.after_chunk(&mut self.running[i], &mut self.blocks, &mut *self.backend);
            }
            if want == Want::All {
                self.collect_input_lp(i, start, n, l);
            }
            let s = &self.running[i];
            if s.fed < s.tokens.len() {
                continue;
            }
            if s.fed >= s.prompt_len {
                self.running[i].input_lp_pending = false;
            }
            if let Some(tok) = l.argmax {
                greedy_tokens.push((i, tok));
                continue;
            }
            let Some(row) = l.last() else {
                let out = Output { finish: Some(FinishReason::abort("backend error: no logits", Some(500))), ..Default::default() };
                done.push((i, out));
                continue;
            };
            jobs.push((i, row));
        }
        let sampled = self.sample_all(&jobs);
        for (i, tok) in greedy_tokens {
            generated += 1;
            self.running[i].sampler.observe(tok);
            if let Some(out) = self.on_token(i, Sampled { token: tok, ..Default::default() }) {
                done.push((i, out));
            }
        }
        for (&(i, _), smp) in jobs.iter().zip(sampled) {
            generated += 1;
            if let Some(out) = self.on_token(i, smp) {
                done.push((i, out));
            }
        }
        generated += self.run_speculation(&spec_rows, &mut done);
        let dt = t0.elapsed().as_secs_f64();
        if generated > 0 && dt > 0.0 {
            let old = self.stats.gen_throughput();
            let now = generated as f64 / dt;
            let v = if old == 0.0 { now } else { 0.9 * old + 0.1 * now };
            self.stats.gen_throughput_bits.store(v.to_bits(), Relaxed);
        }
        // Remove finished sequences (highest index first so indices stay valid).
        done.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (i, out) in done {
            let s = self.running.remove(i);
            self.finish(s, out);
        }
        if decode_only {
            self.stats.decode_step.observe(started.elapsed().as_secs_f64());
        }
    }

    /// The chunk length of each prefilling sequence that runs this step (None for the
    /// others): the schedule policy's order decides which chunks take the `budget` first.
    fn prefills_that_fit(&self, speculating: &[bool], mut budget: usize) -> Vec<Option<usize>> {
        let now = Instant::now();
        let prefill: Vec<usize> = (0..self.running.len()).filter(|&i| !speculating[i] && self.running[i].tokens.len() - self.running[i].fed > 1).collect();
        let cands: Vec<(usize, f64)> = prefill
            .iter()
            .map(|&i| {
                let s = &self.running[i];
                (s.tokens.len() - s.fed, now.saturating_duration_since(s.req.arrival).as_secs_f64() * 1e3)
            })
            .collect();
        let mut len = vec![None; self.running.len()];
        for j in self.cfg.schedule_policy.prefill_order(&cands) {
            let s = &self.running[prefill[j]];
            let n = policy::chunk_len(s.fed, s.tokens.len(), &self.cuts);
            if n <= budget {
                budget -= n;
                len[prefill[j]] = Some(n);
            }
        }
        len
    }

    // ---- bookkeeping ----

    fn publish(&mut self) {
        let st = &self.stats;
        st.running.store(self.running.len(), Relaxed);
        st.waiting_tokens.store(self.waiting.iter().map(|s| s.tokens.len()).sum(), Relaxed);
        st.slots_used.store(self.slots.used(), Relaxed);
        let cached = self.prefix_cache.as_ref().map_or(0, |c| c.evictable_blocks(&self.blocks));
        st.blocks_used.store(self.blocks.used() - cached, Relaxed);
        st.blocks_cached.store(cached, Relaxed);
        st.snapshots_cached.store(self.prefix_cache.as_ref().map_or(0, |c| c.tree().snapshot_count()), Relaxed);
        if cfg!(debug_assertions) || self.cfg.check_invariants {
            self.check_invariants();
        }
    }

    fn check_invariants(&self) {
        if let Err(e) = self.slots.check().and_then(|_| self.blocks.check()) {
            panic!("scheduler invariant broken: {e}");
        }
        // Each block's references: one per running sequence listing it, one if the cache holds it.
        let mut refs = std::collections::HashMap::<u32, u32>::new();
        let cached = self.prefix_cache.iter().flat_map(|c| c.tree().blocks());
        for b in self.running.iter().flat_map(|s| s.blocks.iter().copied()).chain(cached) {
            *refs.entry(b).or_default() += 1;
        }
        assert_eq!(refs.len(), self.blocks.used(), "blocks referenced != blocks in use");
        if let Some((b, n)) = refs.iter().find(|(b, n)| self.blocks.refcount(**b) != **n) {
            panic!("block {b}: {n} holders but refcount {}", self.blocks.refcount(*b));
        }
        if let Some(c) = &self.prefix_cache {
            c.tree().check().unwrap_or_else(|e| panic!("prefix cache: {e}"));
        }
        assert_eq!(self.running.len(), self.slots.used(), "running sequences != slots in use");
        assert!(self.waiting.iter().all(|s| s.slot.is_none() && s.blocks.is_empty()), "a waiting sequence holds state");
    }
}
