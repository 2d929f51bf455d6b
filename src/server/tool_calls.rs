//! `--tool-call-parser qwen3_coder`: finds the tool calls Qwen3.5 writes in its chat
//! output and turns them into OpenAI `tool_calls`.
//!
//! The official chat template asks the model for
//! `<tool_call>\n<function=NAME>\n<parameter=P>\nVALUE\n</parameter>\n</function>\n</tool_call>`
//! (values are raw text; the template itself writes dicts and lists as JSON). The parser
//! is a streaming state machine: text outside a `<tool_call>` block passes through (a tail
//! that could be the start of the tag is held back), a block is held until its
//! `</tool_call>` and then becomes one [`ToolEvent::Call`] per function, or, if it does
//! not parse, goes out unchanged as text. A call is therefore never half-sent: a block
//! cut off by a stop or `max_tokens` comes back as text (unless its `</function>` was
//! already written). Whitespace between content and a call (the template's `\n\n`) and
//! between calls is a separator and is dropped, so streamed and non-streamed outputs
//! agree. Argument values are typed by the tool's JSON schema (see [`typed_value`]).

use serde_json::{Map, Value};
use std::collections::HashMap;

/// Parser names `--tool-call-parser` accepts.
pub const PARSERS: &[&str] = &["qwen3_coder"];

const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";
const FUNCTION_OPEN: &str = "<function=";
const FUNCTION_CLOSE: &str = "</function>";
const PARAM_OPEN: &str = "<parameter=";
const PARAM_CLOSE: &str = "</parameter>";

/// The tools a request offers: function name -> JSON schema of each parameter.
#[derive(Clone, Debug, Default)]
pub struct ToolSet {
    functions: HashMap<String, Map<String, Value>>,
}

impl ToolSet {
    /// From the request's `tools` (OpenAI `{"type": "function", "function": {...}}`
    /// entries; a bare function object is accepted too).
    pub fn from_request(tools: &[Value]) -> Self {
        let mut functions = HashMap::new();
        for t in tools {
            let f = t.get("function").unwrap_or(t);
            if let Some(name) = f.get("name").and_then(Value::as_str) {
                let props = f.pointer("/parameters/properties").and_then(Value::as_object).cloned().unwrap_or_default();
                functions.insert(name.to_string(), props);
            }
        }
        ToolSet { functions }
    }

    fn param_schema(&self, function: &str, param: &str) -> Option<&Value> {
        self.functions.get(function)?.get(param)
    }
}

/// One parsed call: the function's name and its arguments in the order written.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Vec<(String, Value)>,
}

impl ToolCall {
    /// The `arguments` JSON string in pieces, as streamed: `{"a": 1`, `, "b": "x"`, `}`
    /// (one piece per parameter; `{}` when there are none). Python `json.dumps` spacing,
    /// as SGLang writes it.
    pub fn argument_fragments(&self) -> Vec<String> {
        if self.arguments.is_empty() {
            return vec!["{}".into()];
        }
        let mut out: Vec<String> = self
            .arguments
            .iter()
            .enumerate()
            .map(|(i, (k, v))| format!("{}{}: {}", if i == 0 { "{" } else { ", " }, py_json(&Value::from(k.as_str())), py_json(v)))
            .collect();
        out.push("}".into());
        out
    }

    /// The whole `arguments` JSON string.
    pub fn arguments_json(&self) -> String {
        self.argument_fragments().concat()
    }
}

/// What the parser found in a piece of output.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolEvent {
    Text(String),
    Call(ToolCall),
}

/// `serde_json` with Python's default `json.dumps` separators (`", "`, `": "`).
fn py_json(v: &Value) -> String {
    struct PySeparators;
    impl serde_json::ser::Formatter for PySeparators {
        fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, PySeparators);
    serde::Serialize::serialize(v, &mut ser).expect("a JSON value serializes");
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

/// The JSON types a parameter schema allows, in the order given (`type` as a string or
/// a list, or gathered from `anyOf` / `oneOf`; `properties` implies object, `items` array).
fn schema_types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => return vec![t.as_str()],
        Some(Value::Array(ts)) => return ts.iter().filter_map(Value::as_str).collect(),
        _ => {}
    }
    let mut out = vec![];
    for key in ["anyOf", "oneOf"] {
        for alt in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            out.extend(schema_types(alt));
        }
    }
    if out.is_empty() {
        if schema.get("properties").is_some() {
            out.push("object");
        } else if schema.get("items").is_some() {
            out.push("array");
        }
    }
    out
}

/// A raw parameter value typed by its JSON schema: each non-string type the schema
/// allows is tried in order (integer, number, boolean, null, object, array); anything
/// that parses as none of them, or a parameter the schema does not describe, stays a
/// string. Never fails: a model that writes `days=three` gets the string "three".
pub fn typed_value(raw: &str, schema: Option<&Value>) -> Value {
    let types = schema.map(schema_types).unwrap_or_default();
    let t = raw.trim();
    for ty in types {
        let parsed = match ty {
            "integer" => t.parse::<i64>().ok().map(Value::from).or_else(|| json_number(t)),
            "number" => json_number(t),
            "boolean" => match t.to_ascii_lowercase().as_str() {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
            "null" => matches!(t, "null" | "None").then_some(Value::Null),
            "object" => serde_json::from_str::<Value>(t).ok().filter(Value::is_object),
            "array" => serde_json::from_str::<Value>(t).ok().filter(Value::is_array),
            _ => None,
        };
        if let Some(v) = parsed {
            return v;
        }
    }
    Value::String(raw.to_string())
}

fn json_number(t: &str) -> Option<Value> {
    serde_json::from_str::<Value>(t).ok().filter(Value::is_number)
}

/// Parses the inside of one `<tool_call>` block: one or more
/// `<function=NAME>...</function>`, nothing else but whitespace. `None` if it does not
/// have that shape or names a function the request did not offer.
fn parse_block(block: &str, tools: &ToolSet) -> Option<Vec<ToolCall>> {
    let mut calls = vec![];
    let mut rest = block.trim_start();
    while !rest.is_empty() {
        let after_open = rest.strip_prefix(FUNCTION_OPEN)?;
        let name_end = after_open.find('>')?;
        let name = after_open[..name_end].trim();
        if name.is_empty() || name.contains(['<', '\n']) || !tools.functions.contains_key(name) {
            return None;
        }
        let body_and_rest = &after_open[name_end + 1..];
        let body_end = body_and_rest.find(FUNCTION_CLOSE)?;
        let arguments = parse_parameters(&body_and_rest[..body_end], name, tools)?;
        calls.push(ToolCall { name: name.to_string(), arguments });
        rest = body_and_rest[body_end + FUNCTION_CLOSE.len()..].trim_start();
    }
    (!calls.is_empty()).then_some(calls)
}

/// `<parameter=P>\nVALUE\n</parameter>` pairs. As SGLang's parser, a missing
/// `</parameter>` ends the value at the next `<parameter=` (or the end of the body).
fn parse_parameters(body: &str, function: &str, tools: &ToolSet) -> Option<Vec<(String, Value)>> {
    let mut args: Vec<(String, Value)> = vec![];
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let after_open = rest.strip_prefix(PARAM_OPEN)?;
        let name_end = after_open.find('>')?;
        let name = after_open[..name_end].trim();
        if name.is_empty() || name.contains(['<', '\n']) {
            return None;
        }
        let value_and_rest = &after_open[name_end + 1..];
        let (value, next) = match value_and_rest.find(PARAM_CLOSE) {
            Some(end) => (&value_and_rest[..end], &value_and_rest[end + PARAM_CLOSE.len()..]),
            None => {
                let end = value_and_rest.find(PARAM_OPEN).unwrap_or(value_and_rest.len());
                (&value_and_rest[..end], &value_and_rest[end..])
            }
        };
        // the template writes ">\n" before and "\n</parameter>" after the value
        let value = value.strip_prefix('\n').unwrap_or(value);
        let value = value.strip_suffix('\n').unwrap_or(value);
        let typed = typed_value(value, tools.param_schema(function, name));
        match args.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = typed,
            None => args.push((name.to_string(), typed)),
        }
        rest = next.trim_start();
    }
    Some(args)
}

/// Length of the longest suffix of `text` that is a proper prefix of `tag`.
fn partial_tag_len(text: &str, tag: &str) -> usize {
    (1..tag.len()).rev().find(|&k| text.ends_with(&tag[..k])).unwrap_or(0)
}

/// The streaming `qwen3_coder` parser for one choice.
pub struct ToolCallParser {
    tools: ToolSet,
    /// Inside a `<tool_call>` block (its text so far is in `held`).
    in_block: bool,
    /// Text not yet given out: a possible tag start, trailing whitespace, or a block.
    held: String,
    /// The whitespace dropped before the open block, given back if the block fails.
    separator: String,
    /// A call was emitted and no content has followed yet (whitespace here is a separator).
    after_call: bool,
    calls: usize,
}

impl ToolCallParser {
    pub fn new(tools: ToolSet) -> Self {
        ToolCallParser { tools, in_block: false, held: String::new(), separator: String::new(), after_call: false, calls: 0 }
    }

    /// How many calls were emitted so far.
    #[cfg(test)]
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Feeds the next piece of output.
    pub fn push(&mut self, delta: &str) -> Vec<ToolEvent> {
        self.held.push_str(delta);
        let mut out = vec![];
        loop {
            if self.in_block {
                let Some(end) = self.held.find(CALL_CLOSE) else { break };
                let block: String = self.held.drain(..end + CALL_CLOSE.len()).collect();
                self.in_block = false;
                self.close_block(&block[..end], &mut out);
            } else if let Some(start) = self.held.find(CALL_OPEN) {
                let before: String = self.held.drain(..start + CALL_OPEN.len()).collect();
                // whitespace just before a call separates it from the content
                let content = before[..start].trim_end();
                self.separator = before[content.len()..start].to_string();
                self.text(content, &mut out);
                self.in_block = true;
            } else {
                // hold a possible tag start and trailing whitespace (a separator if a
                // call follows)
                let keep = partial_tag_len(&self.held, CALL_OPEN);
                let body = &self.held[..self.held.len() - keep];
                let cut = body.trim_end().len();
                let now: String = self.held.drain(..cut).collect();
                self.text(&now, &mut out);
                break;
            }
        }
        out
    }

    /// The end of the output: a held block that never closed is a call only if its
    /// `</function>` was written; otherwise it goes out as text.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let mut out = vec![];
        let rest = std::mem::take(&mut self.held);
        if self.in_block {
            self.in_block = false;
            match parse_block(&rest, &self.tools).filter(|_| rest.trim_end().ends_with(FUNCTION_CLOSE)) {
                Some(calls) => self.emit_calls(calls, &mut out),
                None => {
                    let sep = std::mem::take(&mut self.separator);
                    self.text(&format!("{sep}{CALL_OPEN}{rest}"), &mut out)
                }
            }
        } else if !self.after_call {
            self.text(&rest, &mut out);
        }
        out
    }

    fn close_block(&mut self, block: &str, out: &mut Vec<ToolEvent>) {
        match parse_block(block, &self.tools) {
            Some(calls) => self.emit_calls(calls, out),
            None => {
                let sep = std::mem::take(&mut self.separator);
                self.text(&format!("{sep}{CALL_OPEN}{block}{CALL_CLOSE}"), out)
            }
        }
    }

    fn emit_calls(&mut self, calls: Vec<ToolCall>, out: &mut Vec<ToolEvent>) {
        self.calls += calls.len();
        out.extend(calls.into_iter().map(ToolEvent::Call));
        self.after_call = true;
    }

    fn text(&mut self, text: &str, out: &mut Vec<ToolEvent>) {
        // whitespace right after a call is a separator too
        let text = if self.after_call { text.trim_start() } else { text };
        if text.is_empty() {
            return;
        }
        self.after_call = false;
        match out.last_mut() {
            Some(ToolEvent::Text(t)) => t.push_str(text),
            _ => out.push(ToolEvent::Text(text.to_string())),
        }
    }
}

/// Parses a whole output at once: (content, calls). Same result as streaming it.
pub fn parse_complete(text: &str, tools: &ToolSet) -> (String, Vec<ToolCall>) {
    let mut p = ToolCallParser::new(tools.clone());
    let mut events = p.push(text);
    events.extend(p.finish());
    let mut content = String::new();
    let mut calls = vec![];
    for e in events {
        match e {
            ToolEvent::Text(t) => content.push_str(&t),
            ToolEvent::Call(c) => calls.push(c),
        }
    }
    (content, calls)
}

#[cfg(test)]
#[path = "tool_calls_tests.rs"]
mod tests;
