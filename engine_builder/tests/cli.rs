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
fn gemm_operands_f16_builds_and_checks_an_fp16_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path(), &Opts::default());
    let out = tmp.path().join("engines");
    let args = ["--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-kernels", "--gemm-operands", "f16"];
    let o = kiln_build(&args);
    assert!(o.status.success(), "{}", text(&o));
    let plan = Plan::open(&out.join("toy-model.nokernels.plan")).unwrap();
    plan.check(&Expected::default().with_model_dir(&m).unwrap()).unwrap();
    assert!(plan.header.gemm_f16(), "header dtype {}", plan.header.dtype);
    // (--check-only with it: tests/official_layout.rs, which has a real tokenizer.)
    let o = kiln_build(&["--model", m.to_str().unwrap(), "--no-kernels", "--gemm-operands", "fp8"]);
    assert!(!o.status.success() && text(&o).contains("possible values: bf16, f16"), "{}", text(&o));
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
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path(), &Opts::default());
    // No GPU for this process on any machine: no driver here, none visible on a GPU host.
    let o = Command::new(env!("CARGO_BIN_EXE_kiln-build"))
        .args(["--model", m.to_str().unwrap(), "--out", tmp.path().join("e").to_str().unwrap()])
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .unwrap();
    let log = text(&o);
    assert_eq!(o.status.code(), Some(1), "{log}");
    let err = log.lines().find(|l| l.starts_with("kiln-build: ")).unwrap_or_else(|| panic!("{log}"));
    assert!(
        err.contains("the NVIDIA driver (libcuda) was not found") || err.contains("the NVIDIA driver (CUDA "),
        "{err}"
    );
    assert!(err.ends_with("; to build without asking a GPU, pass --arch sm_90a or --arch sm_100a"), "{err}");
    assert!(!log.contains("panicked"), "{log}");
}

/// NVRTC hidden from every place the search looks: one sentence naming the places and
/// the packages that provide it, no panic from the CUDA bindings.
#[test]
fn missing_nvrtc_is_one_sentence_naming_where_and_what_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path(), &Opts { kernel_dims: true, ..Opts::default() });
    let o = Command::new(env!("CARGO_BIN_EXE_kiln-build"))
        .args(["--model", m.to_str().unwrap(), "--out", tmp.path().join("e").to_str().unwrap(), "--arch", "sm_90a"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let log = text(&o);
    if o.status.success() {
        eprintln!("SKIPPED: this machine has NVRTC on its system paths: {log}");
        return;
    }
    let err = log.lines().find(|l| l.starts_with("kiln-build: ")).unwrap_or_else(|| panic!("{log}"));
    assert!(err.starts_with("kiln-build: NVRTC (libnvrtc) was not found: looked in LD_LIBRARY_PATH (unset)"), "{err}");
    assert!(err.contains("pip install nvidia-cuda-nvrtc-cu12==12.8.*") && err.contains("apt install cuda-nvrtc-12-8"), "{err}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(files_in(&tmp.path().join("e")), Vec::<String>::new());
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
    let (a, b) = kiln::backend::cuda::compile::nvrtc_version().unwrap();
    assert_eq!(plan.header.nvrtc_version, Some((a as u32, b as u32)));
    assert!(log.contains(&format!("NVRTC {a}.{b} from ")), "{log}");
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
