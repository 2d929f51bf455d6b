//! A chat request's `tools` and `tool_choice` -> what the template sees, whether the
//! output is parsed for tool calls, and the grammar that forces a call.
//!
//! - `"none"`: the template gets no tools and the output is not parsed (SGLang drops the
//!   tools from the prompt too).
//! - `"auto"` (the default when tools are given): every tool is rendered; the model
//!   decides; the output is parsed.
//! - `"required"` and a named function (`{"type": "function", "function": {"name": N}}`):
//!   as SGLang does with its grammar backend, decoding is constrained (llguidance, see
//!   [`ToolPlan::call_grammar`]) to one or more complete `<tool_call>` blocks calling the
//!   rendered tools (only N for a named choice, which makes exactly one call, as does
//!   `parallel_tool_calls: false`) with their declared parameter names;
//!   parameter values are free text, typed afterwards by the parser. When the prompt
//!   leaves the model in a think block, the reasoning comes first (free text up to
//!   `</think>`), then the calls.

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
    /// `required` / named: the output must be calls of the rendered tools.
    pub force: bool,
    /// Exactly one forced call (a named choice, or `parallel_tool_calls: false`).
    pub single_call: bool,
}

/// A Lark string literal (JSON escaping is valid Lark escaping).
fn lark_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

impl ToolPlan {
    /// For `required` / named: a Lark grammar (llguidance's dialect) whose sentences are
    /// one or more calls, in the template's layout, of the rendered tools with their
    /// declared parameters; preceded by the reasoning (any text up to `</think>`, then
    /// the template's blank line) when the prompt opened a think block.
    pub fn call_grammar(&self, in_think_block: bool) -> Option<String> {
        let tools = self.render.as_ref()?.as_array()?;
        if !self.force || tools.is_empty() {
            return None;
        }
        let mut g = String::new();
        if in_think_block {
            g.push_str("start: think \"\\n\\n\" calls\nthink[suffix=\"</think>\"]: /(.|\\n)*/\n");
        } else {
            g.push_str("start: calls\n");
        }
        g.push_str(if self.single_call { "calls: call\n" } else { "calls: call (\"\\n\" call)*\n" });
        g.push_str("value[suffix=\"\\n</parameter>\\n\"]: /(.|\\n)*/\n");
        let alternatives: Vec<String> = (0..tools.len()).map(|i| format!("f{i}")).collect();
        g.push_str(&format!("call: \"<tool_call>\\n<function=\" ({})\n", alternatives.join(" | ")));
        for (i, t) in tools.iter().enumerate() {
            let f = t.get("function").unwrap_or(t);
            let head = lark_str(&format!("{}>\n", function_name(t).unwrap_or_default()));
            let params: Vec<String> =
                f.pointer("/parameters/properties").and_then(Value::as_object).map(|p| p.keys().map(|k| lark_str(k)).collect()).unwrap_or_default();
            if params.is_empty() {
                g.push_str(&format!("f{i}: {head} \"</function>\\n</tool_call>\"\n"));
            } else {
                g.push_str(&format!("f{i}: {head} p{i}* \"</function>\\n</tool_call>\"\n"));
                g.push_str(&format!("p{i}: \"<parameter=\" ({}) \">\\n\" value\n", params.join(" | ")));
            }
        }
        Some(g)
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
    let parallel = v::field(obj, "parallel_tool_calls").map(|x| v::as_bool("parallel_tool_calls", x)).transpose()?.unwrap_or(true);
    let all = |force: bool| ToolPlan { render: Some(Value::Array(list.clone())), parse: parse(list), force, single_call: !parallel };
    match choice {
        None => Ok(all(false)),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(ToolPlan::default()),
            "auto" => Ok(all(false)),
            "required" => Ok(all(parser_on)),
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
            Ok(ToolPlan { parse: parse(&chosen), render: Some(Value::Array(chosen)), force: parser_on, single_call: true })
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
        assert!(p.parse.is_some() && !p.force && p.call_grammar(false).is_none());
        let p = plan(&obj(json!({"tools": tools, "tool_choice": "none"})), true).unwrap();
        assert!(p.render.is_none() && p.parse.is_none());
        let p = plan(&obj(json!({"tools": tools, "tool_choice": "required"})), true).unwrap();
        assert!(p.force && p.call_grammar(false).unwrap().contains("(f0 | f1)"));
        let p = plan(&obj(json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "b"}}})), true).unwrap();
        assert_eq!(p.render, Some(json!([{"type": "function", "function": {"name": "b"}}])));
        assert!(p.force && p.call_grammar(true).unwrap().starts_with("start: think"));
        let p = plan(&obj(json!({"tools": tools, "tool_choice": "required"})), false).unwrap();
        assert!(p.render.is_some() && p.parse.is_none() && p.call_grammar(false).is_none());
    }

    /// Greedy sampling under the forced-call grammar from random logits plus a bonus on
    /// the next character of `target`: the output follows `target` wherever the grammar
    /// allows it and the random logits elsewhere.
    fn forced_output(tools: &Value, choice: Value, parallel: bool, think: bool, target: &str, seed: u64) -> (String, ToolPlan) {
        use crate::sampling::grammar::{byte_level_engine, GrammarSpec};
        use crate::sampling::{LogprobWant, Sampler, SamplingParams};
        use rand::{Rng, SeedableRng};
        let p = plan(&obj(json!({"tools": tools, "tool_choice": choice, "parallel_tool_calls": parallel})), true).unwrap();
        let grammar = byte_level_engine().compile(&GrammarSpec::Lark(p.call_grammar(think).unwrap())).unwrap_or_else(|e| panic!("{e}"));
        let mut sampler = Sampler::new(SamplingParams { temperature: 0.0, grammar: Some(grammar), ..Default::default() });
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let mut out = vec![];
        loop {
            let mut logits: Vec<f32> = (0..257).map(|_| rng.gen_range(0.0..1.0)).collect();
            if let Some(&b) = target.as_bytes().get(out.len()) {
                logits[b as usize] += 10.0;
            }
            let t = sampler.sample(&logits, 257, &[], &LogprobWant::default()).token;
            sampler.observe(t);
            if t == 256 {
                return (String::from_utf8(out).unwrap(), p);
            }
            out.push(t as u8);
            assert!(out.len() < 2000, "no EOS: {:?}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn forced_calls_follow_the_grammar() {
        let weather = json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {"properties": {"city": {}, "days": {}}}}},
            {"type": "function", "function": {"name": "ping"}}]);
        // parameterless tools: every choice left to the random logits ends
        let pings = json!([{"type": "function", "function": {"name": "ping"}}, {"type": "function", "function": {"name": "pong"}}]);
        let call = "<tool_call>\n<function=get_weather>\n<parameter=city>\nRoma\n</parameter>\n</function>\n</tool_call>";
        // a valid call passes unchanged, after the reasoning when thinking
        let (text, _) = forced_output(&weather, json!("required"), true, false, call, 0);
        assert_eq!(text, call);
        let thought = format!("Let me see </thin k>.</think>\n\n{call}");
        assert_eq!(forced_output(&weather, json!("required"), true, true, &thought, 0).0, thought);
        // text that is not a call is turned into calls; a named choice (or
        // parallel_tool_calls: false) makes exactly one, of that tool
        let named = json!({"type": "function", "function": {"name": "pong"}});
        let mut most = 0;
        for seed in 0..8 {
            for (choice, parallel, name) in [(json!("required"), true, None), (json!("required"), false, None), (named.clone(), true, Some("pong"))] {
                let (text, p) = forced_output(&pings, choice, parallel, false, "Sure, no tools needed!", seed);
                let (content, calls) = crate::server::tool_calls::parse_complete(&text, p.parse.as_ref().unwrap());
                assert!(content.is_empty() && !calls.is_empty(), "{text:?}");
                if !parallel || name.is_some() {
                    assert_eq!(calls.len(), 1, "{text:?}");
                }
                if let Some(n) = name {
                    assert_eq!(calls[0].name, n, "{text:?}");
                }
                most = most.max(calls.len());
            }
        }
        assert!(most > 1, "required with parallel calls never made two");
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
