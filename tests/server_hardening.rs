//! Requests that must not stall a worker or the server: a prompt too long for the
//! context is refused before it is tokenized; big prompts are tokenized off the HTTP
//! workers (`/health` keeps answering); oversized bodies and headers get 413 / 431 with a
//! message; stop strings are capped; what SGLang accepts (`max_new_tokens: 4.0`, a
//! `sampling_seed` up to u64::MAX) is accepted.

mod common;

use common::mock::cap;
use common::server::TestServer;
use kiln::scheduler::SchedulerConfig;
use kiln::server::ServerConfig;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Deterministic prose-like text of about `bytes` bytes (words, spaces, newlines).
fn prose(bytes: usize) -> String {
    let words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "kiln", "fires", "clay", "pots", "at", "night"];
    let mut out = String::with_capacity(bytes + 16);
    let mut x = 12345u64;
    while out.len() < bytes {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.push_str(words[(x >> 33) as usize % words.len()]);
        out.push(if (x >> 20).is_multiple_of(13) { '\n' } else { ' ' });
    }
    out
}

/// Letters only: one pre-token, so it cannot be tokenized in pieces.
fn one_word(bytes: usize) -> String {
    let mut x = 99u64;
    (0..bytes)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (b'a' + ((x >> 33) % 26) as u8) as char
        })
        .collect()
}

fn error_message(v: &Value) -> String {
    v.get("error").unwrap_or(v)["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_far_over_the_context_is_refused_before_tokenizing() {
    let s = TestServer::demo(1, 512, 8192, ServerConfig::default());
    // 10 MB: tokenizing it whole takes many seconds; the bound refuses it at once.
    let text = prose(10 << 20);
    let cases = [
        ("/generate", json!({"text": text, "sampling_params": {"max_new_tokens": 1}})),
        ("/v1/completions", json!({"prompt": text, "max_tokens": 1})),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": text}], "max_tokens": 1})),
    ];
    for (path, body) in cases {
        let t0 = Instant::now();
        let r = s.post_json(path, &body, 400).await;
        let took = t0.elapsed();
        let msg = error_message(&r);
        assert!(msg.contains("longer than the model's context length (8192 tokens)"), "{path}: {msg}");
        assert!(took < Duration::from_secs(3), "{path}: refused after {took:?}");
    }
    // A prompt that fits still works.
    let r = s.post_json("/generate", &json!({"text": "Hello there", "sampling_params": {"max_new_tokens": 2}}), 200).await;
    assert_eq!(r["meta_info"]["prompt_tokens"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_answers_within_50ms_while_the_biggest_allowed_prompts_are_tokenized() {
    let s = std::sync::Arc::new(TestServer::demo(1, 512, 8192, ServerConfig::default()));
    // The biggest texts the cheap bound lets through for an 8192-token context (the
    // longest Qwen3.5 token is 128 bytes): prose, and one unsplittable word, more of them
    // than there are HTTP workers.
    let allowed = 8191 * 128 - 16;
    // And the biggest body (32 MiB by default), refused by the bound after parsing.
    let bodies = [prose(allowed), one_word(allowed), prose(allowed), one_word(allowed), prose(30 << 20)];
    let mut tasks = vec![];
    for text in bodies {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let r = s.post("/generate", &json!({"text": text, "sampling_params": {"max_new_tokens": 1}})).await;
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    // A fresh connection per probe, so probes land on every worker.
    let probe = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap();
    let mut lat = vec![];
    let t0 = Instant::now();
    while !tasks.iter().all(|t| t.is_finished()) && t0.elapsed() < Duration::from_secs(60) {
        let t = Instant::now();
        let r = probe.get(s.url("/health")).timeout(Duration::from_secs(5)).send().await;
        lat.push(t.elapsed());
        assert!(r.is_ok_and(|r| r.status() == 200), "/health failed while prompts were tokenized");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        let (status, text) = t.await.unwrap();
        assert_eq!(status, 400, "{}", &text[..text.len().min(300)]);
        assert!(text.contains("longer than the model's context length"), "{}", &text[..text.len().min(300)]);
    }
    lat.sort();
    assert!(lat.len() >= 5, "only {} /health probes in {:?} (latencies {lat:?}): the workers were blocked", lat.len(), t0.elapsed());
    let p90 = lat[lat.len() * 9 / 10];
    let worst = *lat.last().unwrap();
    eprintln!("{} /health probes: median {:?}, p90 {p90:?}, max {worst:?}", lat.len(), lat[lat.len() / 2]);
    assert!(p90 < Duration::from_millis(50), "p90 /health latency {p90:?}: {lat:?}");
    assert!(worst < Duration::from_millis(500), "worst /health latency {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_413_with_a_json_message() {
    let cfg = ServerConfig { max_body_bytes: 4096, ..Default::default() };
    let (s, _) = TestServer::mock(cap(2, 64, 16, 256), SchedulerConfig::default(), cfg);
    let big = json!({"text": "x".repeat(10_000)});
    // With a Content-Length, and streamed (chunked, no length known up front).
    let with_len = s.post("/generate", &big).await;
    let bytes = serde_json::to_vec(&big).unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let chunked = s
        .client
        .post(s.url("/v1/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    for r in [with_len, chunked] {
        assert_eq!(r.status(), 413);
        let v: Value = r.json().await.unwrap();
        let msg = error_message(&v);
        assert!(msg.contains("over the limit of 4096 bytes"), "{v}");
        assert_eq!(v.get("error").unwrap_or(&v)["code"], 413);
    }
    assert_eq!(s.get("/health").await.status(), 200);
}

#[test]
fn oversized_header_gets_431_with_a_message() {
    let (s, _) = TestServer::mock(cap(2, 64, 16, 256), SchedulerConfig::default(), ServerConfig::default());
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000));
    let _ = c.write_all(head.as_bytes());
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("431 without a JSON message: {text:?}"));
    assert_eq!(v["error"]["code"], 431);
    assert!(error_message(&v).contains("header is too large"), "{v}");
    // Too many header fields, the other way to overflow actix's head parser.
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let fields: String = (0..120).map(|i| format!("X-F{i}: v\r\n")).collect();
    let _ = c.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n{fields}\r\n").as_bytes());
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 431") && text.contains("\"code\":431"), "{text}");
    // The server still answers.
    let ok = std::net::TcpStream::connect(&addr).and_then(|mut c| {
        c.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    });
    assert!(ok.unwrap().starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_sglang_accepts_is_accepted() {
    let (s, _) = TestServer::mock(cap(2, 64, 16, 256), SchedulerConfig::default(), ServerConfig::default());
    let r = s.post_json("/generate", &json!({"text": "hi", "sampling_params": {"max_new_tokens": 4.0, "ignore_eos": true}}), 200).await;
    assert_eq!(r["meta_info"]["completion_tokens"], 4);
    let seed = u64::MAX;
    let a = s.post_json("/generate", &json!({"text": "hi", "sampling_params": {"max_new_tokens": 6, "temperature": 1.0, "sampling_seed": seed}}), 200).await;
    let b = s.post_json("/generate", &json!({"text": "hi", "sampling_params": {"max_new_tokens": 6, "temperature": 1.0, "sampling_seed": seed}}), 200).await;
    assert_eq!(a["output_ids"], b["output_ids"], "the same seed gives the same tokens");
    let r = s.post_json("/v1/completions", &json!({"prompt": "hi", "max_tokens": 3.0, "seed": seed, "ignore_eos": true}), 200).await;
    assert_eq!(r["usage"]["completion_tokens"], 3);
    let r = s.post_json("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2.0, "ignore_eos": true}), 200).await;
    assert_eq!(r["usage"]["completion_tokens"], 2);
    // Not an integer, or past u64: still a clear 400.
    let r = s.post_json("/generate", &json!({"text": "hi", "sampling_params": {"max_new_tokens": 4.5}}), 400).await;
    assert!(error_message(&r).contains("must be an integer"), "{r}");
    let r = s.post_json("/v1/completions", &json!({"prompt": "hi", "seed": 18446744073709551616.0}), 400).await;
    assert!(error_message(&r).contains("`seed`"), "{r}");
    s.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_are_capped_in_number_and_length() {
    let (s, _) = TestServer::mock(cap(2, 64, 16, 256), SchedulerConfig::default(), ServerConfig::default());
    let many: Vec<String> = (0..65).map(|i| format!("stop{i}")).collect();
    let r = s.post_json("/generate", &json!({"text": "hi", "sampling_params": {"stop": many}}), 400).await;
    assert!(error_message(&r).contains("65 stop strings") && error_message(&r).contains("at most 64"), "{r}");
    assert_eq!(r["error"]["param"], "sampling_params.stop");
    let long = vec!["x".repeat(20_000), "y".repeat(20_000)];
    let r = s.post_json("/v1/completions", &json!({"prompt": "hi", "stop": long}), 400).await;
    assert!(error_message(&r).contains("40000 bytes") && error_message(&r).contains("32768"), "{r}");
    assert_eq!(r["param"], "stop");
    let ids: Vec<u32> = (0..1025).map(|i| i % 200).collect();
    let r = s.post_json("/generate", &json!({"text": "hi", "sampling_params": {"stop_token_ids": ids}}), 400).await;
    assert!(error_message(&r).contains("1025") && error_message(&r).contains("at most 1024"), "{r}");
    // At the limits: accepted, and a 32 KiB stop string costs the scheduler nothing much.
    let at_limit: Vec<String> = (0..64).map(|i| format!("{i:02}").repeat(256)).collect();
    let r = s.post_json("/generate", &json!({"text": "hi", "sampling_params": {"stop": at_limit, "max_new_tokens": 8}}), 200).await;
    assert!(r["meta_info"]["completion_tokens"].as_u64().unwrap() >= 1);
    s.wait_idle().await;
}
