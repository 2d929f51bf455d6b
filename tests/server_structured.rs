//! Structured output over HTTP: `response_format` on the OpenAI routes and
//! `json_schema` / `regex` / `ebnf` in `/generate`'s `sampling_params`. The models are
//! random (the mock's hash logits, the demo network), so any output that parses proves
//! the mask; an unconstrained request beside constrained ones keeps its exact tokens.

mod common;

use common::server::TestServer;
use kiln::backend::Capacity;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Every string, number and list is bounded, so a random model must finish the object.
fn person() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", null]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}},
        "required": ["name", "age", "pet", "tags"], "additionalProperties": false})
}

fn check_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("output is not JSON ({e}): {text:?}"));
    assert!(v["name"].as_str().unwrap().chars().count() <= 6, "{text}");
    assert!((0..=120).contains(&v["age"].as_i64().unwrap()), "{text}");
    assert!([json!("cat"), json!("dog"), Value::Null].contains(&v["pet"]), "{text}");
    assert!(v["tags"].as_array().unwrap().len() <= 2, "{text}");
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": "Describe a person as JSON."}], "max_tokens": 300});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[actix_web::test]
async fn response_format_json_schema_parses_on_a_random_model() {
    let (s, _) = TestServer::mock_default();
    let rf = json!({"type": "json_schema", "json_schema": {"name": "person", "schema": person()}});
    for (temperature, seed) in [(0.0, 0), (1.0, 1), (1.0, 2), (1.5, 3)] {
        let r = s.post_json("/v1/chat/completions", &chat(json!({"response_format": rf, "temperature": temperature, "seed": seed})), 200).await;
        assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
        check_person(r["choices"][0]["message"]["content"].as_str().unwrap());
    }
    // streamed: the deltas concatenate to a valid object too
    let events = s.post_sse("/v1/chat/completions", &chat(json!({"response_format": rf, "stream": true}))).await;
    let text: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    check_person(&text);
    // and on /v1/completions
    let r = s.post_json("/v1/completions", &json!({"prompt": "x", "max_tokens": 300, "response_format": rf}), 200).await;
    check_person(r["choices"][0]["text"].as_str().unwrap());
}

#[actix_web::test]
async fn json_object_regex_and_ebnf_constrain_generate() {
    let (s, _) = TestServer::mock_default();
    let (regex, ebnf) = (REGEX, EBNF);
    for seed in 0..3 {
        let sp = |extra: Value| {
            let mut p = json!({"max_new_tokens": 200, "temperature": 1.0, "sampling_seed": seed});
            for (k, v) in extra.as_object().unwrap() {
                p[k] = v.clone();
            }
            json!({"text": "go", "sampling_params": p})
        };
        let r = s.post_json("/generate", &sp(json!({"regex": regex})), 200).await;
        let t = r["text"].as_str().unwrap();
        let (word, num) = t.split_once('-').unwrap_or_else(|| panic!("{t:?}"));
        assert!(["yes", "no"].contains(&word) && num.len() == 2 && num.bytes().all(|b| b.is_ascii_digit()), "{t:?}");
        let r = s.post_json("/generate", &sp(json!({"ebnf": ebnf})), 200).await;
        let t = r["text"].as_str().unwrap();
        let (g, n) = t.split_once(' ').unwrap_or_else(|| panic!("{t:?}"));
        assert!(["hi", "hello"].contains(&g) && (1..=2).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_lowercase()), "{t:?}");
        let r = s.post_json("/generate", &sp(json!({"json_schema": person().to_string()})), 200).await;
        check_person(r["text"].as_str().unwrap());
    }
}

#[actix_web::test]
async fn unconstrained_requests_keep_their_tokens_beside_constrained_ones() {
    let (s, _) = TestServer::mock_default();
    let s = Arc::new(s);
    let plain = json!({"text": "abc", "sampling_params": {"max_new_tokens": 40, "temperature": 0}});
    let alone = s.post_json("/generate", &plain, 200).await;
    let mut tasks = vec![];
    for k in 0..6 {
        let s = s.clone();
        let body = if k % 2 == 0 {
            plain.clone()
        } else {
            json!({"text": "abc", "sampling_params": {"max_new_tokens": 300, "temperature": 1.0, "json_schema": person()}})
        };
        tasks.push(tokio::spawn(async move { (k, s.post_json("/generate", &body, 200).await) }));
    }
    for t in tasks {
        let (k, r) = t.await.unwrap();
        if k % 2 == 0 {
            assert_eq!(r["output_ids"], alone["output_ids"], "an unconstrained request changed beside constrained ones");
        } else {
            check_person(r["text"].as_str().unwrap());
        }
    }
}

const REGEX: &str = "(yes|no)-[0-9]{2}";
const EBNF: &str = "root ::= greeting \" \" name\ngreeting ::= \"hi\" | \"hello\"\nname ::= [a-z] [a-z]?";

/// A greedy /generate body with `constraint` in its sampling params; with logprobs the
/// scheduler keeps the host path (the sampler masks the whole row), without them the
/// backend takes the masked argmax (`SeqChunk::allowed`).
fn greedy_constrained(constraint: &Value, prompt: &str, logprobs: bool) -> Value {
    let mut p = json!({"max_new_tokens": 300, "temperature": 0});
    for (k, v) in constraint.as_object().unwrap() {
        p[k] = v.clone();
    }
    json!({"text": prompt, "sampling_params": p, "return_logprob": logprobs})
}

#[actix_web::test]
async fn greedy_constrained_tokens_are_the_same_masked_on_the_device_or_on_the_host() {
    let (s, st) = TestServer::mock_default();
    for c in [json!({"regex": REGEX}), json!({"ebnf": EBNF}), json!({"json_schema": person().to_string()})] {
        for prompt in ["go", "abc", "Describe a person."] {
            let before = st.masked_argmax.load(Relaxed);
            let dev = s.post_json("/generate", &greedy_constrained(&c, prompt, false), 200).await;
            let masked = st.masked_argmax.load(Relaxed) - before;
            let n = dev["output_ids"].as_array().unwrap().len() as u64;
            assert_eq!(masked, n, "{c}: every token of a greedy constrained request is a masked argmax");
            let host = s.post_json("/generate", &greedy_constrained(&c, prompt, true), 200).await;
            assert_eq!(st.masked_argmax.load(Relaxed) - before, masked, "{c}: a logprob request keeps the host path");
            assert_eq!(dev["output_ids"], host["output_ids"], "{c} {prompt:?}: device mask and host mask disagree");
            assert_eq!(dev["meta_info"]["finish_reason"]["type"], "stop", "{dev}");
        }
    }
}

#[actix_web::test]
async fn a_step_mixing_masked_and_unmasked_rows_gives_each_request_its_tokens_alone() {
    let (s, st) = TestServer::mock_default();
    let s = Arc::new(s);
    let bodies = [
        greedy_constrained(&json!({"json_schema": person().to_string()}), "abc", false),
        json!({"text": "abc", "sampling_params": {"max_new_tokens": 40, "temperature": 0}}),
        greedy_constrained(&json!({"regex": REGEX}), "xy", false),
        json!({"text": "abc", "sampling_params": {"max_new_tokens": 300, "temperature": 1.0, "sampling_seed": 5, "json_schema": person().to_string()}}),
        greedy_constrained(&json!({"ebnf": EBNF}), "q", false),
    ];
    let mut alone = vec![];
    for b in &bodies {
        alone.push(s.post_json("/generate", b, 200).await["output_ids"].clone());
    }
    // Twice each at once, so steps hold masked, unmasked and host-sampled rows together.
    let mut tasks = vec![];
    for k in 0..2 * bodies.len() {
        let (s, body) = (s.clone(), bodies[k % bodies.len()].clone());
        tasks.push(tokio::spawn(async move { (k, s.post_json("/generate", &body, 200).await) }));
    }
    for t in tasks {
        let (k, r) = t.await.unwrap();
        assert_eq!(r["output_ids"], alone[k % bodies.len()], "request {k} changed in a mixed batch");
    }
    assert!(st.max_chunks.load(Relaxed) > 1, "the requests never shared a step");
}

#[actix_web::test]
async fn bad_constraints_are_400_naming_the_field() {
    let (s, _) = TestServer::mock_default();
    for (path, body, field) in [
        ("/v1/chat/completions", chat(json!({"response_format": {"type": "json_schema"}})), "response_format"),
        ("/v1/chat/completions", chat(json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/x"}}}})), "response_format"),
        ("/generate", json!({"text": "a", "sampling_params": {"regex": "(oops"}}), "sampling_params.regex"),
        ("/generate", json!({"text": "a", "sampling_params": {"json_schema": "{bad"}}), "sampling_params.json_schema"),
        ("/generate", json!({"text": "a", "sampling_params": {"regex": "a", "json_schema": "{}"}}), "sampling_params."),
    ] {
        let r = s.post_json(path, &body, 400).await;
        assert!(r["message"].as_str().or(r["error"]["message"].as_str()).unwrap_or_default().contains(&format!("`{field}")), "{body}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_model_with_the_real_tokenizer_writes_schema_valid_json() {
    let s = TestServer::demo_with_capacity(Capacity { slots: 2, block_size: 16, kv_blocks: 64, max_seq_len: 512 });
    let rf = json!({"type": "json_schema", "json_schema": {"name": "person", "schema": person()}});
    for seed in 0..2 {
        let body = chat(json!({"response_format": rf, "temperature": 1.0, "seed": seed,
                                "chat_template_kwargs": {"enable_thinking": false}}));
        let r = s.post_json("/v1/chat/completions", &body, 200).await;
        assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
        check_person(r["choices"][0]["message"]["content"].as_str().unwrap());
    }
    // Greedy: the CPU backend's masked argmax (no logprobs) and the sampler's host mask
    // (logprobs on) pick the same tokens.
    let greedy = |logprobs: bool| chat(json!({"response_format": rf, "temperature": 0, "logprobs": logprobs, "max_tokens": 120,
                                              "chat_template_kwargs": {"enable_thinking": false}}));
    let dev = s.post_json("/v1/chat/completions", &greedy(false), 200).await;
    let host = s.post_json("/v1/chat/completions", &greedy(true), 200).await;
    assert_eq!(dev["choices"][0]["message"]["content"], host["choices"][0]["message"]["content"], "{dev}\n{host}");
}
