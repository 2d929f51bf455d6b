//! Where kiln runs and where it refuses (issue 11), through the real binaries and
//! launch_server.sh: an explicit --model-path is never replaced by the demo model (no GPU:
//! one sentence, exit 1; --backend cpu: that model on the CPU), `kiln probe` asks the
//! driver instead of nvidia-smi, finds NVRTC through a pip wheel alone, and a fresh machine
//! without a toolchain is told how to build kiln.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/launch_server.sh");

/// tiny_text (HF-made, with reference greedy ids) plus the bundled tokenizer files.
fn model_dir(tmp: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = tmp.join("tiny-text");
    std::fs::create_dir(&d).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(root.join("tests/fixtures/tiny_text").join(f), d.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(root.join("assets/qwen3_5").join(f), d.join(f)).unwrap();
    }
    d
}

/// No GPU for this process, on any machine: no driver here, none visible on a GPU host.
fn no_gpu(cmd: &mut Command) -> &mut Command {
    cmd.env("CUDA_VISIBLE_DEVICES", "").env_remove("KILN_BUILD_BIN")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The error output is one sentence on one line, with no panic or backtrace.
fn one_sentence(o: &Output) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stdout: {}\nstderr: {e}", String::from_utf8_lossy(&o.stdout));
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{e}");
    assert!(!e.contains("panicked") && !e.contains("RUST_BACKTRACE"), "{e}");
    lines[0].to_string()
}

#[test]
fn an_explicit_model_without_a_gpu_is_refused_never_replaced_by_the_demo() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model_dir(tmp.path());
    let want = format!("kiln does not serve the demo model in place of --model-path {}: pass --backend cpu", m.display());
    let o = no_gpu(Command::new(KILN).args(["serve", "--port", "0", "--model-path"]).arg(&m)).output().unwrap();
    let e = one_sentence(&o);
    assert!(e.starts_with("kiln: error: ") && e.contains(&want), "{e}");
    let o = no_gpu(Command::new("bash").arg(SCRIPT).args(["--port", "0", "--model-path"]).arg(&m))
        .env("KILN_BIN", KILN)
        .env("KILN_ENGINES", tmp.path().join("engines"))
        .output()
        .unwrap();
    let e = one_sentence(&o);
    assert!(e.contains(&want) && !e.contains("DEMO"), "{e}");
    assert!(!tmp.path().join("engines").exists(), "no plan is built without a GPU");
}

#[test]
fn kiln_probe_without_a_gpu_exits_1_with_one_sentence() {
    let o = no_gpu(&mut Command::new(KILN)).arg("probe").output().unwrap();
    let e = one_sentence(&o);
    assert!(
        e.starts_with("kiln: the NVIDIA driver (libcuda) was not found: looked in LD_LIBRARY_PATH")
            || e.starts_with("kiln: the NVIDIA driver (CUDA "),
        "{e}"
    );
    // Every library gets a line: where it came from, or where we looked.
    let out = String::from_utf8_lossy(&o.stdout);
    for lib in ["driver", "NVRTC", "cuBLASLt"] {
        assert!(out.lines().any(|l| l.contains(lib)), "{lib}: {out}");
    }
}

/// The venv scripts/ci_nvrtc.sh makes (NVRTC 13.0 wheel), if this machine has one.
fn nvrtc_venv() -> Option<PathBuf> {
    let v = std::env::var_os("KILN_NVRTC_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv-nvrtc"));
    v.join("bin/python3").exists().then_some(v)
}

#[test]
fn nvrtc_is_found_through_the_wheels_of_python3_on_path_alone() {
    let Some(venv) = nvrtc_venv() else {
        eprintln!("SKIPPED: no NVRTC venv (run scripts/ci_nvrtc.sh)");
        return;
    };
    // Nothing on the loader path, no CUDA_HOME: only the python3 on PATH knows the wheel.
    let path = format!("{}:/usr/bin:/bin", venv.join("bin").display());
    let o = Command::new(KILN)
        .arg("probe")
        .env_clear()
        .env("PATH", path)
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().find(|l| l.starts_with("NVRTC")).unwrap_or_else(|| panic!("{out}{}", stderr(&o)));
    if !line.contains("(pip wheel)") {
        eprintln!("SKIPPED: this machine has NVRTC elsewhere: {line}");
        return;
    }
    assert!(line.starts_with("NVRTC 13.0 from ") && line.contains("/nvidia/cu13/lib/libnvrtc.so.13"), "{line}");
}

#[test]
fn a_fresh_machine_without_a_toolchain_is_told_how_to_build() {
    if Path::new("/usr/bin/cargo").exists() || Path::new("/bin/cargo").exists() {
        eprintln!("SKIPPED: cargo is installed system-wide");
        return;
    }
    // A checkout with no target/ and no cargo on PATH.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(SCRIPT, tmp.path().join("launch_server.sh")).unwrap();
    let o = Command::new("bash")
        .arg(tmp.path().join("launch_server.sh"))
        .args(["--model-path", "/nonexistent", "--port", "0"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let e = one_sentence(&o);
    assert!(e.contains("no cargo to build one: install a Rust toolchain (rustup) and run `cargo build --release`"), "{e}");
}

#[test]
fn backend_cpu_serves_the_named_model_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model_dir(tmp.path());
    let mut child = no_gpu(Command::new("bash").arg(SCRIPT))
        .args(["--port", "0", "--backend", "cpu", "--skip-server-warmup", "--model-path"])
        .arg(&m)
        .env("KILN_BIN", KILN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for r in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
        let tx = tx.clone();
        std::thread::spawn(move || BufReader::new(r).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    }
    let (mut log, mut base) = (vec![], None);
    let t0 = Instant::now();
    while base.is_none() && t0.elapsed() < Duration::from_secs(60) {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            base = l.split("Listening on ").nth(1).map(|u| u.trim().to_string());
            log.push(l);
        }
    }
    let base = base.unwrap_or_else(|| panic!("not ready: {log:#?}"));
    assert!(log[0].contains(&format!("serving {} on the CPU backend", m.display())), "{log:#?}");
    assert!(!log.iter().any(|l| l.contains("DEMO")), "{log:#?}");
    // The greedy ids HF transformers computed for this checkpoint (tests/fixtures).
    let expected: Value = serde_json::from_slice(&std::fs::read("tests/fixtures/tiny_text/expected.json").unwrap()).unwrap();
    let case = &expected["cases"][0];
    let body = json!({"input_ids": case["prompt_ids"], "sampling_params": {"temperature": 0, "max_new_tokens": 8}});
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let r: Value = rt.block_on(async {
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        c.post(format!("{base}/generate")).json(&body).send().await.unwrap().json().await.unwrap()
    });
    let _ = child.kill();
    let _ = child.wait();
    let got: Vec<u64> = r["output_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    let want: Vec<u64> = case["greedy_ids"].as_array().unwrap()[..8].iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(got, want, "{r}");
}

/// launch_server.sh's plan decisions with stand-in binaries (the real `kiln probe` needs a
/// GPU to say yes): a missing plan is built, a plan `kiln probe --plan` refuses (exit 2)
/// is rebuilt with the reason logged, a fitting one is served as is; `--speculative-algorithm
/// auto` is added unless an algorithm is given.
#[test]
fn the_script_builds_a_missing_plan_and_rebuilds_one_that_does_not_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let m = t.join("Fine-Tune");
    std::fs::create_dir(&m).unwrap();
    let calls = t.join("calls");
    // A kiln whose probe finds a GPU and answers --plan with $PLAN_VERDICT; serve just logs.
    let kiln = t.join("kiln");
    std::fs::write(
        &kiln,
        format!(
            "#!/bin/bash\necho \"kiln $*\" >> {c}\nif [[ $1 == probe && $2 == --plan ]]; then\n  \
             [[ $PLAN_VERDICT == 2 ]] && {{ echo 'kiln: x.plan was built from other weights than m; rebuild it with kiln-build' >&2; exit 2; }}\nfi\nexit 0\n",
            c = calls.display()
        ),
    )
    .unwrap();
    let builder = t.join("kiln-build");
    std::fs::write(&builder, format!("#!/bin/bash\necho \"kiln-build $*\" >> {c}\ntouch \"$4/$6.plan\"\n", c = calls.display())).unwrap();
    for f in [&kiln, &builder] {
        Command::new("chmod").arg("+x").arg(f).status().unwrap();
    }
    let engines = t.join("engines");
    let run_with = |verdict: &str, extra: &[&str]| -> (Output, String) {
        let _ = std::fs::remove_file(&calls);
        let o = Command::new("bash")
            .arg(SCRIPT)
            .args(["--model-path", m.to_str().unwrap(), "--port", "0", "--context-length", "4096"])
            .args(extra)
            .env("KILN_BIN", &kiln)
            .env("KILN_BUILD_BIN", &builder)
            .env("KILN_ENGINES", &engines)
            .env("PLAN_VERDICT", verdict)
            .output()
            .unwrap();
        (o, std::fs::read_to_string(&calls).unwrap_or_default())
    };
    let run = |verdict: &str| run_with(verdict, &[]);
    let plan = engines.join("Fine-Tune.plan");
    // With no speculative flag the script asks for the start-up trial (auto).
    let serve = format!("kiln serve --model-path {} --port 0 --context-length 4096 --speculative-algorithm auto --plan {}", m.display(), plan.display());
    let build = format!("kiln-build --model {} --out {} --name Fine-Tune --max-context 4096", m.display(), engines.display());

    let (o, calls_made) = run("0");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(calls_made.lines().collect::<Vec<_>>(), vec!["kiln probe", &build, &serve], "{}", stderr(&o));
    assert!(stderr(&o).contains("(there is no engine plan"), "{}", stderr(&o));

    let (o, calls_made) = run("2");
    assert!(o.status.success(), "{}", stderr(&o));
    let probe_plan = format!("kiln probe --plan {} --model-path {}", plan.display(), m.display());
    assert_eq!(calls_made.lines().collect::<Vec<_>>(), vec!["kiln probe", &probe_plan, &build, &serve]);
    assert!(stderr(&o).contains("(x.plan was built from other weights than m; rebuild it with kiln-build)"), "{}", stderr(&o));

    let (o, calls_made) = run("0");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(calls_made.lines().collect::<Vec<_>>(), vec!["kiln probe", &probe_plan, &serve]);

    // An explicit algorithm (here: none) is passed as given, with no trial asked for.
    let (o, calls_made) = run_with("0", &["--speculative-algorithm", "none"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let explicit = format!("kiln serve --model-path {} --port 0 --context-length 4096 --speculative-algorithm none --plan {}", m.display(), plan.display());
    assert_eq!(calls_made.lines().collect::<Vec<_>>(), vec!["kiln probe", &probe_plan, &explicit]);
}
