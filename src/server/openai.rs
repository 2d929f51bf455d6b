//! `POST /v1/completions` and `POST /v1/chat/completions` (SGLang's OpenAI-compatible
//! shapes: flat error objects, `matched_stop`, `usage`, `metadata`, SSE chunks).

use super::errors::{ApiError, ApiResult};
use super::exec::{self, Acc};
use super::validate::{self as v, MaxNew, Parsed, OPENAI};
use super::tool_calls::{self, ToolCall, ToolCallParser, ToolEvent, ToolSet};
use super::{chat, conn, constraint, reasoning, sse, unix_now, AppState, State};
use crate::sampling::grammar::GrammarSpec;
use crate::scheduler::{Codec, FinishReason, GenRequest, LogprobConfig, Output, TokenLogprob};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

/// What the response needs besides the outputs.
struct Meta {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    /// Top-logprob count when logprobs were asked for.
    logprobs: Option<usize>,
    /// Echoed prompt text per choice (completions `echo`).
    echo: Vec<String>,
    /// Prompt tokens counted once per prompt.
    prompt_tokens: usize,
    include_usage: bool,
    continuous_usage: bool,
    /// With a reasoning parser: whether the prompt already opened the think block.
    reasoning: Option<bool>,
    /// `--enable-cache-report`: usage carries `prompt_tokens_details.cached_tokens`.
    cache_report: bool,
    /// Chat with tools and a tool-call parser: the tools to parse the output against.
    tools: Option<ToolSet>,
}

/// What only chat requests carry into `run`.
#[derive(Default)]
struct ChatExtras {
    reasoning: Option<bool>,
    tools: Option<ToolSet>,
}

pub async fn completions(state: State, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    v::require_json_content_type(&req)?;
    let obj = v::read_json(&req, body, state.cfg.max_body_bytes).await?;
    // Tokenizing may be long: off the HTTP worker.
    let st = state.clone();
    let (prompts, obj) = state.prompts.run(move || (completion_prompts(&st, &obj), obj)).await?;
    let prompts = prompts?;
    if matches!(obj.get("max_tokens"), Some(Value::Null)) {
        return Err(ApiError::bad("max_tokens", "`max_tokens` must be an integer >= 1, got null"));
    }
    let ctx = v::Ctx { vocab: state.vocab(), defaults: &Default::default() };
    let parsed = v::parse_sampling(&obj, &OPENAI, &ctx, MaxNew::Default(16))?;
    let logprobs = match v::field(&obj, "logprobs") {
        None => None,
        Some(x) => {
            let k = v::as_i64("logprobs", x)?;
            v::check_range("logprobs", k as f64, 0.0, true, 20.0, true)?;
            Some(k as usize)
        }
    };
    let echo = v::field(&obj, "echo").map(|x| v::as_bool("echo", x)).transpose()?.unwrap_or(false);
    let echo_texts: Vec<String> = if echo {
        prompts
            .iter()
            .flat_map(|p| {
                let t = state.codec.decode(p, false).unwrap_or_default();
                std::iter::repeat_n(t, parsed.n)
            })
            .collect()
    } else {
        vec![]
    };
    run(state, &req, &obj, Kind::Completion, prompts, parsed, logprobs, echo_texts, ChatExtras::default()).await
}

pub async fn chat_completions(state: State, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    v::require_json_content_type(&req)?;
    let obj = v::read_json(&req, body, state.cfg.max_body_bytes).await?;
    // Templating and tokenizing may be long: off the HTTP worker.
    let st = state.clone();
    let (prompt, mut obj) = state.prompts.run(move || (chat::prompt_ids(&st, &obj), obj)).await?;
    let prompt = prompt?;
    let separate = v::field(&obj, "separate_reasoning").map(|x| v::as_bool("separate_reasoning", x)).transpose()?.unwrap_or(true);
    let reasoning = (state.cfg.reasoning_parser.is_some() && separate).then(|| reasoning::forced(&prompt.text));
    let call_grammar = prompt.tools.call_grammar(reasoning::forced(&prompt.text));
    let extras = ChatExtras { reasoning, tools: prompt.tools.parse };
    // max_completion_tokens wins over max_tokens; both default to "up to the context".
    if let Some(m) = v::field(&obj, "max_completion_tokens").cloned() {
        obj.insert("max_tokens".into(), m);
    }
    let defaults = state.cfg.chat_defaults.clone();
    let ctx = v::Ctx { vocab: state.vocab(), defaults: &defaults };
    let mut parsed = v::parse_sampling(&obj, &OPENAI, &ctx, MaxNew::Unlimited)?;
    // tool_choice required / named: decoding is constrained to calls (tool_choice.rs)
    if let Some(g) = call_grammar {
        parsed.sampling.grammar = Some(constraint::compile(&state, "tool_choice", &GrammarSpec::Lark(g))?);
    }
    let want_lp = v::field(&obj, "logprobs").map(|x| v::as_bool("logprobs", x)).transpose()?.unwrap_or(false);
    let top = match v::field(&obj, "top_logprobs") {
        None => 0,
        Some(x) => {
            let k = v::as_i64("top_logprobs", x)?;
            v::check_range("top_logprobs", k as f64, 0.0, true, 20.0, true)?;
            if !want_lp {
                return Err(ApiError::bad("top_logprobs", "`top_logprobs` needs `logprobs: true`"));
            }
            k as usize
        }
    };
    run(state, &req, &obj, Kind::Chat, vec![prompt.ids], parsed, want_lp.then_some(top), vec![], extras).await
}

fn completion_prompts(state: &AppState, obj: &Map<String, Value>) -> ApiResult<Vec<Vec<u32>>> {
    let vocab = state.vocab();
    let empty = || ApiError::bad("prompt", "Prompt cannot be empty (`prompt` has no tokens)");
    let encode = |s: &str| -> ApiResult<Vec<u32>> {
        if s.is_empty() {
            return Err(empty());
        }
        v::encode_prompt(&*state.codec, s, true, state.context_len(), "prompt")
    };
    match obj.get("prompt") {
        None | Some(Value::Null) => Err(ApiError::bad("prompt", "`prompt` is required")),
        Some(Value::String(s)) => Ok(vec![encode(s)?]),
        Some(Value::Array(a)) if a.is_empty() => Err(empty()),
        Some(Value::Array(a)) => match &a[0] {
            Value::String(_) => a.iter().enumerate().map(|(i, x)| encode(v::as_str(&format!("prompt[{i}]"), x)?)).collect(),
            Value::Array(_) => a
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let ids = v::as_token_ids(&format!("prompt[{i}]"), x, vocab)?;
                    if ids.is_empty() { Err(empty()) } else { Ok(ids) }
                })
                .collect(),
            _ => Ok(vec![v::as_token_ids("prompt", &Value::Array(a.clone()), vocab)?]),
        },
        Some(x) => Err(ApiError::bad(
            "prompt",
            format!("`prompt` must be a string, a list of strings, a list of token ids or a list of lists, got {}", v::show(x)),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    state: State,
    req: &HttpRequest,
    obj: &Map<String, Value>,
    kind: Kind,
    prompts: Vec<Vec<u32>>,
    mut parsed: Parsed,
    logprobs: Option<usize>,
    echo: Vec<String>,
    extras: ChatExtras,
) -> Result<HttpResponse, ApiError> {
    if let MaxNew::Explicit(0) = parsed.max_new {
        return Err(ApiError::bad("max_tokens", "`max_tokens` = 0 is out of range: must be >= 1"));
    }
    constraint::apply(&state, obj, "", true, &mut parsed.sampling)?;
    let stream = v::field(obj, "stream").map(|x| v::as_bool("stream", x)).transpose()?.unwrap_or(false);
    let (mut include_usage, mut continuous_usage) = (false, false);
    if let Some(so) = v::field(obj, "stream_options") {
        let so = so.as_object().ok_or_else(|| ApiError::bad("stream_options", format!("`stream_options` must be an object, got {}", v::show(so))))?;
        if let Some(x) = v::field(so, "include_usage") {
            include_usage = v::as_bool("stream_options.include_usage", x)?;
        }
        if let Some(x) = v::field(so, "continuous_usage_stats") {
            continuous_usage = v::as_bool("stream_options.continuous_usage_stats", x)?;
        }
    }
    let model = match v::field(obj, "model") {
        None => "default".to_string(),
        Some(m) => v::as_str("model", m)?.to_string(),
    };
    let rid = v::field(obj, "rid").map(|x| v::as_str("rid", x).map(str::to_string)).transpose()?;
    let id = rid.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let context = state.context_len();
    let (pp, mp) = match kind {
        Kind::Completion => ("prompt", "max_tokens"),
        Kind::Chat => ("messages", if v::field(obj, "max_completion_tokens").is_some() { "max_completion_tokens" } else { "max_tokens" }),
    };
    let total = prompts.len() * parsed.n;
    let mut reqs = vec![];
    let prompt_tokens = prompts.iter().map(Vec::len).sum();
    for p in &prompts {
        let max_new = v::resolve_max_new(p.len(), context, parsed.max_new, pp, mp)?;
        for _ in 0..parsed.n {
            let r_id = if total == 1 { id.clone() } else { format!("{id}_{}", reqs.len()) };
            let mut stop = parsed.stop.clone();
            stop.max_new_tokens = max_new;
            let mut r = GenRequest::new(r_id, p.clone(), parsed.sampling.clone(), stop);
            r.arrival = Instant::now();
            if let Some(top) = logprobs {
                r.logprobs = LogprobConfig { enabled: true, start_len: -1, top_n: top, token_ids: vec![] };
            }
            reqs.push(r);
        }
    }
    let meta = Arc::new(Meta {
        kind,
        id,
        model,
        created: unix_now() as u64,
        logprobs,
        echo,
        prompt_tokens,
        include_usage,
        continuous_usage,
        reasoning: extras.reasoning,
        cache_report: state.cfg.enable_cache_report,
        tools: extras.tools,
    });
    let items = exec::submit_all(&state, reqs)?;
    let codec = state.codec.clone();
    if !stream {
        let accs = exec::run_all(items, conn::probe(req)).await?;
        return Ok(HttpResponse::Ok().json(full_response(&meta, &accs, &*codec)));
    }
    Ok(stream_response(meta, items, codec, conn::probe(req)))
}

/// OpenAI usage; `cached` (prompt tokens served from the prefix cache, summed over the
/// choices as SGLang does) only with `--enable-cache-report`.
fn usage(prompt: usize, completion: usize, cached: Option<usize>) -> Value {
    let details = cached.map_or(Value::Null, |c| json!({"cached_tokens": c}));
    json!({"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
           "prompt_tokens_details": details, "reasoning_tokens": 0})
}

fn matched_stop(f: &Option<FinishReason>) -> Value {
    match f {
        Some(FinishReason::StopToken(id)) => json!(id),
        Some(FinishReason::StopString(s)) => json!(s),
        _ => Value::Null,
    }
}

fn finish_kind(f: &Option<FinishReason>) -> Value {
    f.as_ref().map_or(Value::Null, |f| json!(f.kind()))
}

/// A chat choice that stopped after making tool calls finishes with "tool_calls" (as
/// OpenAI and SGLang); one cut off by `max_tokens` stays "length".
fn chat_finish_kind(f: &Option<FinishReason>, made_calls: bool) -> Value {
    match f {
        Some(FinishReason::StopToken(_) | FinishReason::StopString(_)) if made_calls => json!("tool_calls"),
        _ => finish_kind(f),
    }
}

fn call_id() -> String {
    format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

/// `message.tool_calls[i]` of a non-streaming response.
fn tool_call_json(c: &ToolCall) -> Value {
    json!({"id": call_id(), "type": "function", "function": {"name": c.name, "arguments": c.arguments_json()}})
}

fn token_str(codec: &dyn Codec, id: u32) -> String {
    codec.decode(&[id], false).unwrap_or_default()
}

fn logprobs_json(kind: Kind, entries: &[TokenLogprob], codec: &dyn Codec) -> Value {
    match kind {
        Kind::Completion => json!({
            "text_offset": vec![-1; entries.len()],
            "token_logprobs": entries.iter().map(|e| e.logprob).collect::<Vec<_>>(),
            "tokens": entries.iter().map(|e| token_str(codec, e.id)).collect::<Vec<_>>(),
            "top_logprobs": entries.iter().map(|e| {
                let mut m = Map::new();
                for (id, lp) in &e.top {
                    m.entry(token_str(codec, *id)).or_insert(json!(lp));
                }
                Value::Object(m)
            }).collect::<Vec<_>>(),
        }),
        Kind::Chat => {
            let item = |id: u32, lp: f32| {
                let t = token_str(codec, id);
                json!({"token": t, "bytes": t.as_bytes(), "logprob": lp})
            };
            json!({"content": entries.iter().map(|e| {
                let mut o = item(e.id, e.logprob.unwrap_or(f32::NEG_INFINITY));
                o["top_logprobs"] = e.top.iter().map(|(id, lp)| item(*id, *lp)).collect();
                o
            }).collect::<Vec<_>>()})
        }
    }
}

fn full_response(meta: &Meta, accs: &[Acc], codec: &dyn Codec) -> Value {
    let completion: usize = accs.iter().map(|a| a.ids.len()).sum();
    let choices: Vec<Value> = accs
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let lp = if meta.logprobs.is_some() { logprobs_json(meta.kind, &a.logprobs, codec) } else { Value::Null };
            match meta.kind {
                Kind::Completion => {
                    let text = format!("{}{}", meta.echo.get(k).map_or("", String::as_str), a.text);
                    json!({"index": k, "text": text, "logprobs": lp, "finish_reason": finish_kind(&a.finish),
                           "matched_stop": matched_stop(&a.finish)})
                }
                Kind::Chat => {
                    let (r, c) = match meta.reasoning {
                        Some(force) => reasoning::split(&a.text, force),
                        None => (None, a.text.clone()),
                    };
                    let (c, calls) = match &meta.tools {
                        Some(tools) => tool_calls::parse_complete(&c, tools),
                        None => (c, vec![]),
                    };
                    let content = if c.is_empty() { Value::Null } else { json!(c) };
                    let tool_calls = if calls.is_empty() { Value::Null } else { calls.iter().map(tool_call_json).collect() };
                    json!({"index": k,
                           "message": {"role": "assistant", "content": content, "reasoning_content": r, "tool_calls": tool_calls},
                           "logprobs": lp, "finish_reason": chat_finish_kind(&a.finish, !calls.is_empty()),
                           "matched_stop": matched_stop(&a.finish)})
                }
            }
        })
        .collect();
    let object = if meta.kind == Kind::Chat { "chat.completion" } else { "text_completion" };
    json!({"id": meta.id, "object": object, "created": meta.created, "model": meta.model, "choices": choices,
           "usage": usage(meta.prompt_tokens, completion, meta.cache_report.then(|| accs.iter().map(|a| a.cached_tokens).sum())), "metadata": {"weight_version": "default"}})
}

/// Per-choice streaming state.
struct ChoiceState {
    index: usize,
    started: bool,
    pending_lp: Vec<TokenLogprob>,
    completion: usize,
    prompt: usize,
    reason: Option<reasoning::Stream>,
    /// Chat with tools: the tool-call parser and how many calls it has streamed.
    tools: Option<ToolCallParser>,
    calls_sent: usize,
}

fn chunk(meta: &Meta, choices: Vec<Value>, usage: Value) -> Value {
    let object = if meta.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
    json!({"id": meta.id, "object": object, "created": meta.created, "model": meta.model, "choices": choices, "usage": usage})
}

fn delta(role: Option<&str>, content: Option<&str>) -> Value {
    json!({"role": role, "content": content, "reasoning_content": Value::Null, "tool_calls": Value::Null})
}

fn reasoning_delta(text: &str) -> Value {
    json!({"role": Value::Null, "content": Value::Null, "reasoning_content": text, "tool_calls": Value::Null})
}

/// Streamed deltas of one tool call, OpenAI style: the id and name first (empty
/// arguments), then the arguments in fragments (one per parameter, see
/// `ToolCall::argument_fragments`).
fn tool_call_deltas(call: &ToolCall, index: usize) -> Vec<Value> {
    let item = |id: Value, ty: Value, name: Value, args: &str| {
        json!({"role": Value::Null, "content": Value::Null, "reasoning_content": Value::Null,
               "tool_calls": [{"index": index, "id": id, "type": ty, "function": {"name": name, "arguments": args}}]})
    };
    let mut out = vec![item(json!(call_id()), json!("function"), json!(call.name), "")];
    out.extend(call.argument_fragments().iter().map(|f| item(Value::Null, Value::Null, Value::Null, f)));
    out
}

/// Events for one output of one choice.
fn choice_events(meta: &Meta, st: &mut ChoiceState, o: &Output, codec: &dyn Codec) -> Vec<Value> {
    if let Some(FinishReason::Abort { message, status: Some(code) }) = &o.finish {
        let e = ApiError::status_code(*code, message.clone());
        return vec![json!({"error": e.object()})];
    }
    st.completion += o.ids.len();
    st.pending_lp.extend(o.logprobs.iter().cloned());
    let usage_now = if meta.continuous_usage { usage(st.prompt, st.completion, meta.cache_report.then_some(o.cached_tokens)) } else { Value::Null };
    let mut text = o.text.clone();
    if !st.started && meta.kind == Kind::Completion {
        if let Some(e) = meta.echo.get(st.index) {
            text = format!("{e}{text}");
        }
    }
    let mut evs = vec![];
    let take_lp = |st: &mut ChoiceState| {
        if meta.logprobs.is_some() {
            logprobs_json(meta.kind, &std::mem::take(&mut st.pending_lp), codec)
        } else {
            Value::Null
        }
    };
    match meta.kind {
        Kind::Completion => {
            if !text.is_empty() || o.finish.is_some() {
                let lp = take_lp(st);
                evs.push(chunk(
                    meta,
                    vec![json!({"index": st.index, "text": text, "logprobs": lp,
                                "finish_reason": finish_kind(&o.finish), "matched_stop": matched_stop(&o.finish)})],
                    usage_now,
                ));
            }
        }
        Kind::Chat => {
            if !st.started && (!o.ids.is_empty() || o.finish.is_some()) {
                evs.push(chunk(
                    meta,
                    vec![json!({"index": st.index, "delta": delta(Some("assistant"), Some("")), "logprobs": Value::Null,
                                "finish_reason": Value::Null, "matched_stop": Value::Null})],
                    usage_now.clone(),
                ));
            }
            let (thought, text) = match st.reason.as_mut() {
                Some(r) => {
                    let (mut a, mut b) = r.push(&text);
                    if o.finish.is_some() {
                        let (c, d) = r.finish();
                        a.push_str(&c);
                        b.push_str(&d);
                    }
                    (a, b)
                }
                None => (String::new(), text),
            };
            if !thought.is_empty() {
                evs.push(chunk(
                    meta,
                    vec![json!({"index": st.index, "delta": reasoning_delta(&thought), "logprobs": Value::Null,
                                "finish_reason": Value::Null, "matched_stop": Value::Null})],
                    usage_now.clone(),
                ));
            }
            // with tools, the text goes through the tool-call parser: content deltas for
            // plain text, tool_calls deltas for each call
            let deltas: Vec<Value> = match st.tools.as_mut() {
                None if text.is_empty() => vec![],
                None => vec![delta(None, Some(&text))],
                Some(p) => {
                    let mut events = p.push(&text);
                    if o.finish.is_some() {
                        events.extend(p.finish());
                    }
                    let mut out = vec![];
                    for e in events {
                        match e {
                            ToolEvent::Text(t) => out.push(delta(None, Some(&t))),
                            ToolEvent::Call(c) => {
                                out.extend(tool_call_deltas(&c, st.calls_sent));
                                st.calls_sent += 1;
                            }
                        }
                    }
                    out
                }
            };
            for (i, d) in deltas.into_iter().enumerate() {
                // the output's logprobs go with its first delta
                let lp = if i == 0 { take_lp(st) } else { Value::Null };
                evs.push(chunk(
                    meta,
                    vec![json!({"index": st.index, "delta": d, "logprobs": lp,
                                "finish_reason": Value::Null, "matched_stop": Value::Null})],
                    usage_now.clone(),
                ));
            }
            if o.finish.is_some() {
                let lp = if st.pending_lp.is_empty() { Value::Null } else { take_lp(st) };
                evs.push(chunk(
                    meta,
                    vec![json!({"index": st.index, "delta": delta(None, None), "logprobs": lp,
                                "finish_reason": chat_finish_kind(&o.finish, st.calls_sent > 0), "matched_stop": matched_stop(&o.finish)})],
                    usage_now,
                ));
            }
        }
    }
    if !o.ids.is_empty() || o.finish.is_some() {
        st.started = true;
    }
    evs
}

fn stream_response(
    meta: Arc<Meta>,
    items: Vec<(crate::scheduler::Ticket, Acc)>,
    codec: Arc<dyn Codec>,
    probe: Option<Arc<conn::ConnProbe>>,
) -> HttpResponse {
    let completion = Arc::new(Mutex::new(0usize));
    let cached = Arc::new(Mutex::new(vec![0usize; items.len()]));
    let streams = items.into_iter().enumerate().map(|(k, (t, acc))| {
        let (meta, codec, completion, cached) = (meta.clone(), codec.clone(), completion.clone(), cached.clone());
        let reason = meta.reasoning.map(reasoning::Stream::new);
        let tools = meta.tools.clone().map(ToolCallParser::new);
        let st = ChoiceState { index: k, started: false, pending_lp: vec![], completion: 0, prompt: acc.prompt_tokens, reason, tools, calls_sent: 0 };
        exec::outputs(t)
            .scan(st, move |st, o| {
                *completion.lock().unwrap() += o.ids.len();
                cached.lock().unwrap()[k] = o.cached_tokens;
                let evs: Vec<_> = choice_events(&meta, st, &o, &*codec).iter().map(sse::event).collect();
                futures_util::future::ready(Some(stream::iter(evs)))
            })
            .flatten()
            .boxed_local()
    });
    let streams: Vec<_> = streams.collect();
    let tail_meta = meta.clone();
    let tail = stream::once(async move {
        let mut out = Vec::new();
        if tail_meta.include_usage {
            let c = *completion.lock().unwrap();
            let cached_sum = tail_meta.cache_report.then(|| cached.lock().unwrap().iter().sum());
            let mut u = usage(tail_meta.prompt_tokens, c, cached_sum);
            u.as_object_mut().unwrap().retain(|_, v| !v.is_null());
            out.extend_from_slice(&sse::event(&chunk(&tail_meta, vec![], u)));
        }
        out.extend_from_slice(&sse::done());
        web::Bytes::from(out)
    });
    sse::response(exec::until_closed(stream::select_all(streams).chain(tail), probe))
}
