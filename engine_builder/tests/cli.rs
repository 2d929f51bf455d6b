//! kiln-build end to end on a tiny random checkpoint: a plan without kernels (always),
//! with kernels and --compile-only (when NVRTC is available, as in CI after
//! scripts/ci_nvrtc.sh; otherwise reported as skipped), and its errors.

#[path = "../../tests/plan_fixture/mod.rs"]
mod plan_fixture;

use kiln::plan::{Arch, Expected, Plan};
use plan_fixture::{write_model, Opts};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln_build(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln-build")).args(args).output().expect("running kiln-build")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn model(tmp: &Path, o: &Opts) -> PathBuf {
    let dir = tmp.join("Toy-Model");
    std::fs::create_dir_all(&dir).unwrap();
    write_model(&dir, o, 11);
    dir
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn nvrtc_ready() -> bool {
    let ok = kiln::backend::cuda::compile::nvrtc_available() && kiln::backend::cuda::compile::find_cuda_include().is_some();
    if !ok {
        eprintln!("SKIPPED: NVRTC or the CUDA headers are not available (source scripts/ci_nvrtc.sh)");
    }
    ok
}

#[test]
fn builds_a_plan_without_kernels() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path(), &Opts::default());
    let out = tmp.path().join("engines");
    let o = kiln_build(&["--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-kernels"]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    for phase in ["config + tokenizer", "open + check checkpoint", "pack + write", "verify"] {
        assert!(log.contains(phase), "phase `{phase}` timing missing: {log}");
    }
    assert_eq!(files_in(&out), vec!["toy-model.nokernels.plan".to_string()], "{log}");
    let plan = Plan::open(&out.join("toy-model.nokernels.plan")).unwrap();
    plan.check(&Expected::default().with_model_dir(&m).unwrap()).unwrap();
    assert!(plan.header.builder_version.starts_with("kiln-build 0.1.0 ("), "{}", plan.header.builder_version);
    assert_eq!(plan.header.limits.max_context, 262_144);
    assert_eq!(plan.header.limits.max_batch, 256);
    assert!(log.contains("wrote ") && log.contains("MiB/s"), "{log}");
}

#[test]
fn names_and_limits_come_from_the_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path(), &Opts::default());
    let out = tmp.path().join("e");
    let o = kiln_build(&[
        "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-kernels",
        "--name", "custom", "--max-context", "8192", "--max-batch", "16",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let plan = Plan::open(&out.join("custom.plan")).unwrap();
    assert_eq!((plan.header.limits.max_context, plan.header.limits.max_batch), (8192, 16));
}

#[test]
fn a_bad_checkpoint_fails_naming_the_tensor_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path(), &Opts { mtp: false, ..Opts::default() });
    // A config with a wider MLP than the checkpoint's tensors.
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(m.join("config.json")).unwrap()).unwrap();
    cfg["text_config"]["intermediate_size"] = 56.into();
    std::fs::write(m.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let out = tmp.path().join("engines");
    let o = kiln_build(&["--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-kernels"]);
    let log = text(&o);
    assert_eq!(o.status.code(), Some(1), "{log}");
    assert!(log.contains("model.language_model.layers.0.mlp.gate_proj.weight` has shape [48, 32], expected [56, 32]"), "{log}");
    assert!(files_in(&out).is_empty(), "{:?}", files_in(&out));
}

#[test]
fn missing_tokenizer_and_conflicting_flags_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path(), &Opts::default());
    let o = kiln_build(&["--model", m.to_str().unwrap(), "--no-kernels", "--arch", "sm_90a"]);
    assert!(text(&o).contains("--no-kernels builds a plan without kernels, so --arch does not apply"), "{}", text(&o));
    let o = kiln_build(&["--model", m.to_str().unwrap(), "--arch", "sm_75"]);
    assert!(text(&o).contains("unknown GPU architecture `sm_75`"), "{}", text(&o));
    std::fs::remove_file(m.join("tokenizer.json")).unwrap();
    let out = tmp.path().join("engines");
    let o = kiln_build(&["--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-kernels"]);
    assert!(text(&o).contains("has no tokenizer.json"), "{}", text(&o));
    let o = kiln_build(&["--out", out.to_str().unwrap()]);
    assert!(text(&o).contains("--model DIR is required"), "{}", text(&o));
}

#[test]
fn auto_arch_without_a_gpu_says_to_pass_arch() {
    // SAFETY: only probes whether libcuda loads.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        eprintln!("SKIPPED: a CUDA driver is present, so --arch auto would ask the GPU");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path(), &Opts::default());
    let o = kiln_build(&["--model", m.to_str().unwrap(), "--out", tmp.path().join("e").to_str().unwrap()]);
    let log = text(&o);
    assert_eq!(o.status.code(), Some(1), "{log}");
    assert!(log.contains("no CUDA driver found") && log.contains("pass --arch sm_90a or --arch sm_100a"), "{log}");
}

#[test]
fn builds_a_plan_with_kernels_for_a_named_arch() {
    if !nvrtc_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path(), &Opts { kernel_dims: true, ..Opts::default() });
    let out = tmp.path().join("engines");
    let o = kiln_build(&["--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--arch", "sm_100a"]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("compile kernels (sm_100a)"), "{log}");
    let plan = Plan::open(&out.join("toy-model.sm_100a.plan")).unwrap();
    plan.check(&Expected::for_gpu(Arch::Sm100a).with_model_dir(&m).unwrap()).unwrap();
    assert!(!plan.header.kernels.is_empty());
    for k in &plan.header.kernels {
        // Every module is an ELF cubin.
        assert_eq!(&plan.kernel(&k.name).unwrap()[..4], b"\x7fELF", "{}", k.name);
    }
    let e = plan.check(&Expected::for_gpu(Arch::Sm90a)).unwrap_err().to_string();
    assert!(e.contains("was built for sm_100a but this GPU is sm_90a"), "{e}");
}

#[test]
fn compile_only_reports_every_module_for_each_arch() {
    if !nvrtc_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path(), &Opts { kernel_dims: true, ..Opts::default() });
    let o = kiln_build(&["--compile-only", "--arch", "sm_90a,sm_100a", "--model", m.to_str().unwrap()]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    for arch in ["sm_90a", "sm_100a"] {
        assert!(log.contains(&format!("{arch}: ")), "{log}");
    }
    for (name, _) in kiln::backend::cuda::compile::SOURCES {
        assert_eq!(log.matches(&format!("  {name} ")).count(), 2, "module {name}: {log}");
    }
}
