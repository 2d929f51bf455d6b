//! The prefix cache is exact: through the scheduler on the CPU backend (the demo model and
//! the tiny HF fixture), a request served from the cache gets bit-identical logits and
//! tokens to the same request on an empty cache, alone, under concurrency and under
//! eviction pressure; the pool and cache invariants hold after every step; `flush_cache`
//! empties everything when idle and is refused while requests run. Over HTTP with the
//! demo model and the real tokenizer: `meta_info.cached_tokens`, OpenAI
//! `usage.prompt_tokens_details.cached_tokens`, `/flush_cache`.

mod common;

use common::mock::{ByteCodec, MockBackend};
use common::server::TestServer;
use kiln::backend::cpu::CpuBackend;
use kiln::backend::{Backend, Capacity, ChunkLogits, SeqChunk, SnapshotId};
use kiln::config::ModelConfig;
use kiln::sampling::SamplingParams;
use kiln::scheduler::{self, GenRequest, SchedulerConfig, SchedulerHandle, StopConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Logits rows by (slot, absolute position), as the backend returned them.
type Rows = Arc<Mutex<Vec<(usize, usize, Vec<u32>)>>>;

/// A CPU backend that records every logits row it returns (as bits).
struct Recorder {
    inner: CpuBackend,
    rows: Rows,
}

impl Backend for Recorder {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn capacity(&self) -> Capacity {
        self.inner.capacity()
    }
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> anyhow::Result<Vec<ChunkLogits>> {
        let out = self.inner.forward(chunks)?;
        let mut rows = self.rows.lock().unwrap();
        for (c, l) in chunks.iter().zip(&out) {
            let first = c.start_pos + c.tokens.len() - l.rows;
            rows.extend((0..l.rows).map(|r| (c.slot, first + r, l.row(r).iter().map(|x| x.to_bits()).collect())));
        }
        Ok(out)
    }
    fn reset_slot(&mut self, slot: usize) -> anyhow::Result<()> {
        self.inner.reset_slot(slot)
    }
    fn snapshot_capacity(&self) -> usize {
        self.inner.snapshot_capacity()
    }
    fn snapshot_state(&mut self, slot: usize) -> anyhow::Result<SnapshotId> {
        self.inner.snapshot_state(slot)
    }
    fn restore_state(&mut self, snapshot: SnapshotId, slot: usize) -> anyhow::Result<()> {
        self.inner.restore_state(snapshot, slot)
    }
    fn drop_snapshot(&mut self, snapshot: SnapshotId) -> anyhow::Result<()> {
        self.inner.drop_snapshot(snapshot)
    }
}

fn demo_backend(cap: Capacity) -> CpuBackend {
    let (cfg, w) = kiln::demo::demo_weights();
    CpuBackend::new(cfg, w, cap).unwrap()
}

fn fixture_backend(cap: Capacity) -> CpuBackend {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_official");
    let (cfg, w) = kiln::checkpoint::load(&dir).unwrap();
    CpuBackend::new(cfg, w, cap).unwrap()
}

/// 4 slots of 768 tokens; 256-token steps (chunks of at most 252): the cache's cuts are
/// at 32, 64, 128, 256, 480, ...
fn cap4() -> Capacity {
    Capacity { slots: 4, block_size: 16, kv_blocks: 4 * 48, max_seq_len: 768 }
}

fn sched_cfg() -> SchedulerConfig {
    SchedulerConfig { chunked_prefill_size: 256, prefix_cache_interval: 32, check_invariants: true, ..Default::default() }
}

fn start(backend: CpuBackend, cfg: SchedulerConfig) -> (SchedulerHandle, Rows) {
    let rows: Rows = Arc::default();
    let rec = Recorder { inner: backend, rows: rows.clone() };
    (scheduler::spawn(Box::new(rec), Arc::new(ByteCodec), cfg).unwrap(), rows)
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(0..256u32)).collect()
}

fn req(prompt: &[u32], max_new: usize) -> GenRequest {
    let stop = StopConfig { max_new_tokens: max_new, ignore_eos: true, ..Default::default() };
    GenRequest::new("r", prompt.to_vec(), SamplingParams::greedy(), stop)
}

/// What one request produced: its tokens, its cache hit, and its logits rows by position.
#[derive(Debug, PartialEq)]
struct Run {
    ids: Vec<u32>,
    cached: usize,
    logits: BTreeMap<usize, Vec<u32>>,
}

fn collect(mut t: scheduler::Ticket) -> (Vec<u32>, usize) {
    let mut ids = vec![];
    loop {
        let o = t.blocking_recv().expect("the scheduler finished the request");
        ids.extend(&o.ids);
        if let Some(f) = o.finish {
            assert!(!matches!(f, scheduler::FinishReason::Abort { .. }), "aborted: {f:?}");
            return (ids, o.cached_tokens);
        }
    }
}

/// Runs one request alone and records its logits.
fn run(h: &SchedulerHandle, rows: &Rows, prompt: &[u32], max_new: usize) -> Run {
    rows.lock().unwrap().clear();
    let (ids, cached) = collect(h.submit(req(prompt, max_new)).unwrap());
    let logits = rows.lock().unwrap().drain(..).map(|(_, pos, row)| (pos, row)).collect();
    Run { ids, cached, logits }
}

/// The same request on an empty cache.
fn fresh(h: &SchedulerHandle, rows: &Rows, prompt: &[u32], max_new: usize) -> Run {
    wait_idle(h);
    h.flush_cache_blocking().unwrap();
    let r = run(h, rows, prompt, max_new);
    assert_eq!(r.cached, 0);
    r
}

fn wait_idle(h: &SchedulerHandle) {
    let t0 = Instant::now();
    while !h.stats().is_idle() {
        assert!(t0.elapsed() < Duration::from_secs(20), "the scheduler never became idle");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Idle and flushed, nothing is held: every reference went back to the pool.
fn assert_empty_after_flush(h: &SchedulerHandle) {
    wait_idle(h);
    h.flush_cache_blocking().unwrap();
    let st = h.stats();
    assert_eq!((st.blocks_used.load(Relaxed), st.blocks_cached.load(Relaxed), st.snapshots_cached.load(Relaxed)), (0, 0, 0));
    assert_eq!(st.slots_used.load(Relaxed), 0);
}

/// The cache's hits are bit-identical to fresh runs: the same prompt again, a prompt
/// sharing only part of it, and a multi-turn follow-up that re-sends the history.
fn hits_are_exact(backend: CpuBackend) {
    let (h, rows) = start(backend, sched_cfg());
    assert!(h.info().config.prefix_cache);
    let p = tokens(300, 1);
    let first = fresh(&h, &rows, &p, 8);
    // The same prompt: resumes at the last cut before its last token (256).
    let again = run(&h, &rows, &p, 8);
    assert_eq!(again.cached, 256);
    assert_eq!(again, Run { cached: 256, ..first }, "a full-prompt hit differs from the fresh run");

    // A prompt sharing 200 tokens: the deepest cut inside them is 128.
    let q: Vec<u32> = p[..200].iter().copied().chain(tokens(60, 2)).collect();
    let hit = run(&h, &rows, &q, 6);
    assert_eq!(hit.cached, 128);
    assert_eq!(hit, Run { cached: 128, ..fresh(&h, &rows, &q, 6) }, "a partial hit differs from the fresh run");

    // The next turn of a chat: the prompt, the answer and a new message.
    run(&h, &rows, &p, 8);
    let turn2: Vec<u32> = p.iter().chain(&again.ids).copied().chain(tokens(40, 3)).collect();
    let hit = run(&h, &rows, &turn2, 6);
    assert_eq!(hit.cached, 256);
    assert_eq!(hit, Run { cached: 256, ..fresh(&h, &rows, &turn2, 6) }, "a multi-turn hit differs from the fresh run");

    // Several requests at once, some sharing a prefix with each other and with the cache.
    let prompts: Vec<Vec<u32>> = (0..6u64).map(|i| p[..64 + 40 * i as usize].iter().copied().chain(tokens(50, 10 + i)).collect()).collect();
    let want: Vec<Vec<u32>> = prompts.iter().map(|q| fresh(&h, &rows, q, 5).ids).collect();
    run(&h, &rows, &p, 1);
    let tickets: Vec<_> = prompts.iter().map(|q| h.submit(req(q, 5)).unwrap()).collect();
    let got: Vec<(Vec<u32>, usize)> = tickets.into_iter().map(collect).collect();
    for (i, (ids, cached)) in got.iter().enumerate() {
        assert_eq!(ids, &want[i], "concurrent request {i} (cached {cached})");
    }
    assert!(got.iter().any(|(_, c)| *c > 0), "no concurrent request hit the cache");
    assert!(h.stats().cached_tokens.load(Relaxed) > 0);
    assert_empty_after_flush(&h);
}

#[test]
fn demo_model_cache_hits_are_bit_identical() {
    hits_are_exact(demo_backend(cap4()));
}

#[test]
fn hf_fixture_cache_hits_are_bit_identical() {
    hits_are_exact(fixture_backend(cap4()));
}

#[test]
fn eviction_under_pressure_keeps_results_exact() {
    // 2 slots, 3 snapshots, 40 blocks of 16 (a running request needs up to 14): spans
    // and snapshots are evicted all the time while requests share a 100-token prefix.
    let cap = Capacity { slots: 2, block_size: 16, kv_blocks: 40, max_seq_len: 320 };
    let (h, rows) = start(demo_backend(cap).with_snapshots(3), sched_cfg());
    let system = tokens(100, 7);
    let prompts: Vec<Vec<u32>> = (0..6u64).map(|i| system.iter().copied().chain(tokens(60 + 20 * i as usize, 20 + i)).collect()).collect();
    let want: Vec<Vec<u32>> = prompts.iter().map(|q| fresh(&h, &rows, q, 6).ids).collect();
    for round in 0..2 {
        let tickets: Vec<_> = prompts.iter().map(|q| h.submit(req(q, 6)).unwrap()).collect();
        for (i, t) in tickets.into_iter().enumerate() {
            assert_eq!(collect(t).0, want[i], "round {round}, request {i}");
        }
        assert!(h.stats().snapshots_cached.load(Relaxed) <= 3);
    }
    assert!(h.stats().cached_tokens.load(Relaxed) > 0, "nothing was served from the cache");
    assert_empty_after_flush(&h);
}

/// A request asking for prompt logprobs from position `from` (runs alone): its cache hit
/// and its input logprobs.
fn prompt_logprobs(h: &SchedulerHandle, prompt: &[u32], from: i64) -> (usize, Vec<scheduler::TokenLogprob>) {
    let mut r = req(prompt, 2);
    r.logprobs = scheduler::LogprobConfig { enabled: true, start_len: from, top_n: 2, token_ids: vec![] };
    let mut t = h.submit(r).unwrap();
    let mut input = vec![];
    loop {
        let o = t.blocking_recv().unwrap();
        input.extend(o.input_logprobs.unwrap_or_default());
        if o.finish.is_some() {
            return (o.cached_tokens, input);
        }
    }
}

#[test]
fn prompt_logprob_rows_are_computed_never_skipped() {
    // The HF fixture: a 1024-row vocabulary keeps 200 rows of prompt logits cheap.
    let (h, rows) = start(fixture_backend(cap4()), sched_cfg());
    let p = tokens(200, 6);
    let fresh_all = { fresh(&h, &rows, &p, 1); h.flush_cache_blocking().unwrap(); prompt_logprobs(&h, &p, 0) };
    let fresh_tail = { h.flush_cache_blocking().unwrap(); prompt_logprobs(&h, &p, 100) };
    run(&h, &rows, &p, 1);
    // From position 0 nothing may come from the cache; from 100, the cut at 64 may.
    let all = prompt_logprobs(&h, &p, 0);
    let tail = prompt_logprobs(&h, &p, 100);
    assert_eq!((all.0, tail.0), (0, 64));
    assert_eq!(all.1.len(), 200);
    assert_eq!(all.1, fresh_all.1);
    assert_eq!(tail.1, fresh_tail.1);
    assert_empty_after_flush(&h);
}

#[test]
fn flush_is_refused_while_requests_run_or_wait() {
    let (h, rows) = start(demo_backend(cap4()), sched_cfg());
    let p = tokens(100, 4);
    run(&h, &rows, &p, 2);
    assert!(h.stats().snapshots_cached.load(Relaxed) > 0);
    // The flush is queued behind the submission, so the request is there when it runs.
    let t = h.submit(req(&p, 30)).unwrap();
    let e = h.flush_cache_blocking().unwrap_err();
    assert!(e.contains("running") && e.contains("waiting"), "{e}");
    let (_, cached) = collect(t);
    assert_eq!(cached, 64, "the refused flush left the cache intact");
    assert_empty_after_flush(&h);
    assert_eq!(run(&h, &rows, &p, 2).cached, 0, "the flush emptied the cache");
}

#[test]
fn the_cache_is_off_when_disabled_or_unsupported() {
    let cfg = SchedulerConfig { prefix_cache: false, ..sched_cfg() };
    let (h, rows) = start(demo_backend(cap4()), cfg);
    assert!(!h.info().config.prefix_cache);
    let p = tokens(100, 5);
    let a = run(&h, &rows, &p, 3);
    let b = run(&h, &rows, &p, 3);
    assert_eq!((a.cached, b.cached), (0, 0));
    assert_eq!(a, b);
    assert_eq!(h.stats().snapshots_cached.load(Relaxed), 0);
    h.flush_cache_blocking().unwrap();
    // A backend without snapshots (the trait's default) has no cache either.
    let mock = MockBackend::new(Capacity { slots: 2, block_size: 16, kv_blocks: 32, max_seq_len: 256 });
    let h = scheduler::spawn(Box::new(mock), Arc::new(ByteCodec), SchedulerConfig::default()).unwrap();
    assert!(!h.info().config.prefix_cache);
    let e = MockBackend::new(Capacity { slots: 1, block_size: 16, kv_blocks: 4, max_seq_len: 64 }).snapshot_state(0).unwrap_err();
    assert!(e.to_string().contains("does not support state snapshots"), "{e}");
}

fn demo_http_server(cfg: SchedulerConfig) -> TestServer {
    let tok = kiln::tokenizer::Tokenizer::bundled().unwrap();
    let server = kiln::server::ServerConfig { enable_cache_report: true, ..Default::default() };
    TestServer::start(Box::new(demo_backend(cap4())), Arc::new(tok), cfg, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reports_hits_and_serves_them_exactly() {
    let s = demo_http_server(sched_cfg());
    let p: Vec<u32> = tokens(300, 8).iter().map(|t| t + 1000).collect();
    let body = json!({"input_ids": p, "return_logprob": true, "top_logprobs_num": 3,
                      "sampling_params": {"temperature": 0, "max_new_tokens": 6, "ignore_eos": true}});
    let info: Value = s.get("/get_server_info").await.json().await.unwrap();
    assert_eq!(info["disable_radix_cache"], false);
    let first = s.post_json("/generate", &body, 200).await;
    let again = s.post_json("/generate", &body, 200).await;
    assert_eq!(first["meta_info"]["cached_tokens"], 0);
    assert_eq!(again["meta_info"]["cached_tokens"], 256);
    assert_eq!(again["output_ids"], first["output_ids"]);
    assert_eq!(again["text"], first["text"]);
    // Logprobs are printed from the f32 logits: equal text means equal bits.
    for k in ["output_token_logprobs", "output_top_logprobs"] {
        assert!(first["meta_info"][k].is_array(), "{k}");
        assert_eq!(again["meta_info"][k], first["meta_info"][k], "{k}");
    }
    // OpenAI completions on the same ids: usage reports the hit.
    let c = s.post_json("/v1/completions", &json!({"model": "m", "prompt": p, "max_tokens": 6, "temperature": 0, "ignore_eos": true}), 200).await;
    assert_eq!(c["usage"]["prompt_tokens_details"], json!({"cached_tokens": 256}));
    assert_eq!(c["usage"]["prompt_tokens"], 300);
    assert_eq!(c["choices"][0]["text"], first["text"]);
    let streamed = s.post_sse("/v1/completions", &json!({"model": "m", "prompt": p, "max_tokens": 2, "stream": true,
        "stream_options": {"include_usage": true}})).await;
    assert_eq!(streamed.last().unwrap()["usage"]["prompt_tokens_details"], json!({"cached_tokens": 256}));

    // /flush_cache empties it: the next request is computed afresh, with the same result.
    s.wait_idle().await;
    let f = s.client.post(s.url("/flush_cache")).send().await.unwrap();
    assert_eq!(f.status(), 200);
    assert!(f.text().await.unwrap().starts_with("Cache flushed."));
    let after = s.post_json("/generate", &body, 200).await;
    assert_eq!(after["meta_info"]["cached_tokens"], 0);
    assert_eq!(after["output_ids"], first["output_ids"]);
    assert_eq!(after["meta_info"]["output_token_logprobs"], first["meta_info"]["output_token_logprobs"]);
}

/// (Refusal while a request runs is checked deterministically in
/// `flush_is_refused_while_requests_run_or_wait`, and over HTTP in `server_api.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_flush_by_get_and_usage_without_cache_report() {
    let tok = kiln::tokenizer::Tokenizer::bundled().unwrap();
    let s = TestServer::start(Box::new(demo_backend(cap4())), Arc::new(tok), sched_cfg(), Default::default());
    let body = json!({"model": "m", "prompt": tokens(40, 9), "max_tokens": 1});
    s.post_json("/v1/completions", &body, 200).await;
    let c = s.post_json("/v1/completions", &body, 200).await;
    // Without --enable-cache-report the usage has no details, as in SGLang.
    assert_eq!(c["usage"]["prompt_tokens_details"], Value::Null);
    s.wait_idle().await;
    assert!(s.state.sched.stats().snapshots_cached.load(Relaxed) > 0);
    let f = s.client.get(s.url("/flush_cache")).send().await.unwrap();
    assert_eq!(f.status(), 200);
    assert_eq!(s.state.sched.stats().snapshots_cached.load(Relaxed), 0);
}
