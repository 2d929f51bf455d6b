//! The official Qwen3.5 chat template rendered by kiln against Hugging Face transformers'
//! own `apply_chat_template` output (tests/data/tokenizer/chat_cases.json, recorded by
//! scripts/make_chat_fixtures.py): byte-exact text, the same token ids, and the same error
//! messages where the template raises; and one-line templates exercising the Python
//! methods and value printing (`method_cases`) rendered the same as HF's jinja2.

use std::path::Path;
use std::sync::OnceLock;

use kiln::tokenizer::{ChatTemplate, ChatTemplateError, Tokenizer};
use serde_json::{json, Map, Value};

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::bundled().unwrap())
}

fn official_template() -> ChatTemplate {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/qwen3_5/chat_template.jinja")).unwrap();
    ChatTemplate::new(&src).unwrap()
}

fn cases() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer/chat_cases.json");
    let doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

#[test]
fn python_methods_render_like_hf() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer/chat_cases.json");
    let doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let vars = doc["method_vars"].as_object().unwrap();
    let cases = doc["method_cases"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let t = ChatTemplate::new(case["template"].as_str().unwrap()).unwrap();
        let got = t.render(&json!([{"role": "user", "content": "x"}]), None, false, vars).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(got, case["rendered"].as_str().unwrap(), "{name}");
    }
}

fn render_case(t: &ChatTemplate, case: &Value) -> anyhow::Result<String> {
    let tools = case.get("tools").filter(|v| !v.is_null());
    let agp = case["add_generation_prompt"].as_bool().unwrap();
    t.render(&case["messages"], tools, agp, case["kwargs"].as_object().unwrap())
}

#[test]
fn renders_byte_exact_like_hf() {
    let t = official_template();
    let cases = cases();
    assert!(cases.len() >= 20);
    let mut rendered_cases = 0;
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let got = render_case(&t, case);
        match (case.get("rendered"), case.get("error")) {
            (Some(want), None) => {
                let got = got.unwrap_or_else(|e| panic!("{name}: {e:#}"));
                assert_eq!(got, want.as_str().unwrap(), "{name}");
                rendered_cases += 1;
            }
            (None, Some(msg)) => {
                let err = got.expect_err(name);
                assert_eq!(err.to_string(), msg.as_str().unwrap(), "{name}");
                assert!(matches!(err.downcast_ref::<ChatTemplateError>(), Some(ChatTemplateError::Raised(_))), "{name}");
            }
            _ => panic!("{name}: malformed case"),
        }
    }
    assert!(rendered_cases >= 15);
}

#[test]
fn rendered_cases_tokenize_like_hf() {
    let tok = tok();
    let t = tok.chat_template().expect("bundled template");
    for case in cases().iter().filter(|c| c.get("rendered").is_some()) {
        let name = case["name"].as_str().unwrap();
        let text = render_case(t, case).unwrap();
        let want: Vec<u32> = case["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(&text, false).unwrap(), want, "{name}");
    }
}

#[test]
fn string_tool_arguments_render_like_objects() {
    // OpenAI clients send function.arguments as a JSON string; it must render exactly as
    // the object form HF was given.
    let t = official_template();
    let case = cases().into_iter().find(|c| c["name"] == "tool_call_history_and_responses").unwrap();
    let mut as_strings = case.clone();
    for msg in as_strings["messages"].as_array_mut().unwrap() {
        if let Some(calls) = msg.get_mut("tool_calls").and_then(Value::as_array_mut) {
            for call in calls {
                let args = call["function"]["arguments"].to_string();
                call["function"]["arguments"] = Value::String(args);
            }
        }
    }
    assert_eq!(render_case(&t, &as_strings).unwrap(), case["rendered"].as_str().unwrap());
}

#[test]
fn tools_may_come_through_kwargs() {
    let t = official_template();
    let case = cases().into_iter().find(|c| c["name"] == "tools_system_prompt").unwrap();
    let mut kwargs = Map::new();
    kwargs.insert("tools".into(), case["tools"].clone());
    let got = t.render(&case["messages"], None, true, &kwargs).unwrap();
    assert_eq!(got, case["rendered"].as_str().unwrap());
}

#[test]
fn generation_prompt_and_thinking_switch() {
    let t = official_template();
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let none = Map::new();
    let mut off = Map::new();
    off.insert("enable_thinking".into(), json!(false));
    let base = "<|im_start|>user\nhi<|im_end|>\n";
    assert_eq!(t.render(&msgs, None, false, &none).unwrap(), base);
    assert_eq!(t.render(&msgs, None, true, &none).unwrap(), format!("{base}<|im_start|>assistant\n<think>\n"));
    assert_eq!(t.render(&msgs, None, true, &off).unwrap(), format!("{base}<|im_start|>assistant\n<think>\n\n</think>\n\n"));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let t = official_template();
    let none = Map::new();
    let err = t.render(&json!({"role": "user"}), None, true, &none).unwrap_err();
    assert!(matches!(err.downcast_ref::<ChatTemplateError>(), Some(ChatTemplateError::Input(_))), "{err}");
    let err = t.render(&json!(["hello"]), None, true, &none).unwrap_err();
    assert!(err.to_string().contains("messages[0]"), "{err}");
    let err = t.render(&json!([{"role": "user", "content": 5}]), None, true, &none).unwrap_err();
    assert_eq!(err.to_string(), "Unexpected content type.");
    let err = t.render(&json!([{"role": "user", "content": "x"}]), Some(&json!({"a": 1})), true, &none).unwrap_err();
    assert!(matches!(err.downcast_ref::<ChatTemplateError>(), Some(ChatTemplateError::Input(_))), "{err}");
}
