//! Aborts on client disconnect (mid-stream, mid-prefill, streaming or not), the bounded
//! queue (503 + Retry-After), graceful shutdown, and a bounded load test in which every
//! request completes or gets an explicit error and nothing leaks. Mock backend.

mod common;

use common::mock::cap;
use common::server::TestServer;
use futures_util::StreamExt;
use kiln::scheduler::SchedulerConfig;
use kiln::server::ServerConfig;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn aborted(s: &TestServer) -> u64 {
    s.state.sched.stats().requests_aborted.load(Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_stream_frees_the_slot() {
    let (s, mock) = TestServer::mock_default();
    mock.delay_ms.store(10, Relaxed);
    let before = aborted(&s);
    for path in ["/generate", "/v1/completions", "/v1/chat/completions"] {
        let body = match path {
            "/generate" => json!({"text": "abc", "stream": true, "sampling_params": {"max_new_tokens": 400, "ignore_eos": true}}),
            "/v1/completions" => json!({"prompt": "abc", "stream": true, "max_tokens": 400, "ignore_eos": true}),
            _ => json!({"messages": [{"role": "user", "content": "abc"}], "stream": true, "max_tokens": 400, "ignore_eos": true}),
        };
        let r = s.post(path, &body).await;
        assert_eq!(r.status(), 200);
        let mut st = r.bytes_stream();
        // Read a few events, then hang up.
        let mut seen = 0;
        while seen < 3 {
            let chunk = st.next().await.unwrap().unwrap();
            seen += String::from_utf8_lossy(&chunk).matches("data: ").count();
        }
        drop(st);
    }
    let t0 = Instant::now();
    s.wait_idle().await;
    assert!(t0.elapsed() < Duration::from_secs(3), "aborts took too long");
    assert_eq!(aborted(&s) - before, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_prefill_frees_the_slot_streaming_or_not() {
    // 8-token step budget and 20 ms steps: a 300-token prompt takes ~40 steps to prefill.
    let (s, mock) = TestServer::mock(cap(4, 256, 16, 1024), SchedulerConfig { chunked_prefill_size: 8, ..Default::default() }, ServerConfig::default());
    mock.delay_ms.store(20, Relaxed);
    let before = aborted(&s);
    let prompt = "p".repeat(300);
    for stream in [false, true] {
        let body = json!({"text": prompt, "stream": stream, "sampling_params": {"max_new_tokens": 500, "ignore_eos": true}});
        let r = s.client.post(s.url("/generate")).json(&body).timeout(Duration::from_millis(200)).send().await;
        match r {
            Err(e) => assert!(e.is_timeout(), "{e}"),
            Ok(resp) => {
                // Streaming headers may arrive; hang up before any event.
                assert!(stream);
                drop(resp);
            }
        }
    }
    let t0 = Instant::now();
    s.wait_idle().await;
    assert!(t0.elapsed() < Duration::from_secs(3), "aborts took too long");
    assert_eq!(aborted(&s) - before, 2);
    // The prefill was cut short: far fewer steps than prefill + 500 decode steps.
    assert!(mock.forwards.load(Relaxed) < 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_with_retry_after() {
    let (s, mock) = TestServer::mock(cap(1, 64, 16, 256), SchedulerConfig { max_queued: 1, ..Default::default() }, ServerConfig::default());
    mock.delay_ms.store(5, Relaxed);
    let s = Arc::new(s);
    let mut tasks = vec![];
    for i in 0..6 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"text": format!("q{i}"), "sampling_params": {"max_new_tokens": 20, "ignore_eos": true}});
            let r = s.post("/generate", &body).await;
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            (status, retry, r.json::<Value>().await.unwrap())
        }));
    }
    let mut ok = 0;
    let mut busy = 0;
    for t in tasks {
        let (status, retry, body) = t.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                busy += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                assert_eq!(body["error"]["code"], 503);
                assert!(body["error"]["message"].as_str().unwrap().contains("queue is full"));
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok {ok} busy {busy}");
    s.wait_idle().await;
    // Once the queue drains, requests are accepted again.
    mock.delay_ms.store(0, Relaxed);
    s.post_json("/generate", &json!({"text": "again", "sampling_params": {"max_new_tokens": 2}}), 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_short_requests_and_fails_long_ones_explicitly() {
    let cfg = ServerConfig { shutdown_grace: Duration::from_millis(400), ..Default::default() };
    let (s, mock) = TestServer::mock(cap(4, 256, 16, 1024), SchedulerConfig::default(), cfg);
    mock.delay_ms.store(10, Relaxed);
    let s = Arc::new(s);
    let spawn = |body: Value| {
        let s = s.clone();
        tokio::spawn(async move {
            let r = s.post("/generate", &body).await;
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        })
    };
    let short = spawn(json!({"text": "short", "sampling_params": {"max_new_tokens": 5, "ignore_eos": true}}));
    let long = spawn(json!({"text": "long", "sampling_params": {"max_new_tokens": 900, "ignore_eos": true}}));
    let long_stream = spawn(json!({"text": "long", "stream": true, "sampling_params": {"max_new_tokens": 900, "ignore_eos": true}}));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopper = {
        let s = s.clone();
        tokio::spawn(async move { s.graceful_stop().await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    // While draining: /health is 503 and new work is refused with 503.
    assert_eq!(s.get("/health").await.status(), 503);
    let r = s.post("/generate", &json!({"text": "late"})).await;
    assert_eq!(r.status(), 503);
    let (st, body) = short.await.unwrap();
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["meta_info"]["completion_tokens"], 5);
    let (st, body) = long.await.unwrap();
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("shut down"), "{body}");
    let (st, body) = long_stream.await.unwrap();
    assert_eq!(st, 200);
    let evs = common::server::parse_sse(&body);
    assert!(evs.last().unwrap()["error"]["message"].as_str().unwrap().contains("shut down"), "{body}");
    stopper.await.unwrap();
    assert!(!s.state.sched.is_alive());
    assert!(s.state.sched.stats().is_idle());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bounded_load_every_request_completes_or_fails_explicitly_and_nothing_leaks() {
    // Small pools so requests queue, retract and hit the queue bound.
    let sched = SchedulerConfig { max_queued: 24, chunked_prefill_size: 64, ..Default::default() };
    let (s, _mock) = TestServer::mock(cap(8, 48, 16, 256), sched, ServerConfig::default());
    let s = Arc::new(s);
    let total = 300;
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = vec![];
    for i in 0..total {
        let (s, sem) = (s.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let prompt = "w".repeat(1 + (i * 37) % 120);
            let max_new = 1 + (i * 13) % 60;
            let stream = i % 3 == 0;
            let (path, body) = match i % 4 {
                0 | 1 => ("/generate", json!({"text": prompt, "stream": stream, "sampling_params": {"max_new_tokens": max_new, "temperature": (i % 2) as f64}})),
                2 => ("/v1/completions", json!({"prompt": prompt, "stream": stream, "max_tokens": max_new})),
                _ => ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": prompt}], "stream": stream, "max_tokens": max_new})),
            };
            let mut req = s.client.post(s.url(path)).json(&body);
            let hang_up = i % 10 == 7;
            if hang_up {
                req = req.timeout(Duration::from_millis(5));
            }
            match req.send().await {
                Err(e) if hang_up => {
                    assert!(e.is_timeout(), "{e}");
                    "hung up"
                }
                Err(e) => panic!("request {i} failed without an HTTP answer: {e}"),
                Ok(r) => {
                    let status = r.status().as_u16();
                    let text = match r.text().await {
                        Ok(t) => t,
                        Err(_) if hang_up => return "hung up",
                        Err(e) => panic!("request {i}: body error {e}"),
                    };
                    match status {
                        200 if stream => {
                            let evs = common::server::parse_sse(&text);
                            assert!(!evs.is_empty());
                            assert!(evs.iter().all(|e| e.get("error").is_none()), "request {i}: {text}");
                            "ok"
                        }
                        200 => {
                            let v: Value = serde_json::from_str(&text).unwrap();
                            let n = v["meta_info"]["completion_tokens"].as_u64().or(v["usage"]["completion_tokens"].as_u64()).unwrap();
                            assert!(n >= 1 && n <= max_new as u64, "request {i}: {n} tokens of {max_new}");
                            "ok"
                        }
                        503 => {
                            assert!(text.contains("queue is full"), "request {i}: {text}");
                            "busy"
                        }
                        other => panic!("request {i}: unexpected {other} {text}"),
                    }
                }
            }
        }));
    }
    let mut counts = std::collections::HashMap::new();
    for t in tasks {
        *counts.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    println!("load test outcomes: {counts:?}");
    assert_eq!(counts.values().sum::<i32>(), total as i32);
    assert!(counts.get("ok").copied().unwrap_or(0) > total as i32 / 2, "{counts:?}");
    s.wait_idle().await;
    let st = s.state.sched.stats();
    let submitted = st.requests_submitted.load(Relaxed);
    let ended = st.requests_finished.load(Relaxed) + st.requests_aborted.load(Relaxed);
    assert_eq!(submitted, ended, "every submitted request finished or was aborted exactly once");
    assert_eq!(s.get("/health").await.status(), 200);
}
