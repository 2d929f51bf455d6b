//! The real binaries: `kiln serve` and `launch_server.sh` on the demo model (first log
//! line says so, /health after warm-up, SIGTERM drains or fails in-flight requests
//! explicitly and exits 0), and `kiln generate`.

mod common;

use common::proc::{Proc, KILN};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_serve_demo_then_sigterm_drains_and_exits() {
    let mut cmd = Command::new(KILN);
    cmd.args(["serve", "--port", "0", "--shutdown-grace-secs", "1", "--max-running-requests", "4"]);
    let mut p = Proc::spawn(cmd);
    let base = p.wait_ready();
    assert!(p.log[0].contains("DEMO"), "first log line must say it serves the demo model: {:?}", p.log[0]);
    let c = client();
    assert_eq!(c.get(format!("{base}/health")).send().await.unwrap().status(), 200);
    let r: Value = c
        .post(format!("{base}/generate"))
        .json(&json!({"text": "Hello", "sampling_params": {"temperature": 0, "max_new_tokens": 4}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["meta_info"]["completion_tokens"].as_u64().unwrap() >= 1);
    // An in-flight request far longer than the 1 s grace period.
    let long = tokio::spawn({
        let c = c.clone();
        let url = format!("{base}/generate");
        async move {
            let r = c.post(url).json(&json!({"text": "Hello", "sampling_params": {"max_new_tokens": 3000, "ignore_eos": true}})).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.sigterm();
    let (status, body) = long.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shut down"), "{body}");
    let st = p.wait_exit(Duration::from_secs(15));
    assert!(st.success(), "exit status {st}: {:#?}", p.log);
    assert!(p.log.iter().any(|l| l.contains("SIGTERM")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_server_script_from_another_dir_with_sglang_flags() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/launch_server.sh");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .args(["--host", "127.0.0.1", "--port=0", "--served-model-name", "qwen-demo", "--tp", "1", "--trust-remote-code"])
        .args(["--cuda-graph-max-bs", "8", "--mem-fraction-static", "0.8", "--context-length", "2048", "--api-key", "k"])
        .current_dir(dir.path())
        .env("KILN_BIN", KILN);
    let mut p = Proc::spawn(cmd);
    let base = p.wait_ready();
    assert!(p.log[0].contains("DEMO"), "{:?}", p.log);
    // --cuda-graph-max-bs is kiln's own flag now (the CPU backend has no graphs); an
    // SGLang flag kiln does not know is logged and ignored.
    assert!(p.log.iter().any(|l| l.contains("ignoring unsupported SGLang flag `--trust-remote-code`")), "{:#?}", p.log);
    assert!(!p.log.iter().any(|l| l.contains("--cuda-graph-max-bs")), "{:#?}", p.log);
    let c = client();
    assert_eq!(c.get(format!("{base}/health")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{base}/v1/models")).send().await.unwrap().status(), 401);
    let m: Value = c.get(format!("{base}/v1/models")).bearer_auth("k").send().await.unwrap().json().await.unwrap();
    assert_eq!(m["data"][0]["id"], "qwen-demo");
    assert_eq!(m["data"][0]["max_model_len"], 2048);
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn kiln_generate_prints_the_greedy_text() {
    let out = Command::new(KILN).args(["generate", "--prompt", "The capital of France is", "--max-new-tokens", "6"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tok = kiln::tokenizer::Tokenizer::bundled().unwrap();
    let (cfg, w) = kiln::demo::demo_weights();
    let prompt = tok.encode("The capital of France is", true).unwrap();
    let cap = kiln::backend::Capacity { slots: 1, block_size: 16, kv_blocks: 8, max_seq_len: 64 };
    let mut b = kiln::backend::cpu::CpuBackend::new(cfg, w, cap).unwrap();
    let mut eos = tok.eos_token_ids().to_vec();
    eos.extend(kiln::demo::demo_config().eos_token_ids);
    let ids = kiln::generate::greedy(&mut b, &prompt, 6, &eos, tok.vocab_size()).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'), tok.decode(&ids, true).unwrap());
}

/// `--schedule-policy`: SGLang names kiln does not implement are refused at start-up with
/// one sentence naming the flag, the value and what is supported; the default is reported
/// in /get_server_info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_policy_is_checked_and_reported() {
    let out = Command::new(KILN).args(["serve", "--port", "0", "--schedule-policy", "lpm"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--schedule-policy lpm is not supported") && err.contains("shortest-prefill") && err.contains("fcfs"), "{err}");
    let mut cmd = Command::new(KILN);
    cmd.args(["serve", "--port", "0"]);
    let mut p = Proc::spawn(cmd);
    let base = p.wait_ready();
    let info: Value = client().get(format!("{base}/get_server_info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["schedule_policy"], "shortest-prefill", "{info}");
}
