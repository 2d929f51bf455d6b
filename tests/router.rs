//! Scale-out through SGLang's own router: two `kiln serve` demo-model workers behind
//! `python -m sglang_router.launch_router --policy cache_aware` (installed into
//! target/venv-router by scripts/ci_router.sh, which scripts/test.sh runs). Checks that
//! the router registers both workers from their /health and /get_server_info, reads
//! their /get_load, routes /generate and the OpenAI routes to them unchanged, sends a
//! repeated prompt to the worker that caches it, and fans /flush_cache out to both.

use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The router venv's python, or None (reported as skipped) when it is not installed.
fn router_python() -> Option<PathBuf> {
    let venv = std::env::var_os("KILN_ROUTER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv-router"));
    let py = venv.join("bin/python");
    let ok = Command::new(&py).args(["-c", "import sglang_router"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: sglang-router is not installed in {} (run scripts/ci_router.sh)", venv.display());
    }
    ok.then_some(py)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Child processes, killed when the test ends (passed or not).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(procs: &mut Procs, cmd: &mut Command) {
    procs.0.push(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn"));
}

async fn wait_for(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !ready().await {
        assert!(t0.elapsed() < Duration::from_secs(60), "{what} not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Value {
    let r = client.post(url).json(body).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "POST {url} -> {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {url}: not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kiln_workers_behind_sglang_router() {
    let Some(python) = router_python() else { return };
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut procs = Procs(vec![]);
    let workers: Vec<String> = (0..2).map(|_| format!("http://127.0.0.1:{}", free_port())).collect();
    for url in &workers {
        let port = url.rsplit(':').next().unwrap();
        spawn(&mut procs, Command::new(env!("CARGO_BIN_EXE_kiln")).args(["serve", "--backend", "demo", "--port", port, "--max-running-requests", "4", "--context-length", "1024"]));
    }
    for url in &workers {
        wait_for(url, async || client.get(format!("{url}/health")).send().await.is_ok_and(|r| r.status() == 200)).await;
    }
    let router = format!("http://127.0.0.1:{}", free_port());
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "sglang_router.launch_router", "--policy", "cache_aware", "--host", "127.0.0.1", "--log-level", "warn"])
        // Its metrics port too: the default (29000) is shared by every router on the machine,
        // so a router left from another run would stop this one from starting.
        .args(["--prometheus-port", &free_port().to_string()])
        .args(["--port", router.rsplit(':').next().unwrap(), "--worker-urls"])
        .args(&workers);
    spawn(&mut procs, &mut cmd);
    // Registered and healthy: the router found both through /health and /get_server_info.
    wait_for("the router", async || {
        let Ok(r) = client.get(format!("{router}/workers")).send().await else { return false };
        let w: Value = r.json().await.unwrap_or(Value::Null);
        w["workers"].as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|x| x["is_healthy"] == true))
    })
    .await;

    // /generate through the router equals /generate on a worker (the same demo model).
    let g = json!({"text": "The capital of France is", "sampling_params": {"temperature": 0, "max_new_tokens": 8}});
    let direct = post(&client, &format!("{}/generate", workers[0]), &g).await;
    let routed = post(&client, &format!("{router}/generate"), &g).await;
    assert_eq!(routed["output_ids"], direct["output_ids"]);
    assert_eq!(routed["text"], direct["text"]);
    let c = json!({"model": "kiln-demo", "prompt": "Hello", "max_tokens": 4, "temperature": 0});
    let routed = post(&client, &format!("{router}/v1/completions"), &c).await;
    assert_eq!(routed["choices"][0]["text"], post(&client, &format!("{}/v1/completions", workers[1]), &c).await["choices"][0]["text"]);
    let m = json!({"model": "kiln-demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0});
    assert_eq!(post(&client, &format!("{router}/v1/chat/completions"), &m).await["object"], "chat.completion");

    // The router reads each worker's /get_load (-1 would mean it could not).
    let loads: Value = client.get(format!("{router}/get_loads")).send().await.unwrap().json().await.unwrap();
    let loads = loads["workers"].as_array().expect("workers in /get_loads");
    assert_eq!(loads.len(), 2);
    assert!(loads.iter().all(|l| l["load"].as_i64().is_some_and(|n| n >= 0)), "{loads:?}");

    // cache_aware sends a repeated prompt to the worker that holds its prefix.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let g = json!({"text": long, "sampling_params": {"temperature": 0, "max_new_tokens": 2}});
    let first = post(&client, &format!("{router}/generate"), &g).await;
    let again = post(&client, &format!("{router}/generate"), &g).await;
    assert!(first["meta_info"]["prompt_tokens"].as_u64().unwrap() > 256);
    assert_eq!(again["meta_info"]["cached_tokens"], 256, "{again}");
    assert_eq!(again["output_ids"], first["output_ids"]);

    // /flush_cache through the router reaches both workers.
    let f = client.post(format!("{router}/flush_cache")).send().await.unwrap();
    assert_eq!(f.status(), 200);
    let f: Value = f.json().await.unwrap();
    assert_eq!(f["workers_flushed"], 2, "{f}");
    let after = post(&client, &format!("{router}/generate"), &g).await;
    assert_eq!(after["meta_info"]["cached_tokens"], 0);
    assert_eq!(after["output_ids"], first["output_ids"]);
}
