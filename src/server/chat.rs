//! Chat request -> prompt: message checks, the model's chat template with
//! `add_generation_prompt`, `chat_template_kwargs` (e.g. `enable_thinking`) and tools
//! (as `tool_choice` asks: `tool_choice.rs`).

use super::errors::{ApiError, ApiResult};
use super::validate::{self as v};
use super::tool_choice::{self, ToolPlan};
use super::AppState;
use serde_json::{Map, Value};

const ROLES: &[&str] = &["system", "user", "assistant", "tool", "function", "developer"];

/// Normalises `messages` as SGLang does before templating: roles lower-cased, null keys
/// dropped, null content -> "", text parts kept, tool-call argument strings parsed.
fn normalise(messages: &Value) -> ApiResult<Value> {
    let list = messages
        .as_array()
        .ok_or_else(|| ApiError::bad("messages", format!("`messages` must be a list of message objects, got {}", v::show(messages))))?;
    if list.is_empty() {
        return Err(ApiError::bad("messages", "`messages` is empty: give at least one message"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let path = format!("messages[{i}]");
        let obj = m.as_object().ok_or_else(|| ApiError::bad(&path, format!("`{path}` must be an object, got {}", v::show(m))))?;
        let mut n = Map::new();
        for (k, val) in obj {
            if !val.is_null() {
                n.insert(k.clone(), val.clone());
            }
        }
        let role_path = format!("{path}.role");
        let role = v::as_str(&role_path, obj.get("role").unwrap_or(&Value::Null))?.to_ascii_lowercase();
        if !ROLES.contains(&role.as_str()) {
            return Err(ApiError::bad(&role_path, format!("`{role_path}` = {role:?} is not a valid role (one of {})", ROLES.join(", "))));
        }
        n.insert("role".into(), Value::String(role));
        let cpath = format!("{path}.content");
        match obj.get("content") {
            None | Some(Value::Null) => {
                n.insert("content".into(), Value::String(String::new()));
            }
            Some(Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                for (j, p) in parts.iter().enumerate() {
                    let pp = format!("{cpath}[{j}]");
                    let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
                    if ty != "text" {
                        return Err(ApiError::bad(&pp, format!("`{pp}.type` = {ty:?} is not supported (text-only server: use \"text\" parts)")));
                    }
                    v::as_str(&format!("{pp}.text"), p.get("text").unwrap_or(&Value::Null))?;
                }
            }
            Some(x) => return Err(ApiError::bad(&cpath, format!("`{cpath}` must be a string, a list of parts or null, got {}", v::show(x)))),
        }
        if let Some(Value::Array(calls)) = n.get_mut("tool_calls") {
            for c in calls.iter_mut() {
                if let Some(args) = c.get_mut("function").and_then(|f| f.get_mut("arguments")) {
                    if let Some(s) = args.as_str() {
                        if let Ok(parsed) = serde_json::from_str::<Value>(s) {
                            *args = parsed;
                        }
                    }
                }
            }
        }
        out.push(Value::Object(n));
    }
    Ok(Value::Array(out))
}

/// A rendered chat prompt.
pub struct ChatPrompt {
    pub ids: Vec<u32>,
    /// The rendered template.
    pub text: String,
    pub tools: ToolPlan,
}

/// Renders the chat and tokenizes it.
pub fn prompt_ids(state: &AppState, obj: &Map<String, Value>) -> ApiResult<ChatPrompt> {
    let messages = normalise(obj.get("messages").unwrap_or(&Value::Null))?;
    let tools = tool_choice::plan(obj, state.cfg.tool_call_parser.is_some())?;
    let mut kwargs = match v::field(obj, "chat_template_kwargs") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(x) => return Err(ApiError::bad("chat_template_kwargs", format!("`chat_template_kwargs` must be an object, got {}", v::show(x)))),
    };
    if let Some(e) = v::field(obj, "reasoning_effort") {
        v::as_str("reasoning_effort", e)?;
        kwargs.entry("reasoning_effort").or_insert(e.clone());
    }
    let text = state
        .codec
        .render_chat(&messages, tools.render.as_ref(), &kwargs)
        .map_err(|e| ApiError::bad("messages", format!("the chat template failed on these messages: {e:#}")))?;
    let ids = v::encode_prompt(&*state.codec, &text, false, state.context_len(), "messages")?;
    Ok(ChatPrompt { ids, text, tools })
}
