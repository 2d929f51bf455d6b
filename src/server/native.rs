//! `POST /generate`: SGLang's native API (single or batched, text or ids, streaming).

use super::errors::{ApiError, ApiResult, Shape};
use super::exec::{self, Acc};
use super::validate::{self as v, MaxNew, NATIVE};
use super::{conn, sse, unix_now, AppState, State};
use crate::scheduler::{Codec, FinishReason, GenRequest, LogprobConfig, TokenLogprob};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Map, Value};
use std::time::Instant;

/// Logprob output options of one item.
#[derive(Clone, Debug, Default)]
struct LpOpts {
    enabled: bool,
    top_n: usize,
    with_ids: bool,
    text: bool,
}

struct Plan {
    reqs: Vec<GenRequest>,
    lps: Vec<LpOpts>,
    batch: bool,
    stream: bool,
}

pub async fn generate(state: State, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    let native = |e: ApiError| e.shape(Shape::Native);
    let obj = v::read_json(&req, body, state.cfg.max_body_bytes).await.map_err(native)?;
    // Tokenizing may be long: off the HTTP worker.
    let st = state.clone();
    let plan = state.prompts.run(move || parse(&st, &obj)).await.and_then(|p| p).map_err(native)?;
    let items = exec::submit_all(&state, plan.reqs).map_err(native)?;
    let codec = state.codec.clone();
    if !plan.stream {
        let accs = exec::run_all(items, conn::probe(&req)).await.map_err(native)?;
        let out: Vec<Value> = accs.iter().zip(&plan.lps).map(|(a, lp)| item_json(a, lp, &*codec, true, None)).collect();
        return Ok(HttpResponse::Ok().json(if plan.batch { Value::Array(out) } else { out.into_iter().next().unwrap() }));
    }
    let batch = plan.batch;
    let streams = items.into_iter().zip(plan.lps).enumerate().map(move |(i, ((t, acc), lp))| {
        let codec = codec.clone();
        exec::outputs(t)
            .scan(acc, move |acc, o| {
                acc.apply(&o);
                let ev = match acc.error() {
                    Some(e) => json!({"error": {"message": e.message, "code": e.status.as_u16()}}),
                    None => item_json(acc, &lp, &*codec, o.finish.is_some(), batch.then_some(i)),
                };
                futures_util::future::ready(Some(sse::event(&ev)))
            })
            .boxed_local()
    });
    let events = stream::select_all(streams).chain(stream::once(async { sse::done() }));
    Ok(sse::response(exec::until_closed(events, conn::probe(&req))))
}

fn parse(state: &AppState, obj: &Map<String, Value>) -> ApiResult<Plan> {
    let vocab = state.vocab();
    let ctx = v::Ctx { vocab, defaults: &Default::default() };
    for k in ["input_embeds", "image_data", "video_data", "audio_data"] {
        if v::field(obj, k).is_some() {
            return Err(ApiError::bad(k, format!("`{k}` is not supported by this server (text-only model)")));
        }
    }
    if let Some(x) = v::field(obj, "return_hidden_states") {
        if v::as_bool("return_hidden_states", x)? {
            return Err(ApiError::bad("return_hidden_states", "`return_hidden_states` is not supported by this server"));
        }
    }
    // Prompts.
    let (prompts, batch, prompt_param): (Vec<Vec<u32>>, bool, &str) = match (v::field(obj, "text"), v::field(obj, "input_ids")) {
        (Some(_), Some(_)) => return Err(ApiError::bad("text", "Either text or input_ids should be provided, not both.")),
        (None, None) => return Err(ApiError::bad("text", "Either text or input_ids should be provided.")),
        (Some(Value::String(s)), None) => (vec![encode(state, s, "text")?], false, "text"),
        (Some(Value::Array(a)), None) => {
            if a.is_empty() {
                return Err(ApiError::bad("text", "`text` is an empty list: give at least one prompt"));
            }
            let p = a
                .iter()
                .enumerate()
                .map(|(i, x)| encode(state, v::as_str(&format!("text[{i}]"), x)?, &format!("text[{i}]")))
                .collect::<ApiResult<Vec<_>>>()?;
            (p, true, "text")
        }
        (Some(x), None) => return Err(ApiError::bad("text", format!("`text` must be a string or a list of strings, got {}", v::show(x)))),
        (None, Some(Value::Array(a))) if a.first().is_some_and(Value::is_array) => {
            let p = a
                .iter()
                .enumerate()
                .map(|(i, x)| v::as_token_ids(&format!("input_ids[{i}]"), x, vocab))
                .collect::<ApiResult<Vec<_>>>()?;
            (p, true, "input_ids")
        }
        (None, Some(x)) => (vec![v::as_token_ids("input_ids", x, vocab)?], false, "input_ids"),
    };
    // Per-prompt settings: a single value, or (in a batch) a list with one per prompt.
    let per = |key: &str| -> ApiResult<Vec<Option<&Value>>> {
        match v::field(obj, key) {
            Some(Value::Array(a)) if batch => {
                if a.len() != prompts.len() {
                    return Err(ApiError::bad(key, format!("`{key}` has {} entries for {} prompts", a.len(), prompts.len())));
                }
                Ok(a.iter().map(Some).collect())
            }
            x => Ok(vec![x; prompts.len()]),
        }
    };
    let sp_list = batch && matches!(v::field(obj, "sampling_params"), Some(Value::Array(_)));
    let sps = per("sampling_params")?;
    let rids = per("rid")?;
    let ret_lp = per("return_logprob")?;
    let starts = per("logprob_start_len")?;
    let tops = per("top_logprobs_num")?;
    let stream = v::field(obj, "stream").map(|x| v::as_bool("stream", x)).transpose()?.unwrap_or(false);
    let text_in_lp = v::field(obj, "return_text_in_logprobs").map(|x| v::as_bool("return_text_in_logprobs", x)).transpose()?.unwrap_or(false);
    let token_ids_lp: Vec<u32> = match v::field(obj, "token_ids_logprob") {
        Some(Value::Array(a)) if a.first().is_some_and(Value::is_array) => v::as_token_ids("token_ids_logprob[0]", &a[0], vocab)?,
        Some(x) => v::as_token_ids("token_ids_logprob", x, vocab)?,
        None => vec![],
    };

    let context = state.context_len();
    let mut parsed_all = vec![];
    for (i, prompt) in prompts.into_iter().enumerate() {
        let sp_path = if sp_list { format!("sampling_params[{i}]") } else { "sampling_params".into() };
        let empty = Map::new();
        let sp_obj = match sps[i] {
            None => &empty,
            Some(Value::Object(m)) => m,
            Some(x) => return Err(ApiError::bad(&sp_path, format!("`{sp_path}` must be an object, got {}", v::show(x)))),
        };
        let mut parsed = v::parse_sampling(sp_obj, &NATIVE, &ctx, MaxNew::Default(128))?;
        super::constraint::apply(state, sp_obj, &format!("{sp_path}."), false, &mut parsed.sampling)?;
        let pp = if batch { format!("{prompt_param}[{i}]") } else { prompt_param.to_string() };
        let max_new = v::resolve_max_new(prompt.len(), context, parsed.max_new, &pp, "sampling_params.max_new_tokens")?;
        let enabled = ret_lp[i].map(|x| v::as_bool("return_logprob", x)).transpose()?.unwrap_or(false);
        let start_len = starts[i].map(|x| v::as_i64("logprob_start_len", x)).transpose()?.unwrap_or(-1);
        if start_len < -1 {
            return Err(ApiError::bad("logprob_start_len", format!("`logprob_start_len` = {start_len} is out of range: must be -1 or >= 0")));
        }
        let top_n = tops[i].map(|x| v::as_i64("top_logprobs_num", x)).transpose()?.unwrap_or(0);
        if !(0..=1000).contains(&top_n) {
            return Err(ApiError::bad("top_logprobs_num", format!("`top_logprobs_num` = {top_n} is out of range: must be in [0, 1000]")));
        }
        let rid = rids[i].map(|x| v::as_str("rid", x).map(str::to_string)).transpose()?;
        parsed_all.push((prompt, parsed, max_new, enabled, start_len, top_n as usize, rid));
    }
    let total: usize = parsed_all.iter().map(|p| p.1.n).sum();
    let rid_is_list = batch && matches!(v::field(obj, "rid"), Some(Value::Array(_)));
    let mut reqs = vec![];
    let mut lps = vec![];
    for (prompt, parsed, max_new, enabled, start_len, top_n, rid) in parsed_all {
        for j in 0..parsed.n {
            let rid = match &rid {
                Some(r) if parsed.n == 1 && (total == 1 || rid_is_list) => r.clone(),
                Some(r) if rid_is_list => format!("{r}_{j}"),
                Some(r) => format!("{r}_{}", reqs.len()),
                None => uuid::Uuid::new_v4().simple().to_string(),
            };
            let mut stop = parsed.stop.clone();
            stop.max_new_tokens = max_new;
            let mut r = GenRequest::new(rid, prompt.clone(), parsed.sampling.clone(), stop);
            r.arrival = Instant::now();
            r.logprobs = LogprobConfig { enabled, start_len, top_n, token_ids: token_ids_lp.clone() };
            reqs.push(r);
            lps.push(LpOpts { enabled, top_n, with_ids: !token_ids_lp.is_empty(), text: text_in_lp });
        }
    }
    let expanded = total > 1;
    Ok(Plan { reqs, lps, batch: batch || expanded, stream })
}

fn encode(state: &AppState, text: &str, param: &str) -> ApiResult<Vec<u32>> {
    if text.is_empty() {
        return Err(ApiError::bad(param, format!("`{param}` is empty: the prompt must have at least one token")));
    }
    v::encode_prompt(&*state.codec, text, true, state.context_len(), param)
}

pub fn finish_json(f: &Option<FinishReason>) -> Value {
    match f {
        None => Value::Null,
        Some(FinishReason::Length(n)) => json!({"type": "length", "length": n}),
        Some(FinishReason::StopToken(id)) => json!({"type": "stop", "matched": id}),
        Some(FinishReason::StopString(s)) => json!({"type": "stop", "matched": s}),
        Some(FinishReason::Abort { message, status }) => {
            json!({"type": "abort", "message": message, "status_code": status, "err_type": Value::Null})
        }
    }
}

fn lp_triple(lp: Option<f32>, id: u32, text: bool, codec: &dyn Codec) -> Value {
    let t = if text { Value::String(codec.decode(&[id], false).unwrap_or_default()) } else { Value::Null };
    json!([lp, id, t])
}

fn lp_lists(entries: &[TokenLogprob], lp: &LpOpts, codec: &dyn Codec) -> (Value, Value, Value) {
    let tokens = entries.iter().map(|e| lp_triple(e.logprob, e.id, lp.text, codec)).collect();
    let tops = entries
        .iter()
        .map(|e| {
            if e.logprob.is_none() {
                Value::Null
            } else {
                e.top.iter().map(|(id, l)| lp_triple(Some(*l), *id, lp.text, codec)).collect()
            }
        })
        .collect();
    let ids = entries
        .iter()
        .map(|e| {
            if e.logprob.is_none() {
                Value::Null
            } else {
                e.ids.iter().map(|(id, l)| lp_triple(Some(*l), *id, lp.text, codec)).collect()
            }
        })
        .collect();
    (Value::Array(tokens), Value::Array(tops), Value::Array(ids))
}

/// One response object (also one streaming chunk: cumulative text and ids).
fn item_json(acc: &Acc, lp: &LpOpts, codec: &dyn Codec, finished: bool, index: Option<usize>) -> Value {
    let mut meta = json!({
        "id": acc.rid,
        "finish_reason": finish_json(&acc.finish),
        "prompt_tokens": acc.prompt_tokens,
        "weight_version": "default",
        "total_retractions": 0,
        "completion_tokens": acc.ids.len(),
        "cached_tokens": acc.cached_tokens,
        "cached_tokens_details": Value::Null,
    });
    let m = meta.as_object_mut().unwrap();
    if lp.enabled {
        let (ti, tpi, idi) = lp_lists(&acc.input_logprobs, lp, codec);
        let (to, tpo, ido) = lp_lists(&acc.logprobs, lp, codec);
        m.insert("input_token_logprobs".into(), ti);
        m.insert("output_token_logprobs".into(), to);
        if lp.top_n > 0 {
            m.insert("input_top_logprobs".into(), tpi);
            m.insert("output_top_logprobs".into(), tpo);
        }
        if lp.with_ids {
            m.insert("input_token_ids_logprobs".into(), idi);
            m.insert("output_token_ids_logprobs".into(), ido);
        }
    }
    if let Some(sp) = &acc.spec {
        // SGLang's speculative fields (spec_accept_length: tokens per verify pass).
        m.insert("spec_verify_ct".into(), json!(sp.verify_ct));
        m.insert("spec_accept_length".into(), json!(sp.accept_length()));
        m.insert("spec_accept_rate".into(), json!(sp.accept_rate()));
        m.insert("spec_accept_token_num".into(), json!(sp.accepted_drafts));
        m.insert("spec_draft_token_num".into(), json!(sp.draft_tokens));
    }
    if finished {
        m.insert("e2e_latency".into(), json!(acc.e2e_latency()));
        m.insert("response_sent_to_client_ts".into(), json!(unix_now()));
    }
    let mut out = json!({"text": acc.text, "output_ids": acc.ids, "meta_info": meta});
    if let Some(i) = index {
        out.as_object_mut().unwrap().insert("index".into(), json!(i));
    }
    out
}
