//! Finding and loading the CUDA libraries before cudarc's first use, so cudarc never panics
//! for a missing one and always uses the file our search chose.
//!
//! cudarc (`dynamic-loading`) opens each library on first use by trying file names in its
//! own order (`libnvrtc.so`, ..., `libnvrtc.so.13`, `libnvrtc.so.12`, ...) and panics when
//! none opens. We search first (see `search`), `dlopen` the chosen file by its full path
//! (RTLD_GLOBAL, never closed), and only then let cudarc in: its by-name `dlopen` of the
//! file's soname (`libnvrtc.so.12` for a CUDA 12.x wheel) matches the loaded object, so a
//! library found only in a wheel folder or a toolkit outside the loader path is the one it
//! uses. cudarc resolves each symbol lazily, by name, so CUDA 12.8/12.9 libraries work
//! with its `cuda-13000` bindings as long as kiln calls nothing 13-only. Checked against
//! the 12.8 files (libnvrtc.so.12 12.8.93, libcublasLt.so.12 12.8.5, cuda.h 12.8): every
//! NVRTC, cuBLASLt and driver function kiln or cudarc's safe layer reaches is there, with
//! the same attribute values and struct sizes; the 13-only ones cudarc binds
//! (`nvrtcGetTileIR`, the bundled-header calls, `cuLogs*`, the v2 batch copies, ...) are
//! never called. CI compiles every kernel with NVRTC 12.8 (scripts/test.sh).

use super::search::{parse_ldconfig, search, where_looked, CudaLib, Env, Found, Place};
use anyhow::{anyhow, bail, Result};
use std::ffi::{c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The machine as the search sees it.
#[derive(Default)]
pub struct SystemEnv {
    cache: OnceLock<Vec<(String, PathBuf)>>,
    python: OnceLock<Vec<PathBuf>>,
}

impl Env for SystemEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn loader_cache(&self) -> Vec<(String, PathBuf)> {
        self.cache
            .get_or_init(|| {
                ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"]
                    .iter()
                    .find_map(|exe| std::process::Command::new(exe).arg("-p").output().ok().filter(|o| o.status.success()))
                    .map(|o| parse_ldconfig(&String::from_utf8_lossy(&o.stdout)))
                    .unwrap_or_default()
            })
            .clone()
    }
    fn python_paths(&self) -> Vec<PathBuf> {
        self.python
            .get_or_init(|| {
                let code = "import sys; print('\\n'.join(p for p in sys.path if p))";
                std::process::Command::new("python3")
                    .args(["-c", code])
                    .stderr(std::process::Stdio::null())
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| {
                        // Wheels install into site-packages (dist-packages on Debian's python).
                        let lines = String::from_utf8_lossy(&o.stdout).lines().map(PathBuf::from).collect::<Vec<_>>();
                        lines.into_iter().filter(|p| p.is_dir() && (p.ends_with("site-packages") || p.ends_with("dist-packages"))).collect()
                    })
                    .unwrap_or_default()
            })
            .clone()
    }
    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }
    fn list_dir(&self, path: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(path).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    }
}

/// A library kiln has loaded: its version and the file it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub lib: CudaLib,
    /// The file cudarc resolves its symbols from.
    pub path: PathBuf,
    pub place: Place,
    /// (major, minor): the CUDA version of the driver API, NVRTC, or cuBLASLt.
    pub version: (u32, u32),
    /// How to print the version (cuBLASLt has a patch level, the driver a package version).
    pub version_text: String,
}

impl Loaded {
    /// One log line: `NVRTC 12.8 from /x/libnvrtc.so.12 (pip wheel)`.
    pub fn line(&self) -> String {
        let name = match self.lib {
            CudaLib::Driver => "CUDA driver",
            CudaLib::Nvrtc => "NVRTC",
            CudaLib::CublasLt => "cuBLASLt",
        };
        let place = match self.place {
            Place::Loader => "library path",
            Place::CudaHome => "CUDA_HOME/CUDA_PATH",
            Place::Toolkit => "CUDA toolkit",
            Place::Wheel => "pip wheel",
        };
        format!("{name} {} from {} ({place})", self.version_text, self.path.display())
    }
}

/// The one sentence for a library that is nowhere.
pub fn not_found_sentence(env: &dyn Env, lib: CudaLib) -> String {
    format!("{} was not found: looked in {}; {}", lib.label(), where_looked(env, lib), lib.provided_by())
}

/// The file names cudarc tries for `lib`, in its order.
pub fn candidate_names(lib: CudaLib) -> Vec<String> {
    cudarc::get_lib_name_candidates(lib.stem())
}

static LOADED: [OnceLock<std::result::Result<Loaded, String>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];

fn slot(lib: CudaLib) -> &'static OnceLock<std::result::Result<Loaded, String>> {
    &LOADED[CudaLib::ALL.iter().position(|l| *l == lib).expect("listed")]
}

/// Finds and loads `lib` once per process; later calls return the same answer. The error
/// is one sentence saying where we looked and what provides the library.
pub fn require(lib: CudaLib) -> Result<&'static Loaded> {
    slot(lib).get_or_init(|| load(&SystemEnv::default(), lib).map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow!("{e}"))
}

/// [`require`] for each of `libs`: the first missing one is the error. Call it before
/// anything of cudarc's touches them (cudarc panics for a library it cannot open).
pub fn require_each(libs: &[CudaLib]) -> Result<()> {
    libs.iter().try_for_each(|l| require(*l).map(|_| ()))
}

/// The libraries loaded so far (for start-up logs).
pub fn loaded() -> Vec<&'static Loaded> {
    CudaLib::ALL.iter().filter_map(|l| slot(*l).get().and_then(|r| r.as_ref().ok())).collect()
}

fn present(lib: CudaLib) -> bool {
    // SAFETY: each only tries to dlopen cudarc's candidate names.
    unsafe {
        match lib {
            CudaLib::Driver => cudarc::driver::sys::is_culib_present(),
            CudaLib::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
            CudaLib::CublasLt => cudarc::cublaslt::sys::is_culib_present(),
        }
    }
}

fn load(env: &dyn Env, lib: CudaLib) -> Result<Loaded> {
    let found = search(env, lib, &candidate_names(lib), true);
    let Some(Found { path, place }) = found.first().cloned() else {
        bail!("{}", not_found_sentence(env, lib));
    };
    // SAFETY: loading a CUDA library runs its initialisers, which is what cudarc would do
    // by name anyway. RTLD_GLOBAL keeps it visible; the handle is leaked so it never unloads.
    let handle = unsafe {
        libloading::os::unix::Library::open(
            Some(&path),
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
        )
    }
    .map_err(|e| anyhow!("{} was found at {} but does not load ({e}); {}", lib.label(), path.display(), lib.provided_by()))?;
    std::mem::forget(handle);
    if !present(lib) {
        bail!(
            "{} at {} was loaded but its file name is none of those kiln's CUDA bindings open ({}); \
             add its folder to LD_LIBRARY_PATH",
            lib.label(),
            path.display(),
            candidate_names(lib).join(", ")
        );
    }
    let (version, version_text, symbol) = query_version(lib)?;
    // The file cudarc really resolved its symbol from: the loader may have preferred
    // another by name (then that one is what runs, and what we report).
    let path = symbol.and_then(file_of).unwrap_or(path);
    let version_text = match lib {
        CudaLib::Driver => match driver_package_version(&path) {
            Some(pkg) => format!("{version_text} (driver {pkg})"),
            None => version_text,
        },
        _ => version_text,
    };
    Ok(Loaded { lib, path, place, version, version_text })
}

/// (version, text, address of a symbol cudarc resolved) through cudarc itself.
fn query_version(lib: CudaLib) -> Result<((u32, u32), String, Option<*const c_void>)> {
    // SAFETY: `present(lib)` held, so cudarc's `culib()` finds the library and does not
    // panic; each call passes valid out-pointers.
    unsafe {
        match lib {
            CudaLib::Driver => {
                let mut v = 0;
                let r = cudarc::driver::sys::cuDriverGetVersion(&mut v);
                if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
                    bail!("the NVIDIA driver library loaded but cuDriverGetVersion failed ({r:?}); reinstall the driver");
                }
                let (a, b) = ((v / 1000) as u32, ((v % 1000) / 10) as u32);
                let sym = cudarc::driver::sys::culib().get::<*const c_void>(b"cuDriverGetVersion").ok().map(|s| *s);
                Ok(((a, b), format!("{a}.{b}"), sym))
            }
            CudaLib::Nvrtc => {
                let (mut a, mut b) = (0, 0);
                let r = cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b);
                if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
                    bail!("NVRTC loaded but nvrtcVersion failed ({r:?})");
                }
                let sym = cudarc::nvrtc::sys::culib().get::<*const c_void>(b"nvrtcVersion").ok().map(|s| *s);
                Ok(((a as u32, b as u32), format!("{a}.{b}"), sym))
            }
            CudaLib::CublasLt => {
                // CUBLAS_VERSION = major * 10000 + minor * 100 + patch.
                let v = cudarc::cublaslt::sys::cublasLtGetVersion();
                let (a, b, c) = ((v / 10000) as u32, ((v / 100) % 100) as u32, (v % 100) as u32);
                let sym = cudarc::cublaslt::sys::culib().get::<*const c_void>(b"cublasLtGetVersion").ok().map(|s| *s);
                Ok(((a, b), format!("{a}.{b}.{c}"), sym))
            }
        }
    }
}

/// The file a loaded symbol lives in (`dladdr`).
fn file_of(addr: *const c_void) -> Option<PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables; `info` is a valid out-pointer.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(name.to_string_lossy().into_owned()))
}

/// `libcuda.so.1 -> libcuda.so.570.124.06`: the driver package version.
fn driver_package_version(path: &Path) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    let name = real.file_name()?.to_str()?;
    let v = name.strip_prefix("libcuda.so.")?;
    (v.contains('.')).then(|| v.to_string())
}
