//! The server on the real CPU backend with the demo model and the real tokenizer:
//! greedy over HTTP equals `kiln::generate::greedy`, streamed equals non-streamed, and
//! 64 concurrent identical greedy requests equal one alone (batch invariance).

mod common;

use common::server::{demo_eos, TestServer};
use kiln::backend::cpu::CpuBackend;
use kiln::backend::{Backend, Capacity};
use kiln::server::ServerConfig;
use kiln::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::sync::Arc;

fn demo_cap(slots: usize) -> Capacity {
    Capacity { slots, block_size: 16, kv_blocks: slots * 32, max_seq_len: 512 }
}

fn demo_server(slots: usize, chunk: usize) -> TestServer {
    TestServer::demo(slots, chunk, 512, ServerConfig::default())
}

fn library_greedy(prompt: &[u32], n: usize) -> Vec<u32> {
    let (cfg, w) = kiln::demo::demo_weights();
    let mut b = CpuBackend::new(cfg, w, demo_cap(1)).unwrap();
    let tok = Tokenizer::bundled().unwrap();
    let _ = b.config();
    kiln::generate::greedy(&mut b, prompt, n, &demo_eos(&tok), tok.vocab_size()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_greedy_equals_library_greedy() {
    // A 20-token step budget: the long prompt is prefilled in several chunks.
    let s = demo_server(4, 20);
    let tok = Tokenizer::bundled().unwrap();
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(8);
    for text in ["The capital of France is", "Hello", long.as_str()] {
        let prompt = tok.encode(text, true).unwrap();
        let want = library_greedy(&prompt, 10);
        let r = s.post_json("/generate", &json!({"text": text, "sampling_params": {"temperature": 0, "max_new_tokens": 10}}), 200).await;
        assert_eq!(ids(&r["output_ids"]), want, "prompt {text:?}");
        assert_eq!(r["text"], json!(tok.decode(&want, true).unwrap()));
        assert_eq!(r["meta_info"]["prompt_tokens"], prompt.len());
    }
    s.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_equals_non_streamed_on_every_route() {
    let s = demo_server(4, 64);
    let g = json!({"text": "Once upon a time", "sampling_params": {"temperature": 0, "max_new_tokens": 12}});
    let full = s.post_json("/generate", &g, 200).await;
    let mut gs = g.clone();
    gs["stream"] = json!(true);
    let evs = s.post_sse("/generate", &gs).await;
    assert_eq!(evs.last().unwrap()["text"], full["text"]);
    assert_eq!(evs.last().unwrap()["output_ids"], full["output_ids"]);

    let c = json!({"prompt": "Once upon a time", "temperature": 0, "max_tokens": 12});
    let full = s.post_json("/v1/completions", &c, 200).await;
    let mut cs = c.clone();
    cs["stream"] = json!(true);
    let evs = s.post_sse("/v1/completions", &cs).await;
    let joined: String = evs.iter().map(|e| e["choices"][0]["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(json!(joined), full["choices"][0]["text"]);
    assert_eq!(evs.last().unwrap()["choices"][0]["finish_reason"], full["choices"][0]["finish_reason"]);

    let m = json!({"messages": [{"role": "user", "content": "Hi there"}], "temperature": 0, "max_tokens": 12,
                   "chat_template_kwargs": {"enable_thinking": false}});
    let full = s.post_json("/v1/chat/completions", &m, 200).await;
    let mut ms = m.clone();
    ms["stream"] = json!(true);
    let evs = s.post_sse("/v1/chat/completions", &ms).await;
    let joined: String = evs.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    let content = full["choices"][0]["message"]["content"].as_str().unwrap_or("");
    assert_eq!(joined, content);
    // enable_thinking=false renders the empty think block: 4 more prompt tokens than thinking.
    let mut t = m.clone();
    t["chat_template_kwargs"] = json!({});
    let thinking = s.post_json("/v1/chat/completions", &t, 200).await;
    assert!(full["usage"]["prompt_tokens"].as_u64() > thinking["usage"]["prompt_tokens"].as_u64());
    s.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_identical_greedy_requests_equal_one_alone() {
    // 16 slots: the 64 requests queue, join and leave the batch at different steps.
    let s = Arc::new(demo_server(16, 64));
    let body = json!({"text": "In a hole in the ground there lived", "sampling_params": {"temperature": 0, "max_new_tokens": 8, "ignore_eos": true}});
    let alone = s.post_json("/generate", &body, 200).await;
    let mut tasks = vec![];
    for _ in 0..64 {
        let (s, body) = (s.clone(), body.clone());
        tasks.push(tokio::spawn(async move { s.post_json("/generate", &body, 200).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r["output_ids"], alone["output_ids"]);
        assert_eq!(r["text"], alone["text"]);
    }
    s.wait_idle().await;
}
