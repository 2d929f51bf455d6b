//! Tool calls end to end over HTTP: the real server, scheduler, sampler and detokenizer
//! on a scripted backend (`common/scripted.rs`) that writes a chosen reply, so the
//! responses carry real `tool_calls`. What is scripted is only the model's text.

mod common;

use common::scripted::scripted_server;
use common::server::TestServer;
use serde_json::{json, Value};

const CALL: &str = "I'll check.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nBoston, MA\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>";
const ANSWER: &str = "It is sunny in Boston.";
const CUT: &str = "Checking.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nBos";

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city"]}}}])
}

fn request(extra: Value) -> Value {
    let mut body = json!({"model": "default", "messages": [{"role": "user", "content": "Weather in Boston?"}],
                          "tools": tools(), "max_tokens": 400, "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// (content, [(name, arguments, id)], finish_reason) of a streamed chat response.
fn collect_stream(events: &[Value]) -> (String, Vec<(String, String, String)>, String) {
    let (mut content, mut calls, mut finish) = (String::new(), Vec::<(String, String, String)>::new(), String::new());
    for ev in events {
        let choice = &ev["choices"][0];
        if let Some(c) = choice["delta"]["content"].as_str() {
            assert!(!c.contains("<tool_call>"), "tool-call markup leaked into content: {c:?}");
            content.push_str(c);
        }
        for tc in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = tc["index"].as_u64().unwrap() as usize;
            if let Some(name) = tc["function"]["name"].as_str() {
                assert_eq!(i, calls.len(), "a new call comes with the next index");
                assert_eq!(tc["type"], "function");
                assert_eq!(tc["function"]["arguments"], "", "the name comes first, the arguments after");
                calls.push((name.to_string(), String::new(), tc["id"].as_str().unwrap().to_string()));
            } else {
                calls[i].1.push_str(tc["function"]["arguments"].as_str().unwrap());
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (content, calls, finish)
}

#[actix_web::test]
async fn a_tool_call_is_parsed_into_tool_calls() {
    let s = scripted_server(&[("<user>", CALL)]);
    let r = s.post_json("/v1/chat/completions", &request(json!({})), 200).await;
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "I'll check.");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["type"], "function");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Boston, MA", "days": 3}), "days is an integer in the schema, city a string");
}

#[actix_web::test]
async fn streaming_sends_tool_call_deltas_and_agrees_with_the_full_response() {
    let s = scripted_server(&[("<user>", CALL)]);
    let full = s.post_json("/v1/chat/completions", &request(json!({})), 200).await;
    let events = s.post_sse("/v1/chat/completions", &request(json!({"stream": true}))).await;
    let (content, calls, finish) = collect_stream(&events);
    assert_eq!(content, full["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(finish, "tool_calls");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "get_weather");
    assert_eq!(calls[0].1, full["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap());
    let fragments = events.iter().filter(|e| e["choices"][0]["delta"]["tool_calls"].is_array()).count();
    assert_eq!(fragments, 4, "name, then one fragment per parameter, then the closing brace");
}

#[actix_web::test]
async fn tool_choice_none_and_requests_without_tools_return_the_text() {
    let s = scripted_server(&[("<user>", CALL)]);
    for body in [request(json!({"tool_choice": "none"})), json!({"messages": [{"role": "user", "content": "hi"}]})] {
        let r = s.post_json("/v1/chat/completions", &body, 200).await;
        assert_eq!(r["choices"][0]["message"]["content"], CALL);
        assert_eq!(r["choices"][0]["message"]["tool_calls"], Value::Null);
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
    }
}

#[actix_web::test]
async fn a_call_cut_off_by_max_tokens_comes_back_as_text() {
    let s = scripted_server(&[("<user>", CUT)]);
    let r = s.post_json("/v1/chat/completions", &request(json!({})), 200).await;
    assert_eq!(r["choices"][0]["message"]["content"], CUT);
    assert_eq!(r["choices"][0]["message"]["tool_calls"], Value::Null);
    let s = scripted_server(&[("<user>", CALL)]);
    let max = CALL.len() - 20;
    let r = s.post_json("/v1/chat/completions", &request(json!({"max_tokens": max})), 200).await;
    assert_eq!(r["choices"][0]["message"]["content"], &CALL[..max]);
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    let events = s.post_sse("/v1/chat/completions", &request(json!({"max_tokens": max, "stream": true}))).await;
    let (content, calls, finish) = {
        // the streamed text may contain the markup here: it is returned as text
        let mut content = String::new();
        for ev in &events {
            content.push_str(ev["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
        let calls = events.iter().filter(|e| e["choices"][0]["delta"]["tool_calls"].is_array()).count();
        (content, calls, events.last().unwrap()["choices"][0]["finish_reason"].clone())
    };
    assert_eq!(content, &CALL[..max]);
    assert_eq!(calls, 0);
    assert_eq!(finish, "length");
}

#[actix_web::test]
async fn tool_choice_required_and_named_force_a_call() {
    // the scripted model answers in prose; the grammar turns the answer into a call
    let s = scripted_server(&[("<user>", "Sure, no tools needed!")]);
    let auto = s.post_json("/v1/chat/completions", &request(json!({})), 200).await;
    assert_eq!(auto["choices"][0]["message"]["content"], "Sure, no tools needed!");
    let named = request(json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}));
    for body in [named.clone(), request(json!({"tool_choice": "required"}))] {
        let r = s.post_json("/v1/chat/completions", &body, 200).await;
        assert_eq!(r["usage"]["prompt_tokens"], auto["usage"]["prompt_tokens"], "the prompt is not changed");
        assert_eq!(r["choices"][0]["message"]["content"], Value::Null, "{r}");
        assert_eq!(r["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(r["choices"][0]["finish_reason"], "tool_calls");
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let (content, calls, finish) = collect_stream(&s.post_sse("/v1/chat/completions", &streamed).await);
        assert_eq!((content.as_str(), calls.len(), finish.as_str()), ("", 1, "tool_calls"));
        assert_eq!(calls[0].1, r["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap());
    }
    // a call the model writes itself passes through the grammar unchanged
    let s = scripted_server(&[("<user>", CALL.trim_start_matches("I'll check.\n\n"))]);
    let r = s.post_json("/v1/chat/completions", &named, 200).await;
    let args: Value = serde_json::from_str(r["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Boston, MA", "days": 3}));
    // a named choice and response_format both constrain: refused
    let both = request(json!({"tool_choice": "required", "response_format": {"type": "json_object"}}));
    let r = s.post_json("/v1/chat/completions", &both, 400).await;
    assert!(r["message"].as_str().unwrap().contains("`response_format` cannot be combined"), "{r}");
}

#[actix_web::test]
async fn a_tool_result_turn_renders_and_answers() {
    let s: TestServer = scripted_server(&[("<user>", CALL), ("<tool>", ANSWER)]);
    let first = s.post_json("/v1/chat/completions", &request(json!({})), 200).await;
    let assistant = first["choices"][0]["message"].clone();
    let call_id = assistant["tool_calls"][0]["id"].clone();
    let body = request(json!({"messages": [
        {"role": "user", "content": "Weather in Boston?"},
        assistant,
        {"role": "tool", "tool_call_id": call_id, "content": "{\"sky\": \"sunny\"}"},
    ]}));
    let r = s.post_json("/v1/chat/completions", &body, 200).await;
    assert_eq!(r["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(r["choices"][0]["message"]["tool_calls"], Value::Null);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
}

#[actix_web::test]
async fn bad_tool_fields_are_rejected_with_400() {
    let s = scripted_server(&[("<user>", CALL)]);
    for (body, field) in [
        (json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}), "tool_choice"),
        (request(json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}})), "tool_choice"),
        (request(json!({"tool_choice": "sometimes"})), "tool_choice"),
        (request(json!({"tools": [{"type": "function"}]})), "tools[0]"),
    ] {
        let r = s.post_json("/v1/chat/completions", &body, 400).await;
        assert!(r["message"].as_str().unwrap().contains(&format!("`{field}`")), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_choice_makes_the_random_demo_model_call() {
    // real tokenizer and template, random weights: only the grammar makes this a call
    let s = TestServer::demo_with_capacity(kiln::backend::Capacity { slots: 2, block_size: 16, kv_blocks: 256, max_seq_len: 2048 });
    let tools = json!([{"type": "function", "function": {"name": "get_time", "description": "The time now",
                                                          "parameters": {"type": "object", "properties": {}}}}]);
    for seed in 0..2 {
        let body = json!({"messages": [{"role": "user", "content": "What time is it?"}], "tools": tools, "seed": seed,
                          "tool_choice": {"type": "function", "function": {"name": "get_time"}}, "max_tokens": 300,
                          "chat_template_kwargs": {"enable_thinking": false}});
        let r = s.post_json("/v1/chat/completions", &body, 200).await;
        let calls = r["choices"][0]["message"]["tool_calls"].as_array().unwrap_or_else(|| panic!("no tool_calls: {r}"));
        assert!(calls.iter().all(|c| c["function"]["name"] == "get_time" && c["function"]["arguments"] == "{}"), "{r}");
        assert_eq!(r["choices"][0]["finish_reason"], "tool_calls", "{r}");
    }
}
