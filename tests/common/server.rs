//! An in-process HTTP server on 127.0.0.1 (port 0) over any backend, for tests.
#![allow(dead_code)]

use super::mock::{cap, ByteCodec, MockBackend, MockStats};
use kiln::backend::{Backend, Capacity};
use kiln::scheduler::{self, Codec, SchedulerConfig};
use kiln::server::{self, AppState, ServerConfig};
use serde_json::Value;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct TestServer {
    pub base: String,
    pub state: Arc<AppState>,
    pub client: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(backend: Box<dyn Backend>, codec: Arc<dyn Codec>, sched: SchedulerConfig, cfg: ServerConfig) -> Self {
        let h = scheduler::spawn(backend, codec.clone(), sched).expect("scheduler starts");
        let state = AppState::new(cfg, h, codec);
        // warm_up blocks; keep it off the test's async runtime.
        std::thread::scope(|sc| sc.spawn(|| state.warm_up()).join().unwrap()).expect("warm-up");
        state.set_ready();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let running = server::start(st, listener).unwrap();
                tx.send((running.addr, running.handle.clone())).unwrap();
                let _ = running.server.await;
            })
        });
        let (addr, handle) = rx.recv().unwrap();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        TestServer { base: format!("http://{addr}"), state, client, handle, thread: Some(thread) }
    }

    /// A server over the mock backend and byte codec; returns the mock's counters too.
    pub fn mock(c: Capacity, sched: SchedulerConfig, cfg: ServerConfig) -> (Self, Arc<MockStats>) {
        let b = MockBackend::new(c);
        let st = b.stats.clone();
        let sched = SchedulerConfig { eos_token_ids: vec![super::mock::EOS], ..sched };
        (Self::start(Box::new(b), Arc::new(ByteCodec), sched, cfg), st)
    }

    /// A server over the CPU backend with the demo model and the bundled tokenizer
    /// (EOS: the demo config's and the tokenizer's).
    pub fn demo_with_capacity(c: Capacity) -> Self {
        let (cfg, w) = kiln::demo::demo_weights();
        let backend = kiln::backend::cpu::CpuBackend::new(cfg, w, c).unwrap();
        let tok = kiln::tokenizer::Tokenizer::bundled().unwrap();
        let mut eos: Vec<u32> = kiln::demo::demo_config().eos_token_ids.iter().chain(tok.eos_token_ids()).copied().collect();
        eos.sort_unstable();
        eos.dedup();
        let sched = SchedulerConfig { eos_token_ids: eos, ..Default::default() };
        Self::start(Box::new(backend), Arc::new(tok), sched, ServerConfig::default())
    }

    /// A server over the CPU backend with the embedded demo model and the real tokenizer.
    pub fn demo(slots: usize, chunk: usize, max_seq_len: usize, cfg: ServerConfig) -> Self {
        let (model, w) = kiln::demo::demo_weights();
        let c = Capacity { slots, block_size: 16, kv_blocks: slots * max_seq_len.div_ceil(16), max_seq_len };
        let backend = kiln::backend::cpu::CpuBackend::new(model, w, c).unwrap();
        let tok = kiln::tokenizer::Tokenizer::bundled().unwrap();
        let sched = SchedulerConfig { eos_token_ids: demo_eos(&tok), chunked_prefill_size: chunk, ..Default::default() };
        Self::start(Box::new(backend), Arc::new(tok), sched, cfg)
    }

    pub fn mock_default() -> (Self, Arc<MockStats>) {
        Self::mock(cap(8, 256, 16, 512), SchedulerConfig::default(), ServerConfig::default())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.unwrap()
    }

    /// POST, expect `status`, return the JSON body.
    pub async fn post_json(&self, path: &str, body: &Value, status: u16) -> Value {
        let r = self.post(path, body).await;
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(code, status, "POST {path} {body} -> {code} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// POST with stream: true; returns the JSON of each `data:` event (without [DONE])
    /// and checks the framing.
    pub async fn post_sse(&self, path: &str, body: &Value) -> Vec<Value> {
        let r = self.post(path, body).await;
        assert_eq!(r.status().as_u16(), 200, "stream {path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let text = r.text().await.unwrap();
        parse_sse(&text)
    }

    /// Waits until nothing is queued or running and no slot or block is held.
    pub async fn wait_idle(&self) {
        let t0 = Instant::now();
        while !self.state.sched.stats().is_idle() {
            assert!(t0.elapsed() < Duration::from_secs(20), "server never became idle (leak?)");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The SIGTERM path: drain, abort leftovers, stop HTTP.
    pub async fn graceful_stop(&self) {
        self.state.graceful_stop(self.handle.clone()).await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The demo model's EOS ids: its config's and the tokenizer's.
pub fn demo_eos(tok: &kiln::tokenizer::Tokenizer) -> Vec<u32> {
    let mut e: Vec<u32> = kiln::demo::demo_config().eos_token_ids.iter().chain(tok.eos_token_ids()).copied().collect();
    e.sort_unstable();
    e.dedup();
    e
}

/// Splits an SSE body into event JSONs; asserts `data: ...\n\n` framing and a final [DONE].
pub fn parse_sse(text: &str) -> Vec<Value> {
    assert!(text.ends_with("data: [DONE]\n\n"), "stream must end with [DONE]: {text:?}");
    let mut out = vec![];
    for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = ev.strip_prefix("data: ").unwrap_or_else(|| panic!("bad SSE event {ev:?}"));
        if data == "[DONE]" {
            continue;
        }
        out.push(serde_json::from_str(data).unwrap_or_else(|e| panic!("bad JSON in event {data:?}: {e}")));
    }
    out
}
