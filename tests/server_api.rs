//! HTTP end-to-end tests of every endpoint, on the mock backend (fast, deterministic).

mod common;

use common::mock::*;
use common::server::TestServer;
use kiln::scheduler::SchedulerConfig;
use kiln::server::ServerConfig;
use serde_json::{json, Value};

fn bytes(s: &str) -> Vec<u32> {
    s.bytes().map(|b| b as u32).collect()
}

fn text_of(ids: &[u32]) -> String {
    String::from_utf8_lossy(&ids.iter().filter(|&&t| t < 256).map(|&t| t as u8).collect::<Vec<_>>()).into_owned()
}

/// Expected greedy (ids, text, finish) for a prompt with ignore_eos false.
fn expect(prompt: &str, n: usize) -> (Vec<u32>, String, Value) {
    let ids = reference_greedy(&bytes(prompt), n, true);
    let fin = if ids.last() == Some(&EOS) { json!({"type": "stop", "matched": EOS}) } else { json!({"type": "length", "length": n}) };
    let text = text_of(&ids);
    (ids, text, fin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_single_text_and_input_ids() {
    let (s, _) = TestServer::mock_default();
    let (ids, text, fin) = expect("hello world", 12);
    let r = s
        .post_json("/generate", &json!({"text": "hello world", "rid": "abc", "sampling_params": {"temperature": 0, "max_new_tokens": 12}}), 200)
        .await;
    assert_eq!(r["text"], json!(text));
    assert_eq!(r["output_ids"], json!(ids));
    let m = &r["meta_info"];
    assert_eq!(m["id"], "abc");
    assert_eq!(m["finish_reason"], fin);
    assert_eq!(m["prompt_tokens"], 11);
    assert_eq!(m["completion_tokens"], ids.len());
    assert_eq!(m["cached_tokens"], 0);
    assert_eq!(m["weight_version"], "default");
    assert_eq!(m["total_retractions"], 0);
    assert!(m["e2e_latency"].as_f64().unwrap() >= 0.0);
    let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(&keys[..4], &["id", "finish_reason", "prompt_tokens", "weight_version"]);
    // The same prompt as ids.
    let r2 = s.post_json("/generate", &json!({"input_ids": bytes("hello world"), "sampling_params": {"temperature": 0, "max_new_tokens": 12}}), 200).await;
    assert_eq!(r2["output_ids"], json!(ids));
    assert_eq!(r2["meta_info"]["id"].as_str().unwrap().len(), 32);
    // PUT works too; default max_new_tokens is 128 (ignore_eos: exactly 128).
    let r3 = s
        .client
        .put(s.url("/generate"))
        .json(&json!({"text": "x", "sampling_params": {"temperature": 0, "ignore_eos": true}}))
        .send()
        .await
        .unwrap();
    let r3: Value = r3.json().await.unwrap();
    assert_eq!(r3["meta_info"]["completion_tokens"], 128);
    assert_eq!(r3["meta_info"]["finish_reason"], json!({"type": "length", "length": 128}));
    s.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_batch_and_n() {
    let (s, _) = TestServer::mock_default();
    let r = s
        .post_json(
            "/generate",
            &json!({"text": ["abc", "hello"], "sampling_params": [{"temperature": 0, "max_new_tokens": 5}, {"temperature": 0, "max_new_tokens": 3, "ignore_eos": true}]}),
            200,
        )
        .await;
    let a = r.as_array().unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["output_ids"], json!(expect("abc", 5).0));
    assert_eq!(a[1]["output_ids"], json!(reference_greedy(&bytes("hello"), 3, false)));
    let r = s.post_json("/generate", &json!({"input_ids": [bytes("ab"), bytes("cd")], "sampling_params": {"temperature": 0, "max_new_tokens": 4}}), 200).await;
    assert_eq!(r[1]["output_ids"], json!(expect("cd", 4).0));
    let r = s.post_json("/generate", &json!({"text": "q", "sampling_params": {"temperature": 0, "max_new_tokens": 4, "n": 3}}), 200).await;
    let a = r.as_array().unwrap();
    assert_eq!(a.len(), 3);
    assert!(a.iter().all(|x| x["output_ids"] == json!(expect("q", 4).0)));
    s.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_stream_equals_non_stream() {
    let (s, _) = TestServer::mock_default();
    for sp in [
        json!({"temperature": 0, "max_new_tokens": 20}),
        json!({"temperature": 0.8, "top_p": 0.9, "sampling_seed": 5, "max_new_tokens": 20, "stop": ["e"]}),
    ] {
        let body = json!({"text": "stream me", "sampling_params": sp});
        let full = s.post_json("/generate", &body, 200).await;
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let evs = s.post_sse("/generate", &sb).await;
        assert!(!evs.is_empty());
        let last = evs.last().unwrap();
        assert_eq!(last["text"], full["text"]);
        assert_eq!(last["output_ids"], full["output_ids"]);
        assert_eq!(last["meta_info"]["finish_reason"], full["meta_info"]["finish_reason"]);
        assert!(last["meta_info"]["e2e_latency"].is_number());
        for (k, e) in evs.iter().enumerate() {
            // Cumulative text and ids; one event per token.
            assert_eq!(e["meta_info"]["completion_tokens"], k + 1);
            assert!(full["text"].as_str().unwrap().starts_with(e["text"].as_str().unwrap()));
            if k + 1 < evs.len() {
                assert!(e["meta_info"]["finish_reason"].is_null());
            }
        }
    }
    // Batch streams carry an index.
    let evs = s.post_sse("/generate", &json!({"text": ["a", "b"], "stream": true, "sampling_params": {"temperature": 0, "max_new_tokens": 3, "ignore_eos": true}})).await;
    assert_eq!(evs.len(), 6);
    assert_eq!(evs.iter().filter(|e| e["index"] == 1).count(), 3);
    s.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_logprobs_and_stop_strings() {
    let (s, _) = TestServer::mock_default();
    let r = s
        .post_json(
            "/generate",
            &json!({"text": "logprob", "return_logprob": true, "top_logprobs_num": 2, "return_text_in_logprobs": true,
                    "sampling_params": {"temperature": 0, "max_new_tokens": 4, "ignore_eos": true}}),
            200,
        )
        .await;
    let m = &r["meta_info"];
    let out = m["output_token_logprobs"].as_array().unwrap();
    assert_eq!(out.len(), 4);
    let first_id = r["output_ids"][0].as_u64().unwrap() as u32;
    let row = logits_for(history_hash(&bytes("logprob")));
    let want = kiln::sampling::logprob_of(&row[..VALID_VOCAB], first_id as usize) as f64;
    assert!((out[0][0].as_f64().unwrap() - want).abs() < 1e-4);
    assert_eq!(out[0][1], first_id);
    assert_eq!(out[0][2], json!(text_of(&[first_id])));
    assert_eq!(m["output_top_logprobs"][0].as_array().unwrap().len(), 2);
    assert_eq!(m["input_token_logprobs"], json!([[null, b'b' as u32, "b"]]));
    let r = s
        .post_json("/generate", &json!({"text": "logprob", "return_logprob": true, "logprob_start_len": 0, "sampling_params": {"max_new_tokens": 1}}), 200)
        .await;
    assert_eq!(r["meta_info"]["input_token_logprobs"].as_array().unwrap().len(), 7);
    assert!(r["meta_info"]["input_token_logprobs"][1][0].is_number());
    assert!(r["meta_info"].get("output_top_logprobs").is_none());

    // Stop string in the middle of the greedy text: trimmed and reported.
    let free = text_of(&reference_greedy(&bytes("stop here"), 30, false));
    let stop = &free[6..8];
    let cut = free.find(stop).unwrap();
    let r = s
        .post_json("/generate", &json!({"text": "stop here", "sampling_params": {"temperature": 0, "max_new_tokens": 30, "ignore_eos": true, "stop": stop}}), 200)
        .await;
    assert_eq!(r["text"], json!(&free[..cut]));
    assert_eq!(r["meta_info"]["finish_reason"], json!({"type": "stop", "matched": stop}));
    s.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_completions() {
    let (s, _) = TestServer::mock_default();
    let (ids, text, _) = expect("Once upon", 16);
    let r = s.post_json("/v1/completions", &json!({"model": "m1", "prompt": "Once upon", "temperature": 0}), 200).await;
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["model"], "m1");
    assert_eq!(r["id"].as_str().unwrap().len(), 32);
    assert_eq!(r["choices"][0]["text"], json!(text));
    assert_eq!(r["choices"][0]["index"], 0);
    let fr = if ids.last() == Some(&EOS) { "stop" } else { "length" };
    assert_eq!(r["choices"][0]["finish_reason"], fr);
    assert_eq!(r["usage"], json!({"prompt_tokens": 9, "total_tokens": 9 + ids.len(), "completion_tokens": ids.len(), "prompt_tokens_details": null, "reasoning_tokens": 0}));
    assert_eq!(r["metadata"], json!({"weight_version": "default"}));
    // Streaming: deltas concatenate to the same text; usage event only when asked.
    let body = json!({"prompt": "Once upon", "temperature": 0, "max_tokens": 16, "stream": true, "stream_options": {"include_usage": true}});
    let evs = s.post_sse("/v1/completions", &body).await;
    let usage = evs.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], ids.len());
    let joined: String = evs[..evs.len() - 1].iter().map(|e| e["choices"][0]["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(joined, text);
    assert_eq!(evs[evs.len() - 2]["choices"][0]["finish_reason"], fr);
    assert!(evs[0]["usage"].is_null());
    let evs = s.post_sse("/v1/completions", &json!({"prompt": "Once upon", "temperature": 0, "stream": true})).await;
    assert!(evs.iter().all(|e| e["choices"].as_array().unwrap().len() == 1));
    // Token-id prompts, several prompts, n, echo, logprobs.
    let r = s
        .post_json("/v1/completions", &json!({"prompt": [bytes("ab"), bytes("cd")], "max_tokens": 3, "temperature": 0, "n": 2, "echo": true, "logprobs": 2, "ignore_eos": true}), 200)
        .await;
    let ch = r["choices"].as_array().unwrap();
    assert_eq!(ch.len(), 4);
    assert_eq!(ch[3]["index"], 3);
    assert!(ch[2]["text"].as_str().unwrap().starts_with("cd"));
    assert_eq!(r["usage"]["prompt_tokens"], 4);
    assert_eq!(r["usage"]["completion_tokens"], 12);
    let lp = &ch[0]["logprobs"];
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 3);
    assert_eq!(lp["text_offset"], json!([-1, -1, -1]));
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    s.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_completions() {
    let (s, _) = TestServer::mock_default();
    let msgs = json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]);
    let body = json!({"messages": msgs, "temperature": 0, "max_tokens": 10});
    let r = s.post_json("/v1/chat/completions", &body, 200).await;
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["model"], "default");
    let c = &r["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert!(c["message"].as_object().unwrap().contains_key("reasoning_content"));
    let prompt_tokens = r["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(prompt_tokens as usize, "<system>be brief\n<user>hi\n<assistant>".len());
    // Stream: role first, content deltas, then an empty delta with finish_reason, usage, [DONE].
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let evs = s.post_sse("/v1/chat/completions", &sb).await;
    assert_eq!(evs[0]["object"], "chat.completion.chunk");
    assert_eq!(evs[0]["choices"][0]["delta"], json!({"role": "assistant", "content": "", "reasoning_content": null, "tool_calls": null}));
    let n = evs.len();
    assert_eq!(evs[n - 1]["choices"], json!([]));
    assert_eq!(evs[n - 1]["usage"]["prompt_tokens"], prompt_tokens);
    let fin = &evs[n - 2]["choices"][0];
    assert_eq!(fin["delta"], json!({"role": null, "content": null, "reasoning_content": null, "tool_calls": null}));
    assert_eq!(fin["finish_reason"], c["finish_reason"]);
    let joined: String = evs[1..n - 2].iter().map(|e| e["choices"][0]["delta"]["content"].as_str().unwrap().to_string()).collect();
    assert_eq!(Value::String(joined.clone()), if joined.is_empty() { json!("") } else { c["message"]["content"].clone() });
    // chat_template_kwargs reach the template.
    let mut kb = body.clone();
    kb["chat_template_kwargs"] = json!({"enable_thinking": false});
    let r2 = s.post_json("/v1/chat/completions", &kb, 200).await;
    assert_eq!(r2["usage"]["prompt_tokens"].as_u64().unwrap(), prompt_tokens + "<nothink>".len() as u64);
    // Logprobs.
    let r3 = s
        .post_json("/v1/chat/completions", &json!({"messages": msgs, "temperature": 0, "max_completion_tokens": 3, "ignore_eos": true, "logprobs": true, "top_logprobs": 2}), 200)
        .await;
    let content = r3["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert!(content[0]["bytes"].is_array());
    s.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_health_admin_and_metrics_routes() {
    let cfg = ServerConfig { served_model_name: "kiln-test".into(), ..Default::default() };
    let (s, mock) = TestServer::mock(cap(4, 128, 16, 512), SchedulerConfig::default(), cfg);
    assert_eq!(s.get("/health").await.status(), 200);
    assert_eq!(s.get("/health_generate").await.status(), 200);
    assert_eq!(s.get("/ping").await.status(), 200);
    let m: Value = s.get("/v1/models").await.json().await.unwrap();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "kiln-test");
    assert_eq!(m["data"][0]["owned_by"], "sglang");
    assert_eq!(m["data"][0]["max_model_len"], 512);
    assert_eq!(s.get("/v1/models/kiln-test").await.status(), 200);
    let nf = s.get("/v1/models/other").await;
    assert_eq!(nf.status(), 404);
    assert_eq!(nf.json::<Value>().await.unwrap()["error"]["code"], "model_not_found");
    for p in ["/get_model_info", "/model_info"] {
        let mi: Value = s.get(p).await.json().await.unwrap();
        assert_eq!(mi["is_generation"], true);
        assert_eq!(mi["weight_version"], "default");
        assert!(mi["architectures"].is_array());
    }
    for p in ["/get_server_info", "/server_info"] {
        let si: Value = s.get(p).await.json().await.unwrap();
        assert_eq!(si["status"], "ready");
        assert!(si["internal_states"][0]["last_gen_throughput"].is_number());
        assert!(si["version"].is_string());
        assert_eq!(si["max_total_num_tokens"], 128 * 16);
        assert_eq!(si["disable_radix_cache"], true, "the mock backend keeps no snapshots");
    }
    let load: Value = s.get("/get_load").await.json().await.unwrap();
    assert_eq!(load[0]["num_reqs"], 0);
    assert_eq!((load[0]["dp_rank"].as_u64(), load[0]["num_tokens"].as_u64()), (Some(0), Some(0)));
    let t: Value = s.post_json("/tokenize", &json!({"prompt": "hey"}), 200).await;
    assert_eq!(t, json!({"tokens": bytes("hey"), "count": 3, "max_model_len": 512}));
    let d = s.post_json("/detokenize", &json!({"tokens": bytes("hey")}), 200).await;
    assert_eq!(d["text"], "hey");
    let f = s.client.post(s.url("/flush_cache")).send().await.unwrap();
    assert_eq!(f.status(), 200);
    assert!(f.text().await.unwrap().starts_with("Cache flushed."));

    // /abort_request by rid ends a running request with finish_reason abort.
    mock.delay_ms.store(5, std::sync::atomic::Ordering::Relaxed);
    let s2 = s.client.clone();
    let url = s.url("/generate");
    let long = tokio::spawn(async move {
        s2.post(url).json(&json!({"text": "long", "rid": "to-abort", "sampling_params": {"max_new_tokens": 400, "ignore_eos": true}})).send().await.unwrap().json::<Value>().await.unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let busy = s.client.post(s.url("/flush_cache")).send().await.unwrap();
    assert_eq!(busy.status(), 400);
    assert_eq!(s.post("/abort_request", &json!({"rid": "to-abort"})).await.status(), 200);
    let r = long.await.unwrap();
    assert_eq!(r["meta_info"]["finish_reason"]["type"], "abort");
    assert!(r["meta_info"]["completion_tokens"].as_u64().unwrap() < 400);
    mock.delay_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    s.wait_idle().await;

    let metrics = s.get("/metrics").await.text().await.unwrap();
    for name in [
        "sglang:num_running_reqs{model_name=\"kiln-test\"} 0",
        "sglang:num_queue_reqs{model_name=\"kiln-test\"} 0",
        "# TYPE sglang:time_to_first_token_seconds histogram",
        "sglang:inter_token_latency_seconds_bucket",
        "sglang:e2e_request_latency_seconds_count",
        "kiln:slots_used{model_name=\"kiln-test\"} 0",
        "kiln:http_responses_total{model_name=\"kiln-test\",route=\"/generate\",code=\"200\"} 1",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    let value = |prefix: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("missing {prefix} in\n{metrics}"));
        line.split(' ').next_back().unwrap().parse().unwrap()
    };
    assert!(value("sglang:generation_tokens_total") > 0.0);
    // Decode-only steps ran: each whole step takes at least its forward.
    assert!(value("kiln:decode_forward_seconds_count") > 0.0);
    assert_eq!(value("kiln:decode_step_seconds_count"), value("kiln:decode_forward_seconds_count"));
    assert!(value("kiln:decode_step_seconds_sum") >= value("kiln:decode_forward_seconds_sum"));

    // Unknown route and wrong method.
    let r = s.get("/nope").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"detail": "Not Found"}));
    let r = s.get("/generate").await;
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_everything_but_health_and_metrics() {
    let cfg = ServerConfig { api_key: Some("sekrit".into()), ..Default::default() };
    let (s, _) = TestServer::mock(cap(2, 64, 16, 256), SchedulerConfig::default(), cfg);
    let body = json!({"text": "a", "sampling_params": {"max_new_tokens": 2}});
    let r = s.post("/generate", &body).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"error": "Unauthorized"}));
    let r = s.client.post(s.url("/generate")).bearer_auth("wrong").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = s.client.post(s.url("/generate")).bearer_auth("sekrit").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.get("/v1/models").await.status(), 401);
    assert_eq!(s.get("/health").await.status(), 200);
    assert_eq!(s.get("/health_generate").await.status(), 200);
    assert_eq!(s.get("/metrics").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_parser_splits_thinking_from_content() {
    let cfg = ServerConfig { reasoning_parser: Some("qwen3".into()), ..Default::default() };
    let (s, _) = TestServer::mock(cap(4, 128, 16, 512), SchedulerConfig::default(), cfg);
    let msgs = json!([{"role": "user", "content": "hi"}]);
    // The prompt opened a think block and the output never closes it: all reasoning.
    let body = json!({"messages": msgs, "temperature": 0, "max_tokens": 8, "ignore_eos": true, "chat_template_kwargs": {"mock_think": true}});
    let r = s.post_json("/v1/chat/completions", &body, 200).await;
    let m = &r["choices"][0]["message"];
    let thought = m["reasoning_content"].as_str().unwrap().to_string();
    assert!(!thought.is_empty());
    assert!(m["content"].is_null());
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let evs = s.post_sse("/v1/chat/completions", &sb).await;
    let streamed: String = evs.iter().filter_map(|e| e["choices"][0]["delta"]["reasoning_content"].as_str()).collect();
    assert_eq!(streamed.trim(), thought);
    assert!(evs.iter().all(|e| e["choices"][0]["delta"]["content"].as_str().is_none_or(str::is_empty)));
    // No think block in the prompt: plain content, and separate_reasoning=false disables it.
    let plain = json!({"messages": msgs, "temperature": 0, "max_tokens": 8, "ignore_eos": true});
    let r = s.post_json("/v1/chat/completions", &plain, 200).await;
    assert!(r["choices"][0]["message"]["reasoning_content"].is_null());
    assert!(r["choices"][0]["message"]["content"].is_string());
    let mut off = body.clone();
    off["separate_reasoning"] = json!(false);
    let r = s.post_json("/v1/chat/completions", &off, 200).await;
    assert!(r["choices"][0]["message"]["reasoning_content"].is_null());
}
