//! Where the CUDA libraries are looked for, as a pure function of an environment (`Env`:
//! variables, the loader cache, python3's `sys.path`, a file system), so tests run it on
//! fake folders with fake `.so` files.
//!
//! The order (issue 11): (1) `LD_LIBRARY_PATH`, the loader cache and the system folders,
//! exactly as `dlopen` searches them for each name cudarc asks for; (2) `CUDA_HOME` /
//! `CUDA_PATH`; (3) `/usr/local/cuda*`; (4) the `nvidia-*` wheels in python3's
//! site-packages (where torch loads them from). The first file found is the one used.

use std::path::{Path, PathBuf};

/// One of the three CUDA libraries kiln loads at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CudaLib {
    /// libcuda: the NVIDIA driver's user-space library.
    Driver,
    /// libnvrtc: compiles the kernels (kiln-build).
    Nvrtc,
    /// libcublasLt: the prefill GEMMs (kiln serve).
    CublasLt,
}

impl CudaLib {
    pub const ALL: [CudaLib; 3] = [CudaLib::Driver, CudaLib::Nvrtc, CudaLib::CublasLt];

    /// The name cudarc builds its candidate file names from (`lib<stem>.so...`).
    pub fn stem(self) -> &'static str {
        match self {
            CudaLib::Driver => "cuda",
            CudaLib::Nvrtc => "nvrtc",
            CudaLib::CublasLt => "cublasLt",
        }
    }

    /// What to call it in a sentence.
    pub fn label(self) -> &'static str {
        match self {
            CudaLib::Driver => "the NVIDIA driver (libcuda)",
            CudaLib::Nvrtc => "NVRTC (libnvrtc)",
            CudaLib::CublasLt => "cuBLASLt (libcublasLt)",
        }
    }

    /// Folders inside site-packages where the pip wheels put it: CUDA 13 wheels share
    /// `nvidia/cu13/lib`, CUDA 12 wheels have one folder per package.
    pub fn wheel_dirs(self) -> &'static [&'static str] {
        match self {
            CudaLib::Driver => &[],
            CudaLib::Nvrtc => &["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"],
            CudaLib::CublasLt => &["nvidia/cu13/lib", "nvidia/cublas/lib"],
        }
    }

    /// Which package provides it, for the "not found" sentence.
    pub fn provided_by(self) -> &'static str {
        match self {
            CudaLib::Driver => {
                "install the NVIDIA driver (apt install nvidia-driver-580 or newer; 570 is the oldest that runs B200), \
                 or start the container with the GPU exposed (docker run --gpus all)"
            }
            CudaLib::Nvrtc => {
                "install it with pip (pip install nvidia-cuda-nvrtc-cu12==12.8.* nvidia-cuda-runtime-cu12==12.8.*, or \
                 nvidia-cuda-nvrtc nvidia-cuda-runtime for CUDA 13) or apt (apt install cuda-nvrtc-12-8 cuda-cudart-dev-12-8)"
            }
            CudaLib::CublasLt => {
                "install it with pip (pip install nvidia-cublas-cu12, or nvidia-cublas for CUDA 13) or apt \
                 (apt install libcublas-12-8)"
            }
        }
    }
}

/// Which step of the search found a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// LD_LIBRARY_PATH, the loader cache or a system folder: what `dlopen` finds by name.
    Loader,
    /// `$CUDA_HOME` or `$CUDA_PATH`.
    CudaHome,
    /// `/usr/local/cuda*`.
    Toolkit,
    /// A pip wheel in python3's site-packages.
    Wheel,
}

/// A candidate file and where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub place: Place,
}

/// What the search reads of the machine.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
    /// The loader cache (`ldconfig -p`): (file name, path) pairs in the loader's order.
    fn loader_cache(&self) -> Vec<(String, PathBuf)>;
    /// python3's `sys.path` (the python3 on PATH); empty when there is none.
    fn python_paths(&self) -> Vec<PathBuf>;
    fn is_file(&self, path: &Path) -> bool;
    /// The entries of a folder (full paths); empty when it is missing.
    fn list_dir(&self, path: &Path) -> Vec<PathBuf>;
}

/// Folders the loader searches after LD_LIBRARY_PATH and its cache.
pub const SYSTEM_DIRS: &[&str] = &["/lib64", "/usr/lib64", "/lib", "/usr/lib"];

/// The toolkit link-time stub (`.../stubs/libcuda.so`) is never a driver.
fn is_stub(p: &Path) -> bool {
    p.components().any(|c| c.as_os_str() == "stubs")
}

fn split_paths(v: Option<String>) -> Vec<PathBuf> {
    v.map(|s| s.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect()).unwrap_or_default()
}

/// `<root>/targets/*/lib` then `<root>/lib64`, for a CUDA install root.
fn toolkit_lib_dirs(env: &dyn Env, root: &Path) -> Vec<PathBuf> {
    let mut targets: Vec<PathBuf> = env.list_dir(&root.join("targets")).into_iter().map(|t| t.join("lib")).collect();
    targets.sort();
    targets.push(root.join("lib64"));
    targets
}

/// `/usr/local/cuda` first (the system's default), then `/usr/local/cuda-*` newest first.
fn toolkit_roots(env: &dyn Env) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = env
        .list_dir(Path::new("/usr/local"))
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == "cuda" || n.starts_with("cuda-")))
        .collect();
    let version = |p: &PathBuf| -> Vec<u32> {
        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        n.strip_prefix("cuda-").map(|v| v.split('.').map(|x| x.parse().unwrap_or(0)).collect()).unwrap_or_default()
    };
    roots.sort_by(|a, b| version(a).is_empty().cmp(&version(b).is_empty()).reverse().then(version(b).cmp(&version(a))));
    roots
}

/// The folders of steps 2 and 3 (`wheels` false) or of step 4 (`wheels` true), each with
/// its place, in search order.
pub fn folders(env: &dyn Env, lib: CudaLib, wheels: bool) -> Vec<(PathBuf, Place)> {
    let mut out = Vec::new();
    if wheels {
        if !lib.wheel_dirs().is_empty() {
            for site in env.python_paths() {
                out.extend(lib.wheel_dirs().iter().map(|w| (site.join(w), Place::Wheel)));
            }
        }
        return out;
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env.var(var).filter(|v| !v.is_empty()) {
            out.extend(toolkit_lib_dirs(env, Path::new(&root)).into_iter().map(|d| (d, Place::CudaHome)));
        }
    }
    for root in toolkit_roots(env) {
        out.extend(toolkit_lib_dirs(env, &root).into_iter().map(|d| (d, Place::Toolkit)));
    }
    out
}

/// Every file that could be `lib`, best first (with `first_only`, stops after the step that
/// found one, so python3 is only asked when nothing else has the library). `names` are the
/// file names cudarc tries, in its order (`cudarc::get_lib_name_candidates`). Step 1 tries
/// each name through the whole loader path before the next name, as `dlopen(name)` does,
/// so its first hit is the very file cudarc's own by-name load would open.
pub fn search(env: &dyn Env, lib: CudaLib, names: &[String], first_only: bool) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    let push = |path: PathBuf, place: Place, out: &mut Vec<Found>| {
        if !is_stub(&path) && !out.iter().any(|f| f.path == path) {
            out.push(Found { path, place });
        }
    };
    let ld = split_paths(env.var("LD_LIBRARY_PATH"));
    let cache = env.loader_cache();
    for name in names {
        for dir in &ld {
            let p = dir.join(name);
            if env.is_file(&p) {
                push(p, Place::Loader, &mut out);
            }
        }
        for (file, path) in &cache {
            if file == name && env.is_file(path) {
                push(path.clone(), Place::Loader, &mut out);
            }
        }
        for dir in SYSTEM_DIRS {
            let p = Path::new(dir).join(name);
            if env.is_file(&p) {
                push(p, Place::Loader, &mut out);
            }
        }
    }
    for wheels in [false, true] {
        if first_only && !out.is_empty() {
            break;
        }
        for (dir, place) in folders(env, lib, wheels) {
            for name in names {
                let p = dir.join(name);
                if env.is_file(&p) {
                    push(p, place, &mut out);
                }
            }
        }
    }
    out
}

/// Where `search` looked, for the "not found" sentence.
pub fn where_looked(env: &dyn Env, lib: CudaLib) -> String {
    let ld = env.var("LD_LIBRARY_PATH").filter(|v| !v.is_empty());
    let mut parts = vec![format!(
        "LD_LIBRARY_PATH ({}), the loader cache and {}",
        ld.as_deref().unwrap_or("unset"),
        SYSTEM_DIRS.join(", ")
    )];
    let homes: Vec<String> =
        ["CUDA_HOME", "CUDA_PATH"].iter().filter_map(|v| env.var(v).filter(|s| !s.is_empty()).map(|s| format!("{v}={s}"))).collect();
    parts.push(if homes.is_empty() { "CUDA_HOME/CUDA_PATH (unset)".into() } else { homes.join(", ") });
    let roots: Vec<String> = toolkit_roots(env).iter().map(|r| r.display().to_string()).collect();
    parts.push(if roots.is_empty() {
        "/usr/local/cuda* (none installed)".into()
    } else {
        format!("{} (targets/*/lib, lib64)", roots.join(", "))
    });
    if !lib.wheel_dirs().is_empty() {
        let sites = env.python_paths();
        parts.push(if sites.is_empty() {
            "the nvidia wheels of python3 (no python3 on PATH)".into()
        } else {
            let sites: Vec<String> = sites.iter().map(|s| s.display().to_string()).collect();
            format!("{} under python3's site-packages ({})", lib.wheel_dirs().join(" and "), sites.join(", "))
        });
    }
    parts.join(", ")
}

/// Parses `ldconfig -p` output: lines like
/// `\tlibnvrtc.so.12 (libc6,x86-64) => /usr/local/cuda/targets/x86_64-linux/lib/libnvrtc.so.12`.
pub fn parse_ldconfig(text: &str) -> Vec<(String, PathBuf)> {
    text.lines()
        .filter_map(|l| {
            let (left, path) = l.split_once(" => ")?;
            let name = left.split_whitespace().next()?;
            Some((name.to_string(), PathBuf::from(path.trim())))
        })
        .collect()
}

/// The major version in a library's file name (`libnvrtc.so.12` -> 12), if it has one.
pub fn soname_major(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let (_, ver) = name.split_once(".so.")?;
    ver.split('.').next()?.parse().ok()
}
