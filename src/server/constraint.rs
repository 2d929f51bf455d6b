//! Structured-output fields of a request -> a compiled grammar in its sampling params.
//!
//! OpenAI routes: `response_format` (`text`, `json_object`, `json_schema` with
//! `json_schema.schema`), and SGLang's extra top-level `json_schema` / `regex` / `ebnf`.
//! `/generate`: `sampling_params.json_schema` (a JSON string, or an object), `regex`,
//! `ebnf`. At most one per request. The grammar engine (`sampling/grammar.rs`) is built
//! for the server's tokenizer on the first constrained request (about a second for a
//! 248k vocabulary) and kept in `AppState`.

use super::errors::{ApiError, ApiResult};
use super::validate::{self as v};
use super::AppState;
use crate::sampling::grammar::{ebnf_to_lark, Grammar, GrammarEngine, GrammarSpec};
use crate::sampling::SamplingParams;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The constraint `obj` asks for: (the field that asked, the grammar).
fn read_spec(obj: &Map<String, Value>, prefix: &str, openai: bool) -> ApiResult<Option<(String, GrammarSpec)>> {
    let mut found: Vec<(String, GrammarSpec)> = vec![];
    if openai {
        if let Some(rf) = v::field(obj, "response_format") {
            let ty = rf.get("type").and_then(Value::as_str).unwrap_or("");
            match ty {
                "text" => {}
                "json_object" => found.push(("response_format".into(), GrammarSpec::JsonObject)),
                "json_schema" => {
                    let schema = rf.pointer("/json_schema/schema").filter(|s| s.is_object() || s.is_boolean()).ok_or_else(|| {
                        ApiError::bad("response_format", "`response_format.json_schema.schema` is required for type \"json_schema\" (a JSON schema object)")
                    })?;
                    found.push(("response_format".into(), GrammarSpec::JsonSchema(schema.clone())));
                }
                _ => {
                    return Err(ApiError::bad(
                        "response_format",
                        format!("`response_format.type` = {ty:?} is not supported (one of \"text\", \"json_object\", \"json_schema\")"),
                    ))
                }
            }
        }
    }
    let path = |k: &str| format!("{prefix}{k}");
    if let Some(x) = v::field(obj, "json_schema") {
        let p = path("json_schema");
        let schema = match x {
            Value::String(s) => serde_json::from_str::<Value>(s).map_err(|e| ApiError::bad(&p, format!("`{p}` is not valid JSON: {e}")))?,
            Value::Object(_) => x.clone(),
            other => return Err(ApiError::bad(&p, format!("`{p}` must be a JSON schema (a string or an object), got {}", v::show(other)))),
        };
        found.push((p, GrammarSpec::JsonSchema(schema)));
    }
    if let Some(x) = v::field(obj, "regex") {
        let p = path("regex");
        found.push((p.clone(), GrammarSpec::Regex(v::as_str(&p, x)?.to_string())));
    }
    if let Some(x) = v::field(obj, "ebnf") {
        let p = path("ebnf");
        found.push((p.clone(), GrammarSpec::Lark(ebnf_to_lark(v::as_str(&p, x)?))));
    }
    if found.len() > 1 {
        let names: Vec<String> = found.iter().map(|(p, _)| format!("`{p}`")).collect();
        return Err(ApiError::bad(&found[1].0, format!("only one constraint per request, got {}", names.join(" and "))));
    }
    Ok(found.pop())
}

/// The grammar engine for the server's tokenizer, built on first use.
fn engine(state: &AppState) -> ApiResult<Arc<GrammarEngine>> {
    let built = state.grammar.get_or_init(|| {
        let codec = state.codec.clone();
        let bytes = codec.token_bytes().ok_or_else(|| "this tokenizer cannot list its token bytes".to_string())?;
        let eos = *codec.eos_token_ids().first().ok_or_else(|| "the tokenizer has no EOS token".to_string())?;
        let tokenize = Box::new(move |s: &str| codec.encode(s, false).unwrap_or_default());
        GrammarEngine::new(bytes, eos, tokenize).map(Arc::new).map_err(|e| format!("{e:#}"))
    });
    built.clone().map_err(|e| ApiError::bad_request(format!("constrained decoding is unavailable: {e}")))
}

/// Compiles `spec`, asked for by `field` (named in the 400 if the grammar is bad).
pub fn compile(state: &AppState, field: &str, spec: &GrammarSpec) -> ApiResult<Grammar> {
    engine(state)?.compile(spec).map_err(|e| ApiError::bad(field, format!("`{field}` is not a valid grammar: {e}")))
}

/// Reads the request's constraint (if any), compiles it and puts it in `sampling`.
/// `prefix` names the fields in errors (`sampling_params.` on `/generate`).
pub fn apply(state: &AppState, obj: &Map<String, Value>, prefix: &str, openai: bool, sampling: &mut SamplingParams) -> ApiResult<()> {
    let Some((field, spec)) = read_spec(obj, prefix, openai)? else { return Ok(()) };
    if sampling.grammar.is_some() {
        return Err(ApiError::bad(&field, format!("`{field}` cannot be combined with `tool_choice` \"required\" or a named function (both constrain the output)")));
    }
    sampling.grammar = Some(compile(state, &field, &spec)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(body: Value, prefix: &str, openai: bool) -> ApiResult<Option<(String, GrammarSpec)>> {
        read_spec(body.as_object().unwrap(), prefix, openai)
    }

    #[test]
    fn fields_map_to_grammars() {
        assert_eq!(spec(json!({"response_format": {"type": "text"}}), "", true).unwrap(), None);
        assert_eq!(spec(json!({"response_format": {"type": "json_object"}}), "", true).unwrap().unwrap().1, GrammarSpec::JsonObject);
        let s = json!({"type": "object"});
        let rf = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}});
        assert_eq!(spec(rf, "", true).unwrap().unwrap().1, GrammarSpec::JsonSchema(s.clone()));
        let (field, g) = spec(json!({"json_schema": s.to_string()}), "sampling_params.", false).unwrap().unwrap();
        assert_eq!((field.as_str(), g), ("sampling_params.json_schema", GrammarSpec::JsonSchema(s)));
        assert_eq!(spec(json!({"regex": "a+"}), "", true).unwrap().unwrap().1, GrammarSpec::Regex("a+".into()));
        assert!(matches!(spec(json!({"ebnf": "root ::= \"a\""}), "", false).unwrap().unwrap().1, GrammarSpec::Lark(_)));
    }

    #[test]
    fn bad_fields_are_400_naming_the_field() {
        for (body, openai, field) in [
            (json!({"response_format": {"type": "json_schema"}}), true, "response_format"),
            (json!({"response_format": {"type": "yaml"}}), true, "response_format"),
            (json!({"json_schema": "{not json"}), false, "sampling_params.json_schema"),
            (json!({"json_schema": 3}), false, "sampling_params.json_schema"),
            (json!({"regex": 3}), false, "sampling_params.regex"),
            (json!({"regex": "a", "ebnf": "root ::= \"a\""}), false, "sampling_params.ebnf"),
        ] {
            let e = spec(body.clone(), if openai { "" } else { "sampling_params." }, openai).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert!(e.message.contains(&format!("`{field}")), "{body}: {}", e.message);
        }
    }
}
