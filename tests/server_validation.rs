//! The bad-input table: each malformed request gets 400 (413 for an oversized body) with
//! an error body that names the field, the value and the limit; the server keeps serving afterwards. Run with
//! `--nocapture` to print the table (input -> status -> message).

mod common;

use common::mock::cap;
use common::server::TestServer;
use kiln::scheduler::SchedulerConfig;
use kiln::server::ServerConfig;
use serde_json::{json, Value};

enum Body {
    Json(Value),
    Raw(&'static str, &'static str),
}

struct Case {
    path: &'static str,
    body: Body,
    status: u16,
    /// Substrings the message must contain.
    msg: &'static [&'static str],
    param: Option<&'static str>,
}

fn j(path: &'static str, v: Value, msg: &'static [&'static str], param: &'static str) -> Case {
    Case { path, body: Body::Json(v), status: 400, msg, param: Some(param) }
}

fn sp(v: Value) -> Value {
    json!({"text": "hi", "sampling_params": v})
}

fn cases() -> Vec<Case> {
    let long = "x".repeat(100);
    let forty = "y".repeat(40);
    let huge = "z".repeat(10_000);
    let g = "/generate";
    let c = "/v1/completions";
    let ch = "/v1/chat/completions";
    let user = json!([{"role": "user", "content": "hi"}]);
    vec![
        Case { path: g, body: Body::Raw("application/json", "{\"text\": \"a\","), status: 400, msg: &["not valid JSON"], param: Some("body") },
        Case { path: g, body: Body::Raw("application/json", "[1, 2]"), status: 400, msg: &["must be a JSON object", "[1,2]"], param: Some("body") },
        Case { path: g, body: Body::Raw("application/json", ""), status: 400, msg: &["body is empty"], param: Some("body") },
        Case { path: g, body: Body::Raw("application/json", "{\"text\": \"a\", \"sampling_params\": {\"temperature\": NaN}}"), status: 400, msg: &["not valid JSON"], param: Some("body") },
        Case { path: g, body: Body::Raw("application/json", "{\"text\": \"a\", \"sampling_params\": {\"top_p\": 1e400}}"), status: 400, msg: &["not valid JSON"], param: Some("body") },
        Case { status: 413, ..j(g, json!({"text": huge}), &["over the limit of 4096 bytes"], "body") },
        j(g, json!({"sampling_params": {}}), &["Either text or input_ids"], "text"),
        j(g, json!({"text": "a", "input_ids": [1]}), &["not both"], "text"),
        j(g, json!({"text": 5}), &["`text` must be a string or a list of strings, got 5"], "text"),
        j(g, json!({"text": ""}), &["`text` is empty"], "text"),
        j(g, json!({"text": []}), &["empty list"], "text"),
        j(g, json!({"input_ids": []}), &["`input_ids` is empty"], "input_ids"),
        j(g, json!({"input_ids": [1, 999999]}), &["`input_ids[1]` = 999999", "[0, 257)"], "input_ids"),
        j(g, json!({"input_ids": [-1]}), &["`input_ids[0]` = -1", "[0, 257)"], "input_ids"),
        j(g, json!({"input_ids": ["a"]}), &["`input_ids[0]` must be an integer, got \"a\""], "input_ids[0]"),
        j(g, json!({"text": long}), &["The input (100 tokens) is longer than the model's context length (64 tokens)"], "text"),
        j(g, json!({"text": forty, "sampling_params": {"max_new_tokens": 30}}), &["maximum context length of 64 tokens", "total of 70 tokens", "40 tokens from the input", "30"], "sampling_params.max_new_tokens"),
        j(g, json!({"text": "hi", "sampling_params": "x"}), &["`sampling_params` must be an object, got \"x\""], "sampling_params"),
        j(g, sp(json!({"temprature": 0})), &["unknown field `sampling_params.temprature`", "temperature"], "sampling_params.temprature"),
        j(g, sp(json!({"temperature": -1})), &["`sampling_params.temperature` = -1", "[0, inf)"], "sampling_params.temperature"),
        j(g, sp(json!({"temperature": 1e39})), &["`sampling_params.temperature` = 1e39", "3.4028235e38"], "sampling_params.temperature"),
        j(c, json!({"prompt": "a", "temperature": 3.5e38}), &["`temperature` = 3.5e38", "3.4028235e38"], "temperature"),
        j(g, sp(json!({"temperature": "hot"})), &["`sampling_params.temperature` must be a number, got \"hot\""], "sampling_params.temperature"),
        j(g, sp(json!({"top_p": 0})), &["`sampling_params.top_p` = 0", "(0, 1]"], "sampling_params.top_p"),
        j(g, sp(json!({"top_p": 1.5})), &["`sampling_params.top_p` = 1.5", "(0, 1]"], "sampling_params.top_p"),
        j(g, sp(json!({"top_k": 0})), &["`sampling_params.top_k` = 0", "-1", ">= 1"], "sampling_params.top_k"),
        j(g, sp(json!({"min_p": 2})), &["`sampling_params.min_p` = 2", "[0, 1]"], "sampling_params.min_p"),
        j(g, sp(json!({"frequency_penalty": 3})), &["`sampling_params.frequency_penalty` = 3", "[-2, 2]"], "sampling_params.frequency_penalty"),
        j(g, sp(json!({"presence_penalty": -2.5})), &["`sampling_params.presence_penalty` = -2.5", "[-2, 2]"], "sampling_params.presence_penalty"),
        j(g, sp(json!({"repetition_penalty": 0})), &["`sampling_params.repetition_penalty` = 0", "(0, 2]"], "sampling_params.repetition_penalty"),
        j(g, sp(json!({"max_new_tokens": -1})), &["`sampling_params.max_new_tokens` = -1", ">= 0"], "sampling_params.max_new_tokens"),
        j(g, sp(json!({"max_new_tokens": 1.5})), &["`sampling_params.max_new_tokens` must be an integer, got 1.5"], "sampling_params.max_new_tokens"),
        j(g, sp(json!({"max_new_tokens": 4, "min_new_tokens": 9})), &["`sampling_params.min_new_tokens` = 9", "max_new_tokens (4)"], "sampling_params.min_new_tokens"),
        j(g, sp(json!({"stop": 5})), &["`sampling_params.stop` must be a string or a list of strings, got 5"], "sampling_params.stop"),
        j(g, sp(json!({"stop_token_ids": [999999]})), &["`sampling_params.stop_token_ids[0]` = 999999", "[0, 257)"], "sampling_params.stop_token_ids"),
        j(g, sp(json!({"ignore_eos": "yes"})), &["`sampling_params.ignore_eos` must be a boolean"], "sampling_params.ignore_eos"),
        j(g, sp(json!({"n": 0})), &["`sampling_params.n` = 0", "[1, 128]"], "sampling_params.n"),
        j(g, sp(json!({"structural_tag": "x"})), &["`sampling_params.structural_tag` is not supported"], "sampling_params.structural_tag"),
        j(g, sp(json!({"regex": "(a+"})), &["`sampling_params.regex` is not a valid grammar"], "sampling_params.regex"),
        j(g, sp(json!({"logit_bias": {"999999": 1}})), &["key 999999 is outside the vocabulary", "[0, 257)"], "sampling_params.logit_bias"),
        j(g, json!({"text": "hi", "logprob_start_len": -5}), &["`logprob_start_len` = -5"], "logprob_start_len"),
        j(g, json!({"text": "hi", "top_logprobs_num": -1}), &["`top_logprobs_num` = -1", "[0, 1000]"], "top_logprobs_num"),
        j(g, json!({"text": "hi", "rid": 5}), &["`rid` must be a string, got 5"], "rid"),
        j(g, json!({"text": "hi", "stream": "yes"}), &["`stream` must be a boolean"], "stream"),
        j(g, json!({"text": ["a", "b"], "sampling_params": [{}]}), &["`sampling_params` has 1 entries for 2 prompts"], "sampling_params"),
        j(g, json!({"text": "hi", "image_data": "x.png"}), &["`image_data` is not supported"], "image_data"),
        Case { path: c, body: Body::Raw("text/plain", "{\"prompt\": \"a\"}"), status: 400, msg: &["Unsupported Media Type: Only 'application/json' is allowed"], param: Some("Content-Type") },
        j(c, json!({"max_tokens": 3}), &["`prompt` is required"], "prompt"),
        j(c, json!({"prompt": ""}), &["Prompt cannot be empty"], "prompt"),
        j(c, json!({"prompt": []}), &["Prompt cannot be empty"], "prompt"),
        j(c, json!({"prompt": 7}), &["`prompt` must be a string", "got 7"], "prompt"),
        j(c, json!({"prompt": "a", "max_tokens": 0}), &["`max_tokens` = 0", ">= 1"], "max_tokens"),
        j(c, json!({"prompt": "a", "max_tokens": null}), &["`max_tokens` must be an integer >= 1, got null"], "max_tokens"),
        j(c, json!({"prompt": "a", "max_tokens": "10"}), &["`max_tokens` must be an integer, got \"10\""], "max_tokens"),
        j(c, json!({"prompt": "a", "max_tokens": 100}), &["maximum context length of 64 tokens", "total of 101 tokens", "`max_tokens`"], "max_tokens"),
        j(c, json!({"prompt": "a", "temperature": -0.5}), &["`temperature` = -0.5", "[0, inf)"], "temperature"),
        j(c, json!({"prompt": "a", "top_p": 0}), &["`top_p` = 0", "(0, 1]"], "top_p"),
        j(c, json!({"prompt": "a", "logprobs": 50}), &["`logprobs` = 50", "[0, 20]"], "logprobs"),
        j(c, json!({"prompt": [[1, 300]]}), &["`prompt[0][1]` = 300", "[0, 257)"], "prompt[0]"),
        j(c, json!({"prompt": "a", "seed": "x"}), &["`seed` must be an integer"], "seed"),
        j(c, json!({"prompt": "a", "stream_options": "x"}), &["`stream_options` must be an object"], "stream_options"),
        j(ch, json!({"model": "m"}), &["`messages` must be a list of message objects, got null"], "messages"),
        j(ch, json!({"messages": []}), &["`messages` is empty"], "messages"),
        j(ch, json!({"messages": [{"content": "hi"}]}), &["`messages[0].role` must be a string, got null"], "messages[0].role"),
        j(ch, json!({"messages": [{"role": "wizard", "content": "hi"}]}), &["`messages[0].role` = \"wizard\" is not a valid role"], "messages[0].role"),
        j(ch, json!({"messages": [{"role": "user", "content": 5}]}), &["`messages[0].content` must be a string, a list of parts or null, got 5"], "messages[0].content"),
        j(ch, json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}), &["`messages[0].content[0].type` = \"image_url\" is not supported"], "messages[0].content[0]"),
        j(ch, json!({"messages": user, "top_logprobs": 2}), &["`top_logprobs` needs `logprobs: true`"], "top_logprobs"),
        j(ch, json!({"messages": user, "max_completion_tokens": 1000}), &["maximum context length of 64 tokens", "1000 tokens for the completion", "`max_completion_tokens`"], "max_completion_tokens"),
        j(ch, json!({"messages": user, "chat_template_kwargs": "x"}), &["`chat_template_kwargs` must be an object"], "chat_template_kwargs"),
        j(ch, json!({"messages": user, "frequency_penalty": 9}), &["`frequency_penalty` = 9", "[-2, 2]"], "frequency_penalty"),
        j("/abort_request", json!({}), &["`rid` is required"], "rid"),
        j("/detokenize", json!({"tokens": [999999]}), &["`tokens[0]` = 999999", "[0, 257)"], "tokens"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_400_naming_field_value_and_limit_and_the_server_keeps_serving() {
    let cfg = ServerConfig { max_body_bytes: 4096, ..Default::default() };
    let (s, _) = TestServer::mock(cap(4, 64, 16, 64), SchedulerConfig::default(), cfg);
    let mut table = vec!["| endpoint | input | status | message |".to_string(), "| --- | --- | --- | --- |".to_string()];
    for case in cases() {
        let req = s.client.post(s.url(case.path));
        let (req, shown) = match &case.body {
            Body::Json(v) => {
                let mut t = v.to_string();
                if t.len() > 90 {
                    t = format!("{}... ({} bytes)", &t[..60], t.len());
                }
                (req.json(v), t)
            }
            Body::Raw(ct, raw) => (req.header("content-type", *ct).body(raw.to_string()), format!("{raw} (Content-Type: {ct})")),
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, case.status, "{} {shown} -> {status} {text}", case.path);
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("error body is not JSON: {text}"));
        // OpenAI routes use the flat shape; native routes nest it under "error".
        let err = if case.path.starts_with("/v1/") {
            assert_eq!(body["object"], "error", "{text}");
            if case.status == 400 {
                assert_eq!(body["type"], "BadRequestError");
            }
            &body
        } else {
            &body["error"]
        };
        assert_eq!(err["code"], case.status, "{text}");
        let msg = err["message"].as_str().unwrap_or_else(|| panic!("no message in {text}"));
        for m in case.msg {
            assert!(msg.contains(m), "{} {shown}: message {msg:?} lacks {m:?}", case.path);
        }
        if let Some(p) = case.param {
            assert_eq!(err["param"], p, "{} {shown}: {text}", case.path);
        }
        table.push(format!("| {} | `{}` | {status} | {} |", case.path, shown.replace('|', "\\|"), msg.replace('|', "\\|")));
        // The server still answers after every bad request.
        assert_eq!(s.get("/health").await.status(), 200);
    }
    println!("{}", table.join("\n"));
    // Good requests on every generating route still succeed.
    let r = s.post_json("/generate", &json!({"text": "hi", "sampling_params": {"max_new_tokens": 3, "temperature": 0}}), 200).await;
    assert!(r["meta_info"]["completion_tokens"].as_u64().unwrap() >= 1);
    let r = s.post_json("/v1/completions", &json!({"prompt": "hi", "max_tokens": 3}), 200).await;
    assert!(r["choices"][0]["text"].is_string());
    let r = s.post_json("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}), 200).await;
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    s.wait_idle().await;
}
