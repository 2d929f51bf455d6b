//! Tests of the `qwen3_coder` tool-call parser: a table of outputs, each parsed whole and
//! streamed with a chunk boundary at every byte position (and byte by byte).

use super::*;
use serde_json::json;

fn tools() -> ToolSet {
    ToolSet::from_request(&[
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"}, "threshold": {"type": "number"},
            "detailed": {"type": "boolean"}, "opts": {"type": "object"}, "tags": {"type": "array"},
            "note": {"type": ["integer", "string"]}, "maybe": {"anyOf": [{"type": "null"}, {"type": "integer"}]}}}}}),
        json!({"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}),
        json!({"name": "no_params"}),
    ])
}

/// (name, model output, expected content, expected calls as (name, arguments JSON)).
type Case = (&'static str, &'static str, &'static str, &'static [(&'static str, &'static str)]);

const CASES: &[Case] = &[
    ("plain text", "Hello, world.\n", "Hello, world.\n", &[]),
    ("text with a lone <", "a < b and <tool but not a call", "a < b and <tool but not a call", &[]),
    (
        "one call after content (template layout)",
        "Let me check.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nRoma\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
        "Let me check.",
        &[("get_weather", r#"{"city": "Roma", "days": 3}"#)],
    ),
    (
        "every schema type",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\n42\n</parameter>\n<parameter=days>\n7\n</parameter>\n<parameter=threshold>\n2.5\n</parameter>\n<parameter=detailed>\nTrue\n</parameter>\n<parameter=opts>\n{\"lang\": \"it\", \"n\": 1.0}\n</parameter>\n<parameter=tags>\n[\"a\", \"ß\", 1]\n</parameter>\n<parameter=note>\nsoon\n</parameter>\n<parameter=maybe>\nnull\n</parameter>\n<parameter=extra>\n5\n</parameter>\n</function>\n</tool_call>",
        "",
        &[("get_weather", r#"{"city": "42", "days": 7, "threshold": 2.5, "detailed": true, "opts": {"lang": "it", "n": 1.0}, "tags": ["a", "ß", 1], "note": "soon", "maybe": null, "extra": "5"}"#)],
    ),
    (
        "a value that does not fit its type stays a string",
        "<tool_call>\n<function=get_weather>\n<parameter=days>\nthree\n</parameter>\n<parameter=opts>\n{broken\n</parameter>\n</function>\n</tool_call>",
        "",
        &[("get_weather", r#"{"days": "three", "opts": "{broken"}"#)],
    ),
    (
        "multi-line string keeps inner newlines and only one edge newline is removed",
        "<tool_call>\n<function=search>\n<parameter=q>\n\nline 1\nline 2\n\n</parameter>\n</function>\n</tool_call>",
        "",
        &[("search", "{\"q\": \"\\nline 1\\nline 2\\n\"}")],
    ),
    (
        "two calls, whitespace between them dropped",
        "<tool_call>\n<function=search>\n<parameter=q>\na\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=no_params>\n</function>\n</tool_call>\n",
        "",
        &[("search", r#"{"q": "a"}"#), ("no_params", "{}")],
    ),
    (
        "missing </parameter> ends at the next parameter",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nRoma\n<parameter=days>\n2\n</function>\n</tool_call>",
        "",
        &[("get_weather", r#"{"city": "Roma", "days": 2}"#)],
    ),
    (
        "closing </tool_call> missing at the end, </function> written: still a call",
        "ok\n<tool_call>\n<function=search>\n<parameter=q>\nx\n</parameter>\n</function>\n",
        "ok",
        &[("search", r#"{"q": "x"}"#)],
    ),
    (
        "cut off inside a parameter: returned as text",
        "Checking.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nRo",
        "Checking.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nRo",
        &[],
    ),
    (
        "unknown function: returned as text",
        "<tool_call>\n<function=launch_rockets>\n</function>\n</tool_call>",
        "<tool_call>\n<function=launch_rockets>\n</function>\n</tool_call>",
        &[],
    ),
    (
        "garbage inside the block: returned as text, the rest still parsed",
        "<tool_call>{\"name\": \"search\"}</tool_call> then <tool_call><function=search></function></tool_call>",
        "<tool_call>{\"name\": \"search\"}</tool_call> then",
        &[("search", "{}")],
    ),
    ("a partial tag at the end is text", "the end <tool_ca", "the end <tool_ca", &[]),
    ("trailing whitespace without a call is kept", "answer \n\n", "answer \n\n", &[]),
    (
        "text after a call (the template forbids it) is kept without the separator",
        "<tool_call><function=no_params></function></tool_call>\n\nDone.",
        "Done.",
        &[("no_params", "{}")],
    ),
    (
        "non-ASCII everywhere",
        "Città 東京 👩‍💻\n<tool_call>\n<function=search>\n<parameter=q>\n東京 \"quoted\"\n</parameter>\n</function>\n</tool_call>",
        "Città 東京 👩‍💻",
        &[("search", r#"{"q": "東京 \"quoted\""}"#)],
    ),
];

fn summarize(events: Vec<ToolEvent>) -> (String, Vec<(String, String)>) {
    let mut content = String::new();
    let mut calls = vec![];
    for e in events {
        match e {
            ToolEvent::Text(t) => content.push_str(&t),
            ToolEvent::Call(c) => calls.push((c.name.clone(), c.arguments_json())),
        }
    }
    (content, calls)
}

fn streamed(text: &str, pieces: &[&str]) -> (String, Vec<(String, String)>) {
    let mut p = ToolCallParser::new(tools());
    let mut events = vec![];
    for piece in pieces {
        events.extend(p.push(piece));
    }
    events.extend(p.finish());
    let out = summarize(events);
    assert_eq!(pieces.concat(), text);
    out
}

fn expected(case: &Case) -> (String, Vec<(String, String)>) {
    (case.2.to_string(), case.3.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect())
}

#[test]
fn whole_outputs_parse_as_the_table_says() {
    for case in CASES {
        let (content, calls) = parse_complete(case.1, &tools());
        let got = (content, calls.iter().map(|c| (c.name.clone(), c.arguments_json())).collect::<Vec<_>>());
        assert_eq!(got, expected(case), "case {:?}", case.0);
        for c in &calls {
            serde_json::from_str::<Value>(&c.arguments_json()).unwrap_or_else(|e| panic!("case {:?}: arguments not JSON: {e}", case.0));
        }
    }
}

#[test]
fn every_chunk_boundary_gives_the_same_result() {
    for case in CASES {
        let text = case.1;
        let want = expected(case);
        for cut in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            assert_eq!(streamed(text, &[&text[..cut], &text[cut..]]), want, "case {:?}, cut at byte {cut}", case.0);
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(streamed(text, &pieces), want, "case {:?}, one character per piece", case.0);
    }
}

#[test]
fn streaming_never_shows_markup_before_the_block_is_decided() {
    let text = CASES[2].1;
    let mut p = ToolCallParser::new(tools());
    for ch in text.chars() {
        for e in p.push(&ch.to_string()) {
            if let ToolEvent::Text(t) = e {
                assert!(!t.contains('<'), "markup leaked as content: {t:?}");
            }
        }
    }
    assert_eq!(p.calls(), 1);
}

#[test]
fn argument_fragments_concatenate_to_the_arguments() {
    let call = ToolCall { name: "f".into(), arguments: vec![("a".into(), json!(1)), ("b".into(), json!({"x": [true, null]}))] };
    assert_eq!(call.argument_fragments(), [r#"{"a": 1"#, r#", "b": {"x": [true, null]}"#, "}"]);
    assert_eq!(call.arguments_json(), r#"{"a": 1, "b": {"x": [true, null]}}"#);
}

#[test]
fn typed_value_follows_the_schema() {
    let typed = |raw: &str, schema: Value| typed_value(raw, Some(&schema));
    assert_eq!(typed("12", json!({"type": "integer"})), json!(12));
    assert_eq!(typed("12.5", json!({"type": "integer"})), json!(12.5));
    assert_eq!(typed(" 1e3 ", json!({"type": "number"})), json!(1000.0));
    assert_eq!(typed("FALSE", json!({"type": "boolean"})), json!(false));
    assert_eq!(typed("12", json!({"type": "string"})), json!("12"));
    assert_eq!(typed_value("12", None), json!("12"));
    assert_eq!(typed("[1]", json!({"items": {}})), json!([1]));
    assert_eq!(typed("{\"a\":1}", json!({"properties": {}})), json!({"a": 1}));
    assert_eq!(typed("None", json!({"type": ["null", "string"]})), Value::Null);
    assert_eq!(typed("x", json!({"enum": ["x", "y"]})), json!("x"));
}
