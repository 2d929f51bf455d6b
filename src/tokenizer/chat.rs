//! Chat templates, rendered with minijinja the way Hugging Face renders them with jinja2.
//!
//! HF (`transformers.utils.chat_template_utils`) compiles the template in an
//! `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the
//! `loopcontrols` extension, its own `tojson` filter (`json.dumps(ensure_ascii=False)`),
//! and the globals `raise_exception` and `strftime_now`; then calls
//! `render(messages=..., tools=..., documents=None, add_generation_prompt=..., **kwargs)`
//! where kwargs also carry the tokenizer's special tokens (`eos_token`, ...).

use std::sync::Arc;

use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};
use serde_json::{Map as JsonMap, Value as Json};

use super::pycompat;

const TEMPLATE_NAME: &str = "chat_template";

/// Why rendering a chat template failed. The server maps every variant to HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template called `raise_exception(msg)`; the message is the template's text,
    /// e.g. "System message must be at the beginning."
    #[error("{0}")]
    Raised(String),
    /// The template source does not compile.
    #[error("invalid chat template: {0}")]
    Syntax(String),
    /// The inputs have the wrong shape (e.g. `messages` is not an array).
    #[error("invalid chat input: {0}")]
    Input(String),
    /// Any other error while rendering (undefined operation, bad filter argument, ...).
    #[error("chat template rendering failed: {0}")]
    Render(String),
}

/// Marker carried as the source of the minijinja error raised by `raise_exception`.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
}

fn classify(err: Error) -> ChatTemplateError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<Raised>() {
            return ChatTemplateError::Raised(r.0.clone());
        }
        cur = e.source();
    }
    ChatTemplateError::Render(err.to_string())
}

/// A compiled chat template. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    source: Arc<str>,
    /// Variables every render sees (HF passes the tokenizer's special tokens); kwargs
    /// given to `render` override them.
    defaults: JsonMap<String, Json>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source_len", &self.source.len()).finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`. Syntax errors come back as [`ChatTemplateError::Syntax`].
    pub fn new(source: &str) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_formatter(|out, _state, value| {
            out.write_str(&pycompat::py_str(value)).map_err(Error::from)
        });
        env.set_unknown_method_callback(pycompat::unknown_method);
        env.add_filter("tojson", super::pyjson::tojson_filter);
        env.add_filter("string", pycompat::string_filter);
        env.add_filter("trim", pycompat::trim_filter);
        // jinja2's `sequence` test accepts anything with len() and [] (str, list, dict)
        env.add_test("sequence", |v: Value| {
            matches!(v.kind(), minijinja::value::ValueKind::Seq | minijinja::value::ValueKind::String | minijinja::value::ValueKind::Map)
        });
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |fmt: String| super::pytime::strftime_now(&fmt));
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| ChatTemplateError::Syntax(e.to_string()))?;
        Ok(Self { env: Arc::new(env), source: Arc::from(source), defaults: JsonMap::new() })
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Sets a variable every render sees unless a kwarg of the same name overrides it
    /// (the tokenizer sets `eos_token`, `pad_token`, `bos_token`, `unk_token` as HF does).
    pub fn with_default(mut self, name: &str, value: Json) -> Self {
        self.defaults.insert(name.to_string(), value);
        self
    }

    /// Renders a conversation.
    ///
    /// `messages` is the OpenAI-style array (`content` may be a string, null or a list of
    /// parts). `tools` is the optional array of tool definitions; when `None`, a `tools`
    /// entry of `kwargs` is used instead (HF passes tools either way). `kwargs` are extra
    /// template variables such as `enable_thinking`.
    ///
    /// Input fix-ups: as transformers 5.x does, a message's `reasoning` or `thinking` field
    /// also fills `reasoning_content`; as SGLang does, a tool call whose
    /// `function.arguments` is a JSON-object *string* (the OpenAI wire format) is parsed
    /// into an object, because templates iterate it with `|items`.
    pub fn render(
        &self,
        messages: &Json,
        tools: Option<&Json>,
        add_generation_prompt: bool,
        kwargs: &JsonMap<String, Json>,
    ) -> anyhow::Result<String> {
        let messages = normalize_messages(messages)?;
        let mut ctx: JsonMap<String, Json> = self.defaults.clone();
        for (k, v) in kwargs {
            ctx.insert(k.clone(), v.clone());
        }
        let tools = match tools {
            Some(t) => t.clone(),
            None => ctx.get("tools").cloned().unwrap_or(Json::Null),
        };
        if !(tools.is_null() || tools.is_array()) {
            return Err(ChatTemplateError::Input("tools must be an array or null".into()).into());
        }
        ctx.insert("messages".into(), messages);
        ctx.insert("tools".into(), tools);
        ctx.entry("documents").or_insert(Json::Null);
        ctx.insert("add_generation_prompt".into(), Json::Bool(add_generation_prompt));
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(|e| ChatTemplateError::Render(e.to_string()))?;
        let out = tmpl.render(Value::from_serialize(&ctx)).map_err(classify)?;
        Ok(out)
    }
}

/// transformers 5.x fills `reasoning_content` from the first non-null of
/// `reasoning_content`, `thinking`, `reasoning` (and `thinking` for templates that read
/// that): `{"thinking": r, **message, "reasoning_content": r}`.
fn alias_reasoning_fields(obj: &mut JsonMap<String, Json>) {
    let reasoning = ["reasoning_content", "thinking", "reasoning"]
        .iter()
        .find_map(|k| obj.get(*k).filter(|v| !v.is_null()).cloned());
    if let Some(r) = reasoning {
        let mut aliased = JsonMap::with_capacity(obj.len() + 2);
        if !obj.contains_key("thinking") {
            aliased.insert("thinking".into(), r.clone());
        }
        aliased.extend(std::mem::take(obj));
        aliased.insert("reasoning_content".into(), r);
        *obj = aliased;
    }
}

/// Checks the shape of `messages`, aliases reasoning fields and parses string tool-call
/// arguments.
fn normalize_messages(messages: &Json) -> Result<Json, ChatTemplateError> {
    let list = messages
        .as_array()
        .ok_or_else(|| ChatTemplateError::Input("messages must be an array".into()))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let mut m = m.clone();
        let obj = m
            .as_object_mut()
            .ok_or_else(|| ChatTemplateError::Input(format!("messages[{i}] must be an object")))?;
        alias_reasoning_fields(obj);
        if let Some(Json::Array(calls)) = obj.get_mut("tool_calls") {
            for call in calls.iter_mut() {
                let target = match call.get_mut("function") {
                    Some(f) if f.is_object() => f,
                    _ => call,
                };
                if let Some(args) = target.get_mut("arguments") {
                    if let Json::String(s) = args {
                        if let Ok(parsed @ Json::Object(_)) = serde_json::from_str::<Json>(s) {
                            *args = parsed;
                        }
                    }
                }
            }
        }
        out.push(m);
    }
    Ok(Json::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, ctx: Json) -> String {
        let t = ChatTemplate::new(src).unwrap();
        let kwargs = ctx.as_object().unwrap().clone();
        t.render(&json!([]), None, false, &kwargs).unwrap()
    }

    #[test]
    fn python_like_values() {
        assert_eq!(render("{{ x }} {{ y }} {{ z|string }} {{ f }}", json!({"x": true, "y": null, "z": false, "f": 1e16})), "True None False 1e+16");
        assert_eq!(render("{{ d|tojson }}", json!({"d": {"b": [1, 2.5, "é\n"], "a": null}})), r#"{"b": [1, 2.5, "é\n"], "a": null}"#);
        assert_eq!(render("{{ d|tojson(indent=2) }}", json!({"d": {"a": [1], "b": {}}})), "{\n  \"a\": [\n    1\n  ],\n  \"b\": {}\n}");
        assert_eq!(render("{{ d|tojson(ensure_ascii=true) }}", json!({"d": "é😀"})), r#""\u00e9\ud83d\ude00""#);
        assert_eq!(render("{{ '<b>' }}", json!({})), "<b>");
    }

    #[test]
    fn jinja2_tests() {
        let src = "{{ s is sequence }} {{ l is sequence }} {{ d is sequence }} {{ n is sequence }} {{ s is iterable }} {{ d is mapping }} {{ f is false }} {{ z is false }}";
        assert_eq!(render(src, json!({"s": "x", "l": [1], "d": {}, "n": 1, "f": false, "z": 0})), "True True True False True True True False");
    }

    #[test]
    fn python_methods() {
        let src = "{{ s.startswith('ab') }}|{{ s.split('b')|tojson }}|{{ s.strip('ac') }}|{{ s.upper() }}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{{ d.get('z', 7) }}";
        assert_eq!(render(src, json!({"s": "abcba", "d": {"y": 1, "x": 2}})), r#"True|["a", "c", "a"]|bcb|ABCBA|y=1;x=2;7"#);
    }

    #[test]
    fn raise_exception_message_is_the_templates_text() {
        let t = ChatTemplate::new("{{ raise_exception('No messages provided.') }}").unwrap();
        let err = t.render(&json!([]), None, false, &JsonMap::new()).unwrap_err();
        assert_eq!(err.to_string(), "No messages provided.");
        assert!(matches!(err.downcast_ref::<ChatTemplateError>(), Some(ChatTemplateError::Raised(_))));
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = ChatTemplate::new("{% if x %}").unwrap_err();
        assert!(matches!(err.downcast_ref::<ChatTemplateError>(), Some(ChatTemplateError::Syntax(_))), "{err}");
    }
}
