//! Request parsing and validation: body size and JSON syntax, typed field access with
//! messages that name the field, the value and the limit, and the sampling parameters
//! shared by `/generate` (native names) and the OpenAI routes (OpenAI names).

use super::errors::{ApiError, ApiResult};
use crate::sampling::SamplingParams;
use actix_web::http::StatusCode;
use crate::scheduler::codec::{Bounded, Codec};
use crate::scheduler::StopConfig;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use serde_json::{Map, Value};

/// A JSON value shortened for an error message.
pub fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// Reads the body (at most `limit` bytes: 413 beyond) and parses it as a JSON object.
/// The read has a deadline (408: a stalled client cannot hold a handler) and ends at
/// once with 503 when the server starts shutting down.
pub async fn read_json(req: &HttpRequest, payload: web::Payload, limit: usize) -> ApiResult<Map<String, Value>> {
    let too_big = |n: String| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is {n} bytes, over the limit of {limit} bytes"))
            .param("body")
    };
    let declared = req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared {
        if len > limit {
            return Err(too_big(len.to_string()));
        }
    }
    let state = req.app_data::<super::State>();
    let deadline = state.map_or(super::ServerConfig::default().body_read_timeout, |s| s.cfg.body_read_timeout);
    let mut shutdown = state.map(|s| s.shutdown_signal());
    let stopping = async {
        match shutdown.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|stop| *stop).await;
            }
            None => std::future::pending().await,
        }
    };
    let mut buf = web::BytesMut::new();
    let read = read_body(payload, &mut buf, limit, &too_big);
    let outcome = tokio::select! {
        // A body already here is read even during shutdown (e.g. /abort_request).
        biased;
        r = tokio::time::timeout(deadline, read) => r,
        _ = stopping => return Err(ApiError::unavailable("the server is shutting down").param("body")),
    };
    match outcome {
        Ok(r) => r?,
        Err(_) => {
            let of = declared.map_or(String::new(), |n| format!(" of {n}"));
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("reading the request body took longer than the limit of {} (got {} bytes{of})", show_duration(deadline), buf.len()),
            )
            .param("body"));
        }
    }
    if buf.is_empty() {
        return Err(ApiError::bad("body", "the request body is empty; expected a JSON object"));
    }
    let big = buf.len() > PARSE_INLINE_BYTES;
    let parse = move || serde_json::from_slice::<Value>(&buf);
    // Parsing megabytes takes a while: off the HTTP worker, like tokenizing.
    let parsed = match state {
        Some(s) if big => s.prompts.run(parse).await?,
        _ => parse(),
    };
    let v = parsed.map_err(|e| ApiError::bad("body", format!("the request body is not valid JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::bad("body", format!("the request body must be a JSON object, got {}", show(&other)))),
    }
}

/// Bodies up to this size are parsed on the HTTP worker (well under a millisecond).
const PARSE_INLINE_BYTES: usize = 64 << 10;

async fn read_body(mut payload: web::Payload, buf: &mut web::BytesMut, limit: usize, too_big: &dyn Fn(String) -> ApiError) -> ApiResult<()> {
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad("body", format!("could not read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_big(format!("more than {limit}")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(())
}

/// "1 s", "1.5 s", "250 ms".
fn show_duration(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else if d < std::time::Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

/// OpenAI routes require `Content-Type: application/json`.
pub fn require_json_content_type(req: &HttpRequest) -> ApiResult<()> {
    let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::bad(
            "Content-Type",
            format!("Unsupported Media Type: Only 'application/json' is allowed (got Content-Type {ct:?})"),
        ))
    }
}

fn type_err(path: &str, want: &str, v: &Value) -> ApiError {
    ApiError::bad(path, format!("`{path}` must be {want}, got {}", show(v)))
}

/// Non-null field of an object.
pub fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

pub fn as_bool(path: &str, v: &Value) -> ApiResult<bool> {
    v.as_bool().ok_or_else(|| type_err(path, "a boolean", v))
}

pub fn as_f64(path: &str, v: &Value) -> ApiResult<f64> {
    // serde_json cannot hold NaN/inf; a JSON number is always finite.
    v.as_f64().ok_or_else(|| type_err(path, "a number", v))
}

/// An integer; a float with no fractional part (`4.0`) counts, as pydantic's lax mode
/// (and so SGLang) accepts it.
pub fn as_i64(path: &str, v: &Value) -> ApiResult<i64> {
    match v {
        Value::Number(n) if n.is_i64() => Ok(n.as_i64().unwrap()),
        Value::Number(n) if n.is_u64() => Err(ApiError::bad(path, format!("`{path}` = {n} is too large"))),
        Value::Number(n) => match integral(n) {
            Some(f) if (-TWO_63..TWO_63).contains(&f) => Ok(f as i64),
            Some(_) => Err(ApiError::bad(path, format!("`{path}` = {n} is too large"))),
            None => Err(type_err(path, "an integer", v)),
        },
        _ => Err(type_err(path, "an integer", v)),
    }
}

const TWO_63: f64 = 9_223_372_036_854_775_808.0;
const TWO_64: f64 = 18_446_744_073_709_551_616.0;

/// The value of a JSON float that is a whole number.
fn integral(n: &serde_json::Number) -> Option<f64> {
    n.as_f64().filter(|f| f.fract() == 0.0)
}

/// A random seed: any integer in [-2^63, 2^64), as torch's `manual_seed` takes (negative
/// seeds wrap, as there).
pub fn as_seed(path: &str, v: &Value) -> ApiResult<u64> {
    let out_of_range = |n: &dyn std::fmt::Display| ApiError::bad(path, format!("`{path}` = {n} is out of range: must be an integer in [-2^63, 2^64)"));
    match v {
        Value::Number(n) if n.is_u64() => Ok(n.as_u64().unwrap()),
        Value::Number(n) if n.is_i64() => Ok(n.as_i64().unwrap() as u64),
        Value::Number(n) => match integral(n) {
            Some(f) if (0.0..TWO_64).contains(&f) => Ok(f as u64),
            Some(f) if (-TWO_63..0.0).contains(&f) => Ok(f as i64 as u64),
            Some(_) => Err(out_of_range(n)),
            None => Err(type_err(path, "an integer", v)),
        },
        _ => Err(type_err(path, "an integer", v)),
    }
}

pub fn as_str<'a>(path: &str, v: &'a Value) -> ApiResult<&'a str> {
    v.as_str().ok_or_else(|| type_err(path, "a string", v))
}

/// A string or a list of strings.
pub fn as_str_list(path: &str, v: &Value) -> ApiResult<Vec<String>> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| as_str(&format!("{path}[{i}]"), x).map(str::to_string))
            .collect(),
        _ => Err(type_err(path, "a string or a list of strings", v)),
    }
}

/// A list of token ids, each in `0..vocab`.
pub fn as_token_ids(path: &str, v: &Value, vocab: usize) -> ApiResult<Vec<u32>> {
    let a = v.as_array().ok_or_else(|| type_err(path, "a list of token ids", v))?;
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            let p = format!("{path}[{i}]");
            let id = as_i64(&p, x)?;
            if id < 0 || id as u64 >= vocab as u64 {
                return Err(ApiError::bad(
                    path,
                    format!("`{p}` = {id} is outside the vocabulary: token ids must be in [0, {vocab})"),
                ));
            }
            Ok(id as u32)
        })
        .collect()
}

/// Checks `lo <op> v <op> hi` and names the field and range on failure.
pub fn check_range(path: &str, v: f64, lo: f64, lo_incl: bool, hi: f64, hi_incl: bool) -> ApiResult<()> {
    range_check(path, v, v, lo, lo_incl, hi, hi_incl)
}

/// Converts to the f32 the sampler uses, then checks the range on the converted value
/// (1e39 overflows to inf, 1e-50 underflows to 0); errors show the value as sent.
pub fn check_range_f32(path: &str, v: f64, lo: f64, lo_incl: bool, hi: f64, hi_incl: bool) -> ApiResult<f32> {
    let x = v as f32;
    if v.is_finite() && !x.is_finite() {
        return Err(ApiError::bad(path, format!("`{path}` = {v:e} is out of range: must be at most {:e} (the largest f32)", f32::MAX)));
    }
    range_check(path, x as f64, v, lo, lo_incl, hi, hi_incl)?;
    Ok(x)
}

/// Checks `x` against the range; messages show `shown` (the value as sent).
fn range_check(path: &str, x: f64, shown: f64, lo: f64, lo_incl: bool, hi: f64, hi_incl: bool) -> ApiResult<()> {
    let v = shown;
    let ok_lo = if lo_incl { x >= lo } else { x > lo };
    let ok_hi = if hi_incl { x <= hi } else { x < hi };
    if x.is_finite() && ok_lo && ok_hi {
        return Ok(());
    }
    let l = if lo_incl { "[" } else { "(" };
    let r = if hi_incl { "]" } else { ")" };
    let hi_s = if hi.is_infinite() { "inf".to_string() } else { hi.to_string() };
    Err(ApiError::bad(path, format!("`{path}` = {v} is out of range: must be in {l}{lo}, {hi_s}{r}")))
}

/// How many tokens to generate, before the context check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MaxNew {
    /// The route's default (clamped to the context silently).
    Default(usize),
    /// Given by the client (over the context is an error).
    Explicit(usize),
    /// Up to the context limit.
    Unlimited,
}

/// Where sampling fields live and what they are called.
pub struct Names {
    /// Prefix for messages (`sampling_params.` or ``).
    pub prefix: &'static str,
    /// (canonical name, name in this API) pairs that differ.
    pub rename: &'static [(&'static str, &'static str)],
    /// Reject keys not in the known list (native `sampling_params`).
    pub strict: bool,
}

pub const NATIVE: Names = Names { prefix: "sampling_params.", rename: &[], strict: true };
pub const OPENAI: Names = Names {
    prefix: "",
    rename: &[("max_new_tokens", "max_tokens"), ("min_new_tokens", "min_tokens"), ("sampling_seed", "seed")],
    strict: false,
};

const NATIVE_KEYS: &[&str] = &[
    "max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "min_p", "frequency_penalty",
    "presence_penalty", "repetition_penalty", "stop", "stop_token_ids", "stop_regex", "ignore_eos",
    "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim", "n", "json_schema", "regex",
    "ebnf", "structural_tag", "logit_bias", "sampling_seed", "stream_interval", "custom_params",
];

/// Chat-route defaults from the model's generation_config.json.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

/// Sampling and stop settings of one request, validated.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub sampling: SamplingParams,
    pub stop: StopConfig,
    pub max_new: MaxNew,
    pub n: usize,
}

pub struct Ctx<'a> {
    pub vocab: usize,
    pub defaults: &'a SamplingDefaults,
}

/// Parses sampling fields from `obj` under the naming of `names`.
pub fn parse_sampling(obj: &Map<String, Value>, names: &Names, ctx: &Ctx<'_>, default_max: MaxNew) -> ApiResult<Parsed> {
    let key_of = |canon: &'static str| -> &'static str {
        names.rename.iter().find(|(c, _)| *c == canon).map_or(canon, |(_, k)| *k)
    };
    let path = |canon: &'static str| format!("{}{}", names.prefix, key_of(canon));
    let get = |canon: &'static str| field(obj, key_of(canon)).map(|v| (v, path(canon)));
    if names.strict {
        for k in obj.keys() {
            if !NATIVE_KEYS.contains(&k.as_str()) {
                return Err(ApiError::bad(
                    format!("{}{k}", names.prefix),
                    format!("unknown field `{}{k}`; known fields: {}", names.prefix, NATIVE_KEYS.join(", ")),
                ));
            }
        }
    }
    let num = |canon: &'static str| -> ApiResult<Option<(f64, String)>> {
        get(canon).map(|(v, p)| as_f64(&p, v).map(|x| (x, p))).transpose()
    };
    let mut sp = SamplingParams::default();
    let d = ctx.defaults;
    sp.temperature = d.temperature.unwrap_or(1.0);
    sp.top_p = d.top_p.unwrap_or(1.0);
    sp.top_k = d.top_k.unwrap_or(-1);
    sp.min_p = d.min_p.unwrap_or(0.0);
    sp.repetition_penalty = d.repetition_penalty.unwrap_or(1.0);
    if let Some((t, p)) = num("temperature")? {
        sp.temperature = check_range_f32(&p, t, 0.0, true, f64::INFINITY, false)?;
    }
    if let Some((t, p)) = num("top_p")? {
        sp.top_p = check_range_f32(&p, t, 0.0, false, 1.0, true)?;
    }
    if let Some((v, p)) = get("top_k") {
        let k = as_i64(&p, v)?;
        if k < 1 && k != -1 {
            return Err(ApiError::bad(&p, format!("`{p}` = {k} is out of range: must be -1 (whole vocabulary) or >= 1")));
        }
        sp.top_k = k;
    }
    if let Some((t, p)) = num("min_p")? {
        sp.min_p = check_range_f32(&p, t, 0.0, true, 1.0, true)?;
    }
    if let Some((t, p)) = num("frequency_penalty")? {
        sp.frequency_penalty = check_range_f32(&p, t, -2.0, true, 2.0, true)?;
    }
    if let Some((t, p)) = num("presence_penalty")? {
        sp.presence_penalty = check_range_f32(&p, t, -2.0, true, 2.0, true)?;
    }
    if let Some((t, p)) = num("repetition_penalty")? {
        sp.repetition_penalty = check_range_f32(&p, t, 0.0, false, 2.0, true)?;
    }
    if let Some((v, p)) = get("sampling_seed") {
        sp.seed = Some(as_seed(&p, v)?);
    }
    if let Some((v, p)) = get("logit_bias") {
        let m = v.as_object().ok_or_else(|| type_err(&p, "an object of token id -> bias", v))?;
        for (k, b) in m {
            let id: u64 = k.parse().map_err(|_| ApiError::bad(&p, format!("`{p}` key {k:?} is not a token id")))?;
            if id >= ctx.vocab as u64 {
                return Err(ApiError::bad(&p, format!("`{p}` key {id} is outside the vocabulary: token ids must be in [0, {})", ctx.vocab)));
            }
            let bp = format!("{p}.{k}");
            let b = check_range_f32(&bp, as_f64(&bp, b)?, -100.0, true, 100.0, true)?;
            sp.logit_bias.push((id as u32, b));
        }
    }
    // json_schema / regex / ebnf are read by `constraint.rs`
    for canon in ["stop_regex", "structural_tag"] {
        if let Some((_, p)) = get(canon) {
            return Err(ApiError::bad(&p, format!("`{p}` is not supported by this server")));
        }
    }

    let mut stop = StopConfig::default();
    let max_new = match obj.get(key_of("max_new_tokens")) {
        None => default_max,
        Some(Value::Null) => MaxNew::Unlimited,
        Some(v) => {
            let p = path("max_new_tokens");
            let m = as_i64(&p, v)?;
            if m < 0 {
                return Err(ApiError::bad(&p, format!("`{p}` = {m} is out of range: must be >= 0")));
            }
            MaxNew::Explicit(m as usize)
        }
    };
    if let Some((v, p)) = get("min_new_tokens") {
        let m = as_i64(&p, v)?;
        if m < 0 {
            return Err(ApiError::bad(&p, format!("`{p}` = {m} is out of range: must be >= 0")));
        }
        if let MaxNew::Explicit(mx) = max_new {
            if m as usize > mx {
                return Err(ApiError::bad(&p, format!("`{p}` = {m} is larger than max_new_tokens ({mx})")));
            }
        }
        stop.min_new_tokens = m as usize;
    }
    if let Some((v, p)) = get("stop") {
        stop.stop = as_str_list(&p, v)?;
        if stop.stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::bad(&p, format!("`{p}` contains an empty string")));
        }
        check_stop_limits(&p, &stop.stop)?;
    }
    if let Some((v, p)) = get("stop_token_ids") {
        if let Some(n) = v.as_array().map(Vec::len).filter(|&n| n > MAX_STOP_TOKEN_IDS) {
            return Err(ApiError::bad(&p, format!("`{p}` has {n} token ids; at most {MAX_STOP_TOKEN_IDS} are allowed")));
        }
        stop.stop_token_ids = as_token_ids(&p, v, ctx.vocab)?;
    }
    if let Some((v, p)) = get("ignore_eos") {
        stop.ignore_eos = as_bool(&p, v)?;
    }
    if let Some((v, p)) = get("no_stop_trim") {
        stop.no_stop_trim = as_bool(&p, v)?;
    }
    if let Some((v, p)) = get("skip_special_tokens") {
        stop.skip_special_tokens = as_bool(&p, v)?;
    }
    if let Some((v, p)) = get("spaces_between_special_tokens") {
        as_bool(&p, v)?;
    }
    if let Some((v, p)) = get("stream_interval") {
        as_i64(&p, v)?;
    }
    let mut n = 1;
    if let Some((v, p)) = get("n") {
        let x = as_i64(&p, v)?;
        if !(1..=128).contains(&x) {
            return Err(ApiError::bad(&p, format!("`{p}` = {x} is out of range: must be in [1, 128]")));
        }
        n = x as usize;
    }
    Ok(Parsed { sampling: sp, stop, max_new, n })
}

/// Most stop strings per request. OpenAI allows 4 and SGLang sets no limit; prompts with
/// a few dozen stop words exist, hundreds do not. The scheduler's per-token cost grows
/// with the number of stop strings (not their length).
pub const MAX_STOP_STRINGS: usize = 64;
/// Most bytes of stop strings per request (their matcher's memory lives as long as the
/// request): 512 bytes for each of 64, far beyond any real stop sequence.
pub const MAX_STOP_BYTES: usize = 32 << 10;
/// Most `stop_token_ids` (checked on every generated token).
pub const MAX_STOP_TOKEN_IDS: usize = 1024;

fn check_stop_limits(p: &str, stops: &[String]) -> ApiResult<()> {
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::bad(p, format!("`{p}` has {} stop strings; at most {MAX_STOP_STRINGS} are allowed", stops.len())));
    }
    let total: usize = stops.iter().map(String::len).sum();
    if total > MAX_STOP_BYTES {
        return Err(ApiError::bad(
            p,
            format!("`{p}` totals {total} bytes of stop strings; at most {MAX_STOP_BYTES} bytes are allowed"),
        ));
    }
    Ok(())
}

/// Tokenizes an untrusted prompt for a context of `context` tokens: a text that cannot
/// fit is refused without tokenizing all of it (`param` names the field in errors).
pub fn encode_prompt(codec: &dyn Codec, text: &str, add_special_tokens: bool, context: usize, param: &str) -> ApiResult<Vec<u32>> {
    match codec.encode_within(text, add_special_tokens, context.saturating_sub(1)) {
        Ok(Bounded::Ids(ids)) => Ok(ids),
        Ok(Bounded::TooLong { tokens, exact }) => {
            let n = if exact { format!("{tokens} tokens") } else { format!("at least {tokens} tokens") };
            Err(ApiError::bad(param, format!("The input ({n}) is longer than the model's context length ({context} tokens).")))
        }
        Ok(Bounded::Uncuttable { bytes }) => Err(uncuttable(param, bytes)),
        Err(e) => Err(ApiError::bad(param, format!("could not tokenize `{param}`: {e}"))),
    }
}

pub fn uncuttable(param: &str, bytes: usize) -> ApiError {
    ApiError::bad(
        param,
        format!(
            "`{param}` has a run of {bytes} bytes with no space, line break or punctuation to split it at; \
             at most {} bytes can be tokenized in one piece",
            crate::tokenizer::MAX_UNCUT_BYTES
        ),
    )
}

/// Applies the context limit to a prompt of `prompt_len` tokens (SGLang's checks and
/// messages). `prompt_param` / `max_param` name the fields in errors.
pub fn resolve_max_new(prompt_len: usize, context: usize, max_new: MaxNew, prompt_param: &str, max_param: &str) -> ApiResult<usize> {
    if prompt_len == 0 {
        return Err(ApiError::bad(prompt_param, format!("`{prompt_param}` is empty: the prompt must have at least one token")));
    }
    if prompt_len >= context {
        return Err(ApiError::bad(
            prompt_param,
            format!("The input ({prompt_len} tokens) is longer than the model's context length ({context} tokens)."),
        ));
    }
    let room = context - 1 - prompt_len;
    Ok(match max_new {
        MaxNew::Default(d) => d.min(room),
        MaxNew::Unlimited => room,
        MaxNew::Explicit(m) => {
            if prompt_len + m >= context {
                return Err(ApiError::bad(
                    max_param,
                    format!(
                        "Requested token count exceeds the model's maximum context length of {context} tokens. \
                         You requested a total of {} tokens: {prompt_len} tokens from the input messages and {m} \
                         tokens for the completion (`{max_param}`). Please reduce the number of tokens in the input \
                         messages or the completion to fit within the limit.",
                        prompt_len + m
                    ),
                ));
            }
            m
        }
    })
}
