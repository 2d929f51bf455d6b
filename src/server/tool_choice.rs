//! A chat request's `tools` and `tool_choice` -> what the template sees, whether the
//! output is parsed for tool calls, and the text that forces a call.
//!
//! - `"none"`: the template gets no tools and the output is not parsed (SGLang drops the
//!   tools from the prompt too).
//! - `"auto"` (the default when tools are given): every tool is rendered; the model
//!   decides; the output is parsed.
//! - `"required"` and a named function (`{"type": "function", "function": {"name": N}}`):
//!   SGLang constrains decoding with a grammar; kiln has no grammar engine yet, so it
//!   forces the call in the prompt instead: the generation prompt is extended with
//!   `<tool_call>\n<function=` (required) or `<tool_call>\n<function=N>\n` (named, and
//!   only N is rendered), and the parser reads the output as continuing that text. When
//!   the prompt leaves the model inside a think block (thinking on), the forcing text
//!   would land in the reasoning, so nothing is appended: the request behaves as `"auto"`
//!   (with only N rendered for a named choice) and may come back without a call.

use super::errors::{ApiError, ApiResult};
use super::tool_calls::ToolSet;
use super::validate::{self as v};
use serde_json::{Map, Value};

/// What a chat request's tool fields ask for.
#[derive(Clone, Debug, Default)]
pub struct ToolPlan {
    /// The `tools` the template renders (None: no tools section).
    pub render: Option<Value>,
    /// Tools to parse the output against (None: the output is not parsed).
    pub parse: Option<ToolSet>,
    /// `required` / named: the start of a call, appended to the prompt when possible.
    pub force: Option<String>,
}

impl ToolPlan {
    /// The text to append to a rendered prompt, if the call can be forced there (not
    /// inside an open think block).
    pub fn forced_prefix(&self, in_think_block: bool) -> Option<&str> {
        self.force.as_deref().filter(|_| !in_think_block)
    }
}

fn function_name(tool: &Value) -> Option<&str> {
    tool.get("function").unwrap_or(tool).get("name").and_then(Value::as_str)
}

/// Reads and checks `tools` / `tool_choice`. `parser_on` is whether the server has a
/// tool-call parser (`--tool-call-parser`); without one the output is never parsed.
pub fn plan(obj: &Map<String, Value>, parser_on: bool) -> ApiResult<ToolPlan> {
    let tools = match v::field(obj, "tools") {
        None => None,
        Some(Value::Array(list)) => Some(list),
        Some(t) => return Err(ApiError::bad("tools", format!("`tools` must be a list, got {}", v::show(t)))),
    };
    for (i, t) in tools.into_iter().flatten().enumerate() {
        if function_name(t).is_none() {
            return Err(ApiError::bad(
                format!("tools[{i}]"),
                format!("`tools[{i}]` must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {}", v::show(t)),
            ));
        }
    }
    let choice = v::field(obj, "tool_choice");
    let list = match (tools, choice) {
        (None, None) => return Ok(ToolPlan::default()),
        (None, Some(Value::String(s))) if s == "none" => return Ok(ToolPlan::default()),
        (None, Some(_)) => return Err(ApiError::bad("tool_choice", "`tool_choice` needs `tools`")),
        (Some(list), _) if list.is_empty() => return Ok(ToolPlan::default()),
        (Some(list), _) => list,
    };
    let parse = |render: &[Value]| parser_on.then(|| ToolSet::from_request(render));
    match choice {
        None => Ok(ToolPlan { render: Some(Value::Array(list.clone())), parse: parse(list), force: None }),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(ToolPlan::default()),
            "auto" => Ok(ToolPlan { render: Some(Value::Array(list.clone())), parse: parse(list), force: None }),
            "required" => Ok(ToolPlan {
                render: Some(Value::Array(list.clone())),
                parse: parse(list),
                force: parser_on.then(|| "<tool_call>\n<function=".to_string()),
            }),
            other => Err(ApiError::bad(
                "tool_choice",
                format!("`tool_choice` = {other:?} is not valid (\"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}})"),
            )),
        },
        Some(Value::Object(o)) => {
            let name = o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).ok_or_else(|| {
                ApiError::bad("tool_choice", format!("`tool_choice` must name a function: {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {}", v::show(&Value::Object(o.clone()))))
            })?;
            let chosen: Vec<Value> = list.iter().filter(|t| function_name(t) == Some(name)).cloned().collect();
            if chosen.is_empty() {
                return Err(ApiError::bad("tool_choice", format!("`tool_choice` names {name:?}, which is not in `tools`")));
            }
            Ok(ToolPlan {
                parse: parse(&chosen),
                render: Some(Value::Array(chosen)),
                force: parser_on.then(|| format!("<tool_call>\n<function={name}>\n")),
            })
        }
        Some(x) => Err(ApiError::bad("tool_choice", format!("`tool_choice` must be a string or an object, got {}", v::show(x)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn choices_map_to_plans() {
        let tools = json!([{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "b"}}]);
        let p = plan(&obj(json!({"tools": tools})), true).unwrap();
        assert_eq!(p.render.as_ref().unwrap().as_array().unwrap().len(), 2);
        assert!(p.parse.is_some() && p.force.is_none());
        let p = plan(&obj(json!({"tools": tools, "tool_choice": "none"})), true).unwrap();
        assert!(p.render.is_none() && p.parse.is_none());
        let p = plan(&obj(json!({"tools": tools, "tool_choice": "required"})), true).unwrap();
        assert_eq!(p.force.as_deref(), Some("<tool_call>\n<function="));
        let p = plan(&obj(json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "b"}}})), true).unwrap();
        assert_eq!(p.render, Some(json!([{"type": "function", "function": {"name": "b"}}])));
        assert_eq!(p.force.as_deref(), Some("<tool_call>\n<function=b>\n"));
        assert_eq!(p.forced_prefix(true), None);
        let p = plan(&obj(json!({"tools": tools})), false).unwrap();
        assert!(p.render.is_some() && p.parse.is_none());
    }

    #[test]
    fn bad_tool_fields_are_400_naming_the_field() {
        let tools = json!([{"type": "function", "function": {"name": "a"}}]);
        for (body, field) in [
            (json!({"tool_choice": "auto"}), "tool_choice"),
            (json!({"tools": tools, "tool_choice": "always"}), "tool_choice"),
            (json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "zz"}}}), "tool_choice"),
            (json!({"tools": tools, "tool_choice": 3}), "tool_choice"),
            (json!({"tools": {"a": 1}}), "tools"),
            (json!({"tools": [{"type": "function"}]}), "tools[0]"),
        ] {
            let e = plan(&obj(body.clone()), true).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert!(e.message.contains(&format!("`{field}`")), "{body}: {}", e.message);
        }
    }
}
