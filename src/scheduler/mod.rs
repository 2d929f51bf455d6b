//! The scheduler: one thread owns the backend and runs continuous batching.
//!
//! Each step it drops cancelled requests, admits waiting ones (FIFO) while state slots
//! and KV blocks allow, gives every decoding sequence one token and the prefilling ones
//! chunks from what is left of the `chunked_prefill_size` per-step token budget, runs one `forward`, samples,
//! applies the stop rules, and sends each request its `Output`. When decode needs a KV
//! block and none is free, the newest sequence is retracted (its blocks freed, put back
//! at the front of the queue to be re-prefilled from its tokens so far).
//!
//! A prefix cache (on unless `--disable-radix-cache`, and only on a backend with state
//! snapshots) lets a request resume from the longest cached prefix of its prompt, with
//! bit-identical results (see `policy.rs`).
//!
//! Files: `mod.rs` (this: config, handle, tickets), `engine.rs` (the loop) with `emit.rs`
//! (its token output path: sampling, stop rules, delivery), `policy.rs`
//! (pure decisions: chunk cuts, admission, what to cache), `pool.rs` (slot and block
//! pools), `prefix_cache.rs` (the cache's tree), `cache.rs` (the cache in the loop),
//! `request.rs` (request/output types), `seq.rs` (per-request state), `text.rs` (detokenizer,
//! stop strings), `codec.rs` (tokenizer trait), `stats.rs` (metrics), `speculative.rs` (MTP
//! speculation policy) with `spec_step.rs` (its step in the loop).

mod cache;
pub mod codec;
mod engine;
pub mod policy;
pub mod pool;
pub mod prefix_cache;
pub mod request;
mod seq;
pub mod speculative;
pub mod stats;
pub mod text;

pub use codec::Codec;
pub use policy::SchedulePolicy;
pub use speculative::{SpecConfig, SpecCounts, SpecPolicy};
pub use request::{FinishReason, GenRequest, LogprobConfig, Output, StopConfig, TokenLogprob};
pub use stats::Stats;

use crate::backend::{Backend, Capacity};
use crate::config::ModelConfig;
use anyhow::{ensure, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::mpsc as tmpsc;

/// Scheduler settings (the server derives them from its flags).
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Most sequences running at once (capped by the backend's slots).
    pub max_running: usize,
    /// Tokens per step: one per decoding sequence, prefill chunks share the rest.
    pub chunked_prefill_size: usize,
    /// Requests that may wait for a slot; beyond this, submissions are refused.
    pub max_queued: usize,
    /// Longest sequence (prompt + output); capped by the backend's max_seq_len and pool.
    pub context_len: usize,
    /// Ids that end generation unless `ignore_eos` (config ∪ generation_config ∪ tokenizer).
    pub eos_token_ids: Vec<u32>,
    /// Threads that sample large batches (0 = one less than the cores, at most 8).
    pub sample_threads: usize,
    /// Prefix cache (`--disable-radix-cache` turns it off; a backend without state
    /// snapshots has none).
    pub prefix_cache: bool,
    /// Tokens to the first cached state, and the first prefill chunk, when the prefix
    /// cache is on (later cuts double up to the step budget): SGLang's
    /// `--mamba-track-interval`.
    pub prefix_cache_interval: usize,
    /// Check the pool and cache invariants after every step (always in debug builds;
    /// tests turn it on in release builds).
    pub check_invariants: bool,
    /// Speculative decoding with the model's MTP head (None: off).
    pub speculative: Option<SpecConfig>,
    /// Which prefill chunks take the step budget first (`--schedule-policy`).
    pub schedule_policy: SchedulePolicy,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_running: usize::MAX,
            chunked_prefill_size: 8192,
            max_queued: 4096,
            context_len: usize::MAX,
            eos_token_ids: vec![],
            sample_threads: 0,
            prefix_cache: true,
            prefix_cache_interval: 256,
            check_invariants: false,
            speculative: None,
            schedule_policy: SchedulePolicy::ShortestPrefill,
        }
    }
}

/// Fixed facts about the running scheduler, for the server.
#[derive(Clone, Debug)]
pub struct SchedulerInfo {
    pub backend: &'static str,
    pub model: ModelConfig,
    pub capacity: Capacity,
    /// Effective limits after capping by the backend.
    pub config: SchedulerConfig,
    /// Valid token ids are below this (the tokenizer's vocabulary).
    pub vocab_limit: usize,
}

pub(crate) enum Command {
    Submit(Box<Submission>),
    Cancel(u64),
    AbortRid(String),
    AbortAll,
    Shutdown { grace: Duration },
    /// Empty the prefix cache; refused (Err with the reason) while requests run or wait.
    FlushCache(tokio::sync::oneshot::Sender<std::result::Result<(), String>>),
}

pub(crate) struct Submission {
    pub id: u64,
    pub req: GenRequest,
    pub tx: tmpsc::UnboundedSender<Output>,
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("the waiting queue is full ({limit} requests are waiting); retry later")]
    QueueFull { limit: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
}

struct Shared {
    tx: Mutex<mpsc::Sender<Command>>,
    stats: Arc<Stats>,
    info: SchedulerInfo,
    next_id: AtomicU64,
    accepting: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Cheap to clone; the scheduler thread ends when the last handle (and ticket) is gone
/// or after `shutdown`.
#[derive(Clone)]
pub struct SchedulerHandle {
    shared: Arc<Shared>,
}

/// Starts the scheduler thread on `backend`.
pub fn spawn(backend: Box<dyn Backend>, codec: Arc<dyn Codec>, mut cfg: SchedulerConfig) -> Result<SchedulerHandle> {
    let cap = backend.capacity();
    ensure!(cap.slots > 0, "backend has no state slots");
    ensure!(cap.kv_blocks > 0 && cap.block_size > 0, "backend has no KV blocks");
    cfg.max_running = cfg.max_running.clamp(1, cap.slots);
    // The step budget must leave room for a prefill token beside a full decode batch.
    cfg.chunked_prefill_size = cfg.chunked_prefill_size.max(cfg.max_running + 1);
    // One sequence must always fit: its tokens in max_seq_len and its blocks in the pool.
    cfg.context_len = cfg.context_len.min(cap.max_seq_len).min(cap.kv_blocks * cap.block_size);
    ensure!(cfg.context_len >= 2, "context length {} is too small", cfg.context_len);
    // Record whether the prefix cache really runs (the backend may keep no snapshots).
    cfg.prefix_cache = cache::cache_cuts(&cfg, &cap, backend.snapshot_capacity()).is_some();
    ensure!(
        cfg.speculative.is_none() || backend.supports_speculation(),
        "speculative decoding needs a model with an MTP head (mtp.* tensors) on a backend that runs it; the {} backend here cannot",
        backend.name()
    );
    let vocab_limit = codec.vocab_size().min(backend.config().vocab_size);
    let info = SchedulerInfo { backend: backend.name(), model: backend.config().clone(), capacity: cap, config: cfg.clone(), vocab_limit };
    let stats = Arc::new(Stats::default());
    stats.slots_total.store(cap.slots, Relaxed);
    stats.blocks_total.store(cap.kv_blocks, Relaxed);
    let (tx, rx) = mpsc::channel();
    let engine = engine::Engine::new(backend, codec, cfg, vocab_limit, stats.clone(), rx);
    let thread = std::thread::Builder::new().name("kiln-scheduler".into()).spawn(move || engine.run())?;
    Ok(SchedulerHandle {
        shared: Arc::new(Shared {
            tx: Mutex::new(tx),
            stats,
            info,
            next_id: AtomicU64::new(1),
            accepting: AtomicBool::new(true),
            thread: Mutex::new(Some(thread)),
        }),
    })
}

impl SchedulerHandle {
    fn send(&self, c: Command) -> bool {
        self.shared.tx.lock().map(|tx| tx.send(c).is_ok()).unwrap_or(false)
    }

    pub fn info(&self) -> &SchedulerInfo {
        &self.shared.info
    }
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
    pub fn is_accepting(&self) -> bool {
        self.shared.accepting.load(Relaxed)
    }
    /// True while the scheduler thread runs.
    pub fn is_alive(&self) -> bool {
        self.shared.thread.lock().map(|t| t.as_ref().is_some_and(|h| !h.is_finished())).unwrap_or(false)
    }

    /// Queues a request. Its outputs arrive on the ticket; dropping the ticket before the
    /// final output aborts the request.
    pub fn submit(&self, req: GenRequest) -> std::result::Result<Ticket, SubmitError> {
        let st = &self.shared.stats;
        if !self.is_accepting() {
            st.requests_rejected.fetch_add(1, Relaxed);
            return Err(SubmitError::ShuttingDown);
        }
        let limit = self.shared.info.config.max_queued;
        let admitted = st.queued.fetch_update(Relaxed, Relaxed, |q| (q < limit).then_some(q + 1));
        if admitted.is_err() {
            st.requests_rejected.fetch_add(1, Relaxed);
            return Err(SubmitError::QueueFull { limit });
        }
        let id = self.shared.next_id.fetch_add(1, Relaxed);
        let (tx, rx) = tmpsc::unbounded_channel();
        st.requests_submitted.fetch_add(1, Relaxed);
        st.active.fetch_add(1, Relaxed);
        if !self.send(Command::Submit(Box::new(Submission { id, req, tx }))) {
            st.queued.fetch_sub(1, Relaxed);
            st.active.fetch_sub(1, Relaxed);
            st.requests_aborted.fetch_add(1, Relaxed);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(Ticket { id, rx, handle: self.clone(), done: false })
    }

    /// Aborts a request by internal id (what a dropped ticket does).
    pub fn cancel(&self, id: u64) {
        self.send(Command::Cancel(id));
    }
    /// Aborts every request whose rid is `rid`.
    pub fn abort_rid(&self, rid: &str) {
        self.send(Command::AbortRid(rid.to_string()));
    }
    pub fn abort_all(&self) {
        self.send(Command::AbortAll);
    }

    /// Empties the prefix cache, as SGLang's `/flush_cache`: refused (with the reason)
    /// while requests are running or waiting.
    pub async fn flush_cache(&self) -> std::result::Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !self.send(Command::FlushCache(tx)) {
            return Err("the scheduler is not running".into());
        }
        rx.await.unwrap_or_else(|_| Err("the scheduler stopped".into()))
    }
    /// `flush_cache` for callers outside an async runtime.
    pub fn flush_cache_blocking(&self) -> std::result::Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !self.send(Command::FlushCache(tx)) {
            return Err("the scheduler is not running".into());
        }
        rx.blocking_recv().unwrap_or_else(|_| Err("the scheduler stopped".into()))
    }

    /// Stops accepting requests; running and queued ones may finish for `grace`, then
    /// the rest are aborted (status 503) and the thread ends. Blocks until it has.
    pub fn shutdown(&self, grace: Duration) {
        self.shared.accepting.store(false, Relaxed);
        self.send(Command::Shutdown { grace });
        let t = self.shared.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

/// A submitted request's output channel.
pub struct Ticket {
    pub id: u64,
    rx: tmpsc::UnboundedReceiver<Output>,
    handle: SchedulerHandle,
    done: bool,
}

impl Ticket {
    /// The next update; `None` if the scheduler went away without finishing it.
    pub async fn recv(&mut self) -> Option<Output> {
        let o = self.rx.recv().await;
        if o.as_ref().is_none_or(|o| o.finish.is_some()) {
            self.done = true;
        }
        o
    }
    /// Blocking variant for non-async callers (tests, warm-up).
    pub fn blocking_recv(&mut self) -> Option<Output> {
        let o = self.rx.blocking_recv();
        if o.as_ref().is_none_or(|o| o.finish.is_some()) {
            self.done = true;
        }
        o
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.handle.cancel(self.id);
        }
    }
}
