//! The search order, the "not found" sentence and the GPU decision, on fake folders with
//! fake `.so` files and fake device facts (no driver, no GPU needed).

use super::load::{candidate_names, not_found_sentence};
use super::probe::{usable_gpu, DeviceFacts, GpuInfo};
use super::search::{parse_ldconfig, search, soname_major, CudaLib, Env, Found, Place};
use crate::plan::Arch;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A machine inside a temp dir: absolute paths map to `root/<path>`.
struct FakeEnv {
    root: tempfile::TempDir,
    vars: HashMap<String, String>,
    cache: Vec<(String, PathBuf)>,
    python: Vec<PathBuf>,
    /// How often python3 was asked (it costs a process start).
    python_calls: std::cell::Cell<usize>,
}

impl FakeEnv {
    fn new() -> Self {
        FakeEnv { root: tempfile::tempdir().unwrap(), vars: HashMap::new(), cache: vec![], python: vec![], python_calls: 0.into() }
    }
    fn real(&self, p: &Path) -> PathBuf {
        self.root.path().join(p.strip_prefix("/").unwrap_or(p))
    }
    /// Creates an (empty) fake library file.
    fn touch(&self, p: &str) -> PathBuf {
        let real = self.real(Path::new(p));
        std::fs::create_dir_all(real.parent().unwrap()).unwrap();
        std::fs::write(&real, b"\x7fELF fake").unwrap();
        PathBuf::from(p)
    }
    fn var(mut self, k: &str, v: &str) -> Self {
        self.vars.insert(k.into(), v.into());
        self
    }
}

impl Env for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn loader_cache(&self) -> Vec<(String, PathBuf)> {
        self.cache.clone()
    }
    fn python_paths(&self) -> Vec<PathBuf> {
        self.python_calls.set(self.python_calls.get() + 1);
        self.python.clone()
    }
    fn is_file(&self, path: &Path) -> bool {
        self.real(path).is_file()
    }
    fn list_dir(&self, path: &Path) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(self.real(path)) else { return vec![] };
        rd.flatten().map(|e| path.join(e.file_name())).collect()
    }
}

fn found(env: &FakeEnv, lib: CudaLib) -> Vec<Found> {
    search(env, lib, &candidate_names(lib), false)
}

fn first(env: &FakeEnv, lib: CudaLib) -> Option<(String, Place)> {
    found(env, lib).first().map(|f| (f.path.display().to_string(), f.place))
}

const SITE: &str = "/venv/lib/python3.11/site-packages";

#[test]
fn cudarc_tries_the_sonames_of_cuda_12_and_13() {
    // With feature cuda-13000 cudarc's names include both majors, so a 12.8/12.9 library
    // preloaded by path is matched by its soname.
    for lib in [CudaLib::Nvrtc, CudaLib::CublasLt] {
        let names = candidate_names(lib);
        for major in [13, 12] {
            let n = format!("lib{}.so.{major}", lib.stem());
            assert!(names.contains(&n), "{n} not in {names:?}");
        }
    }
    assert!(candidate_names(CudaLib::Driver).contains(&"libcuda.so.1".to_string()));
}

#[test]
fn the_search_order_is_loader_cuda_home_toolkit_wheels() {
    let mut env = FakeEnv::new();
    env.python = vec![PathBuf::from(SITE)];
    let wheel = env.touch(&format!("{SITE}/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"));
    let cu13 = env.touch(&format!("{SITE}/nvidia/cu13/lib/libnvrtc.so.13"));
    // Step 4: the wheels, CUDA 13's shared folder before CUDA 12's per-package one.
    assert_eq!(first(&env, CudaLib::Nvrtc), Some((cu13.display().to_string(), Place::Wheel)));
    std::fs::remove_file(env.real(&cu13)).unwrap();
    assert_eq!(first(&env, CudaLib::Nvrtc), Some((wheel.display().to_string(), Place::Wheel)));
    // Step 3: a toolkit under /usr/local beats the wheel; /usr/local/cuda before cuda-12.9.
    let t129 = env.touch("/usr/local/cuda-12.9/targets/x86_64-linux/lib/libnvrtc.so.12");
    assert_eq!(first(&env, CudaLib::Nvrtc), Some((t129.display().to_string(), Place::Toolkit)));
    let t128 = env.touch("/usr/local/cuda-12.8/lib64/libnvrtc.so.12");
    assert_eq!(first(&env, CudaLib::Nvrtc).unwrap().0, t129.display().to_string(), "newest toolkit first");
    let default = env.touch("/usr/local/cuda/lib64/libnvrtc.so.12");
    assert_eq!(first(&env, CudaLib::Nvrtc).unwrap().0, default.display().to_string());
    // Step 2: CUDA_HOME beats /usr/local.
    let mut env = env.var("CUDA_HOME", "/opt/cuda-12.8");
    let home = env.touch("/opt/cuda-12.8/targets/sbsa-linux/lib/libnvrtc.so.12");
    assert_eq!(first(&env, CudaLib::Nvrtc), Some((home.display().to_string(), Place::CudaHome)));
    // Step 1: the loader cache, then LD_LIBRARY_PATH before it.
    env.cache = vec![("libnvrtc.so.12".into(), env.touch("/usr/lib/x86_64-linux-gnu/libnvrtc.so.12"))];
    assert_eq!(first(&env, CudaLib::Nvrtc), Some(("/usr/lib/x86_64-linux-gnu/libnvrtc.so.12".into(), Place::Loader)));
    let ld = env.touch("/ld/libnvrtc.so.12");
    let env = env.var("LD_LIBRARY_PATH", "/nowhere:/ld");
    assert_eq!(first(&env, CudaLib::Nvrtc), Some((ld.display().to_string(), Place::Loader)));
    // Every candidate is listed once, in order.
    let all: Vec<PathBuf> = found(&env, CudaLib::Nvrtc).into_iter().map(|f| f.path).collect();
    let want = vec![
        ld,
        PathBuf::from("/usr/lib/x86_64-linux-gnu/libnvrtc.so.12"),
        home,
        default,
        t129,
        t128,
        wheel,
    ];
    assert_eq!(all, want);
    // The loader's choice ends the search: python3 is not asked.
    env.python_calls.set(0);
    let first = search(&env, CudaLib::Nvrtc, &candidate_names(CudaLib::Nvrtc), true);
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(env.python_calls.get(), 0);
}

#[test]
fn on_the_loader_path_names_come_in_cudarcs_order() {
    // dlopen tries each name through the whole path: the unversioned name in the cache
    // beats `.so.13` in LD_LIBRARY_PATH, exactly as cudarc's by-name load would.
    let mut env = FakeEnv::new().var("LD_LIBRARY_PATH", "/ld");
    env.touch("/ld/libnvrtc.so.13");
    env.cache = vec![("libnvrtc.so".into(), env.touch("/usr/lib/libnvrtc.so"))];
    assert_eq!(first(&env, CudaLib::Nvrtc).unwrap().0, "/usr/lib/libnvrtc.so");
}

#[test]
fn the_driver_stub_is_never_the_driver_and_wheels_hold_no_driver() {
    // Build containers often put the toolkit's link-time stub on LD_LIBRARY_PATH.
    let mut env = FakeEnv::new().var("CUDA_HOME", "/usr/local/cuda").var("LD_LIBRARY_PATH", "/usr/local/cuda/lib64/stubs");
    env.python = vec![PathBuf::from(SITE)];
    env.touch("/usr/local/cuda/lib64/stubs/libcuda.so");
    env.touch(&format!("{SITE}/nvidia/cu13/lib/libcuda.so.1"));
    env.touch("/usr/local/cuda/targets/x86_64-linux/lib/stubs/libcuda.so");
    assert_eq!(first(&env, CudaLib::Driver), None);
    let real = env.touch("/usr/lib64/libcuda.so.1");
    assert_eq!(first(&env, CudaLib::Driver), Some((real.display().to_string(), Place::Loader)));
}

#[test]
fn cublaslt_is_found_in_the_cuda12_and_cuda13_wheels() {
    let mut env = FakeEnv::new();
    env.python = vec![PathBuf::from("/nope"), PathBuf::from(SITE)];
    let cu12 = env.touch(&format!("{SITE}/nvidia/cublas/lib/libcublasLt.so.12"));
    assert_eq!(first(&env, CudaLib::CublasLt), Some((cu12.display().to_string(), Place::Wheel)));
    assert_eq!(soname_major(&cu12), Some(12));
    let cu13 = env.touch(&format!("{SITE}/nvidia/cu13/lib/libcublasLt.so.13"));
    assert_eq!(first(&env, CudaLib::CublasLt).unwrap().0, cu13.display().to_string());
}

#[test]
fn not_found_is_one_sentence_naming_where_and_the_package() {
    let mut env = FakeEnv::new().var("LD_LIBRARY_PATH", "/a:/b");
    env.python = vec![PathBuf::from(SITE)];
    env.touch("/usr/local/cuda-12.8/lib64/libcufft.so.11");
    let s = not_found_sentence(&env, CudaLib::Nvrtc);
    assert!(!s.contains('\n') && !s.contains(". "), "{s}");
    assert!(s.starts_with("NVRTC (libnvrtc) was not found: looked in LD_LIBRARY_PATH (/a:/b), the loader cache"), "{s}");
    for want in [
        "CUDA_HOME/CUDA_PATH (unset)",
        "/usr/local/cuda-12.8 (targets/*/lib, lib64)",
        &format!("nvidia/cu13/lib and nvidia/cuda_nvrtc/lib under python3's site-packages ({SITE})"),
        "pip install nvidia-cuda-nvrtc-cu12==12.8.*",
        "apt install cuda-nvrtc-12-8",
    ] {
        assert!(s.contains(want), "{want:?} missing from: {s}");
    }
    let s = not_found_sentence(&FakeEnv::new(), CudaLib::CublasLt);
    for want in ["cuBLASLt (libcublasLt) was not found", "LD_LIBRARY_PATH (unset)", "/usr/local/cuda* (none installed)", "(no python3 on PATH)", "pip install nvidia-cublas-cu12", "apt install libcublas-12-8"] {
        assert!(s.contains(want), "{want:?} missing from: {s}");
    }
    let s = not_found_sentence(&FakeEnv::new(), CudaLib::Driver);
    assert!(s.starts_with("the NVIDIA driver (libcuda) was not found") && s.contains("--gpus all") && !s.contains("python3"), "{s}");
}

#[test]
fn ldconfig_output_is_parsed() {
    let text = "3 libs found in cache `/etc/ld.so.cache'\n\
                \tlibnvrtc.so.12 (libc6,x86-64) => /usr/local/cuda/targets/x86_64-linux/lib/libnvrtc.so.12\n\
                \tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n";
    let p = parse_ldconfig(text);
    assert_eq!(p.len(), 2);
    assert_eq!(p[1], ("libcuda.so.1".to_string(), PathBuf::from("/usr/lib/x86_64-linux-gnu/libcuda.so.1")));
}

fn gpu(name: &str, cc: (i32, i32)) -> GpuInfo {
    GpuInfo { index: 0, name: name.into(), compute_capability: cc, total_mib: 80_000 }
}

fn facts(gpus: Vec<GpuInfo>) -> DeviceFacts {
    DeviceFacts { driver: Ok((12, 8)), init_error: None, gpus, visible_devices: None }
}

fn refusal(f: &DeviceFacts) -> String {
    let e = usable_gpu(f).unwrap_err().to_string();
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn a_usable_gpu_is_hopper_or_blackwell() {
    assert_eq!(usable_gpu(&facts(vec![gpu("NVIDIA H200", (9, 0))])).unwrap().1, Arch::Sm90a);
    assert_eq!(usable_gpu(&facts(vec![gpu("NVIDIA B200", (10, 0)), gpu("x", (8, 0))])).unwrap().1, Arch::Sm100a);
}

#[test]
fn each_unusable_machine_gets_one_sentence() {
    let no_driver = DeviceFacts { driver: Err("the NVIDIA driver (libcuda) was not found: ...".into()), ..facts(vec![]) };
    assert!(refusal(&no_driver).starts_with("the NVIDIA driver (libcuda) was not found"));
    let e = refusal(&DeviceFacts { init_error: Some("CUDA_ERROR_NO_DEVICE".into()), ..facts(vec![]) });
    assert!(e.contains("CUDA 12.8") && e.contains("CUDA_ERROR_NO_DEVICE") && e.contains("--gpus all"), "{e}");
    let e = refusal(&DeviceFacts { visible_devices: Some("".into()), ..facts(vec![]) });
    assert!(e.contains("sees no GPU (CUDA_VISIBLE_DEVICES="), "{e}");
    let e = refusal(&facts(vec![gpu("NVIDIA A100-SXM4-80GB", (8, 0))]));
    assert_eq!(
        e,
        "GPU 0 (NVIDIA A100-SXM4-80GB) cannot run kiln: this GPU has compute capability 8.0, but kiln builds kernels \
         only for sm_90a (compute capability 9.0: H100, H200) and sm_100a (10.0: B200)"
    );
}
