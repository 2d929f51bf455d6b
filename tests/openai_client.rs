//! The `openai` Python client against kiln's HTTP server (tests/python/openai_tools.py):
//! its tool-calling and structured-output (`parse` with a pydantic model) examples on a
//! scripted model (the real server with a backend that writes a chosen reply, see
//! `common/scripted.rs`), and tools and `response_format` requests on the demo model
//! (real tokenizer and template, random weights).
//!
//! Needs a python with `openai`: `$KILN_TEST_PYTHON`, else `target/venv-openai/bin/python`
//! (scripts/test.sh creates it). Without one the tests print "skipped: ..." and pass.

mod common;

use common::scripted::scripted_server;
use common::server::TestServer;
use kiln::backend::Capacity;
use std::path::PathBuf;
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_tools.py");

fn python_with_openai() -> Option<PathBuf> {
    let python = std::env::var_os("KILN_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv-openai/bin/python")));
    let ok = Command::new(&python).args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: no python with the `openai` package at {} (set KILN_TEST_PYTHON or run scripts/test.sh)", python.display());
        return None;
    }
    Some(python)
}

/// Runs the client script off the async runtime (the server answers on its own thread).
async fn run_client(python: PathBuf, base: String, mode: &'static str) {
    let out = tokio::task::spawn_blocking(move || Command::new(python).arg(SCRIPT).arg(base).arg(mode).output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.trim_end().ends_with("ok"), "openai client ({mode}) failed:\n{stdout}\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_tool_calling_and_structured_output_examples_on_a_scripted_model() {
    let Some(python) = python_with_openai() else { return };
    let call = "<tool_call>\n<function=get_current_weather>\n<parameter=location>\nBoston, MA\n</parameter>\n<parameter=unit>\nfahrenheit\n</parameter>\n</function>\n</tool_call>";
    let event = r#"{"name": "Science Fair", "date": "Friday", "participants": ["Alice", "Bob"]}"#;
    let s = scripted_server(&[("<user>", call), ("<tool>", "It is 72 degrees and sunny in Boston."), ("science fair", event)]);
    run_client(python, s.base.clone(), "scripted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_tools_and_json_schema_on_the_demo_model() {
    let Some(python) = python_with_openai() else { return };
    let s = TestServer::demo_with_capacity(Capacity { slots: 2, block_size: 16, kv_blocks: 2 * 128, max_seq_len: 2048 });
    run_client(python, s.base.clone(), "demo").await;
}
