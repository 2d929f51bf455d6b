//! Health, model/server info, cache flush, abort, tokenize/detokenize routes.

use super::errors::{ApiError, Shape};
use super::validate as v;
use super::{AppState, State};
use crate::sampling::SamplingParams;
use crate::scheduler::codec::Bounded;
use crate::scheduler::{FinishReason, GenRequest, StopConfig};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use std::time::Duration;

pub async fn health(state: State) -> HttpResponse {
    if state.is_ready() { HttpResponse::Ok().finish() } else { HttpResponse::ServiceUnavailable().finish() }
}

/// 200 once one token has been generated end to end (or the server is busy generating).
pub async fn health_generate(state: State) -> HttpResponse {
    if !state.is_ready() {
        return HttpResponse::ServiceUnavailable().finish();
    }
    let st = state.sched.stats();
    let busy = st.running.load(std::sync::atomic::Ordering::Relaxed) > 0;
    let rid = format!("HEALTH_CHECK_{}", uuid::Uuid::new_v4().simple());
    let req = GenRequest::new(rid, vec![0], SamplingParams::greedy(), StopConfig { max_new_tokens: 1, ..Default::default() });
    let mut t = match state.sched.submit(req) {
        Ok(t) => t,
        Err(_) if busy => return HttpResponse::Ok().finish(),
        Err(_) => return HttpResponse::ServiceUnavailable().finish(),
    };
    let wait = async {
        loop {
            match t.recv().await {
                Some(o) if o.finish.is_some() => return !matches!(o.finish, Some(FinishReason::Abort { .. })),
                Some(_) => {}
                None => return false,
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), wait).await {
        Ok(true) => HttpResponse::Ok().finish(),
        _ => HttpResponse::ServiceUnavailable().finish(),
    }
}

pub async fn ping() -> HttpResponse {
    HttpResponse::Ok().finish()
}

fn card(state: &State) -> Value {
    let name = &state.cfg.served_model_name;
    json!({"id": name, "object": "model", "created": state.created, "owned_by": "sglang", "root": name,
           "parent": Value::Null, "max_model_len": state.context_len()})
}

pub async fn models(state: State) -> HttpResponse {
    HttpResponse::Ok().json(json!({"object": "list", "data": [card(&state)]}))
}

pub async fn model_card(state: State, path: web::Path<String>) -> HttpResponse {
    let m = path.into_inner();
    if m == state.cfg.served_model_name {
        return HttpResponse::Ok().json(card(&state));
    }
    HttpResponse::NotFound().json(json!({"error": {"message": format!("The model '{m}' does not exist"),
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}))
}

pub async fn model_info(state: State) -> HttpResponse {
    let mc = &state.sched.info().model;
    let arch = if mc.model_type == "qwen3_5" { "Qwen3_5ForConditionalGeneration" } else { "Qwen3_5ForCausalLM" };
    HttpResponse::Ok().json(json!({
        "model_path": state.cfg.model_path,
        "tokenizer_path": state.cfg.tokenizer_path,
        "is_generation": true,
        "preferred_sampling_params": Value::Null,
        "weight_version": "default",
        "has_image_understanding": false,
        "has_audio_understanding": false,
        "model_type": mc.model_type,
        "architectures": [arch],
        "served_model_name": state.cfg.served_model_name,
    }))
}

pub async fn server_info(state: State) -> HttpResponse {
    let info = state.sched.info();
    let st = state.sched.stats();
    let cap = info.capacity;
    let mut args = state.cfg.server_args.clone();
    args.insert("backend".into(), json!(info.backend));
    args.insert("context_length".into(), json!(info.config.context_len));
    args.insert("max_running_requests".into(), json!(info.config.max_running));
    args.insert("chunked_prefill_size".into(), json!(info.config.chunked_prefill_size));
    args.insert("max_queued_requests".into(), json!(info.config.max_queued));
    // Effective: a backend without state snapshots has no prefix cache whatever the flag.
    args.insert("disable_radix_cache".into(), json!(!info.config.prefix_cache));
    args.insert("served_model_name".into(), json!(state.cfg.served_model_name));
    let mut internal = args.clone();
    internal.insert("last_gen_throughput".into(), json!(st.gen_throughput()));
    internal.insert(
        "memory_usage".into(),
        json!({"weight": 0, "kvcache": 0, "token_capacity": cap.kv_blocks * cap.block_size, "graph": 0}),
    );
    internal.insert("effective_max_running_requests_per_dp".into(), json!(info.config.max_running));
    internal.insert("avg_spec_accept_length".into(), json!(st.avg_spec_accept_length()));
    let mut out = args;
    out.insert("status".into(), json!(if state.is_ready() { "ready" } else { "not ready" }));
    out.insert("max_total_num_tokens".into(), json!(cap.kv_blocks * cap.block_size));
    out.insert("max_req_input_len".into(), json!(info.config.context_len.saturating_sub(2)));
    out.insert("internal_states".into(), json!([internal]));
    out.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    HttpResponse::Ok().json(Value::Object(out))
}

/// SGLang 0.5.9's `/get_load`: one entry per data-parallel rank (kiln has one) with
/// `num_reqs` (running + waiting), `num_waiting_reqs` and `num_tokens` (KV tokens held by
/// requests, not by the evictable prefix cache, plus the prompts still waiting). The
/// sglang-router sums `num_tokens` over ranks as a worker's load. kiln's own counters
/// follow in the same entry.
pub async fn load(state: State) -> HttpResponse {
    let st = state.sched.stats();
    let r = std::sync::atomic::Ordering::Relaxed;
    let block_size = state.sched.info().capacity.block_size;
    let (running, waiting) = (st.running.load(r), st.queued.load(r));
    HttpResponse::Ok().json(json!([{
        "dp_rank": 0,
        "num_reqs": running + waiting,
        "num_waiting_reqs": waiting,
        "num_tokens": st.blocks_used.load(r) * block_size + st.waiting_tokens.load(r),
        "num_running_reqs": running,
        "num_used_kv_blocks": st.blocks_used.load(r),
        "num_cached_kv_blocks": st.blocks_cached.load(r),
        "num_total_kv_blocks": st.blocks_total.load(r),
    }]))
}

const FLUSH_TEXT: &str = "Cache flushed.\nPlease check backend logs for more details. (When there are running or waiting requests, the operation will not be performed.)\n";

/// Empties the prefix cache; like SGLang, refused (400, same text) while requests are
/// running or waiting, with the reason in the log.
pub async fn flush_cache(state: State) -> HttpResponse {
    let mut b = match state.sched.flush_cache().await {
        Ok(()) => {
            tracing::info!("Cache flushed successfully!");
            HttpResponse::Ok()
        }
        Err(why) => {
            tracing::warn!("Cache not flushed because there are pending requests: {why}");
            HttpResponse::BadRequest()
        }
    };
    b.content_type("text/plain; charset=utf-8").body(FLUSH_TEXT)
}

pub async fn abort_request(state: State, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    let native = |e: ApiError| e.shape(Shape::Native);
    let obj = v::read_json(&req, body, state.cfg.max_body_bytes).await.map_err(native)?;
    let all = v::field(&obj, "abort_all").map(|x| v::as_bool("abort_all", x)).transpose().map_err(native)?.unwrap_or(false);
    if all {
        state.sched.abort_all();
    } else {
        match v::field(&obj, "rid") {
            Some(r) => state.sched.abort_rid(v::as_str("rid", r).map_err(native)?),
            None => return Err(native(ApiError::bad("rid", "`rid` is required unless `abort_all` is true"))),
        }
    }
    Ok(HttpResponse::Ok().finish())
}

pub async fn tokenize(state: State, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    tokenize_inner(state, req, body).await.map_err(|e| e.shape(Shape::Native))
}

async fn tokenize_inner(state: State, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    let obj = v::read_json(&req, body, state.cfg.max_body_bytes).await?;
    // Tokenizing may be long: off the HTTP worker.
    let st = state.clone();
    let out = state.prompts.run(move || tokenize_json(&st, &obj)).await??;
    Ok(HttpResponse::Ok().json(out))
}

fn tokenize_json(state: &AppState, obj: &serde_json::Map<String, Value>) -> Result<Value, ApiError> {
    let add = v::field(obj, "add_special_tokens").map(|x| v::as_bool("add_special_tokens", x)).transpose()?.unwrap_or(true);
    // No token limit here, but encoding in pieces keeps the tokenizer's memory bounded.
    let enc = |s: &str| match state.codec.encode_within(s, add, usize::MAX) {
        Ok(Bounded::Ids(ids)) => Ok(ids),
        Ok(Bounded::TooLong { .. }) => unreachable!("no limit"),
        Ok(Bounded::Uncuttable { bytes }) => Err(v::uncuttable("prompt", bytes)),
        Err(e) => Err(ApiError::bad("prompt", format!("could not tokenize `prompt`: {e}"))),
    };
    let max = state.context_len();
    match v::field(obj, "prompt") {
        Some(Value::String(s)) => {
            let t = enc(s)?;
            Ok(json!({"tokens": t, "count": t.len(), "max_model_len": max}))
        }
        Some(Value::Array(a)) => {
            let ts = a.iter().enumerate().map(|(i, x)| enc(v::as_str(&format!("prompt[{i}]"), x)?)).collect::<Result<Vec<_>, _>>()?;
            let counts: Vec<usize> = ts.iter().map(Vec::len).collect();
            Ok(json!({"tokens": ts, "count": counts, "max_model_len": max}))
        }
        Some(x) => Err(ApiError::bad("prompt", format!("`prompt` must be a string or a list of strings, got {}", v::show(x)))),
        None => Err(ApiError::bad("prompt", "`prompt` is required")),
    }
}

pub async fn detokenize(state: State, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    detokenize_inner(state, req, body).await.map_err(|e| e.shape(Shape::Native))
}

async fn detokenize_inner(state: State, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    let obj = v::read_json(&req, body, state.cfg.max_body_bytes).await?;
    let skip = v::field(&obj, "skip_special_tokens").map(|x| v::as_bool("skip_special_tokens", x)).transpose()?.unwrap_or(true);
    let ids = v::as_token_ids("tokens", obj.get("tokens").unwrap_or(&Value::Null), state.vocab())?;
    let text = state.codec.decode(&ids, skip).map_err(|e| ApiError::internal(format!("decode failed: {e}")))?;
    Ok(HttpResponse::Ok().json(json!({"text": text})))
}
