//! NVRTC compilation of the kiln kernels (`kernels/*.cu`, embedded in the binary) to
//! CUBIN for one exact GPU architecture (`sm_90a` on H200, `sm_100a` on B200), with the
//! model's dimensions as compile-time constants. Needs only libnvrtc (no GPU, no
//! driver), found by `libs` (library path, CUDA_HOME, /usr/local/cuda*, pip wheels):
//! `scripts/ci_nvrtc.sh` sets one up on a machine without a CUDA toolkit.

use super::libs::{require, CudaLib};
use crate::config::ModelConfig;
use anyhow::{bail, ensure, Context, Result};
use cudarc::nvrtc::sys as nv;
use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};

/// The architectures an engine plan can be built for.
pub const ARCHES: &[&str] = &["sm_90a", "sm_100a"];

/// SHA-256 of the kernel sources (computed by build.rs); goes into the plan header.
pub const KERNEL_SOURCE_HASH: &str = env!("KILN_KERNEL_HASH");

/// The headers kernel sources include: common.cuh (every module) and gdn_chunk.cuh (the
/// GDN prefill's pre-pass and scan modules).
pub const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../../kernels/common.cuh")),
    ("gdn_chunk.cuh", include_str!("../../../kernels/gdn_chunk.cuh")),
    ("gemm_tiled.cuh", include_str!("../../../kernels/gemm_tiled.cuh")),
];

/// Kernel sources, one CUDA module each: (module name, source).
pub const SOURCES: &[(&str, &str)] = &[
    ("norm", include_str!("../../../kernels/norm.cu")),
    ("gemm", include_str!("../../../kernels/gemm.cu")),
    ("gemm_tiled", include_str!("../../../kernels/gemm_tiled.cu")),
    ("conv", include_str!("../../../kernels/conv.cu")),
    ("gdn_decode", include_str!("../../../kernels/gdn_decode.cu")),
    ("gdn_prefill", include_str!("../../../kernels/gdn_prefill.cu")),
    ("gdn_scan", include_str!("../../../kernels/gdn_scan.cu")),
    ("rope_kv", include_str!("../../../kernels/rope_kv.cu")),
    ("attn_prefill", include_str!("../../../kernels/attn_prefill.cu")),
    ("attn_decode", include_str!("../../../kernels/attn_decode.cu")),
    ("elementwise", include_str!("../../../kernels/elementwise.cu")),
    ("draft_head", include_str!("../../../kernels/draft_head.cu")),
];

/// Kernel knobs kiln-build takes from the environment (numbers; the defaults live in the
/// kernels as `#ifndef`s, docs/kernels.md): `KILN_PF_MAX_ROWS` (the early L2 weight
/// prefetch only in launches of up to that many batch rows, default 16), `KILN_PF_K` (its
/// columns per weight row, 256), `KILN_PF_BUDGET_MB` (its bytes per GEMM, 24), and
/// `KILN_ATTN_V_EARLY` (1: decode attention loads a key group's values with its keys,
/// default 0), and `KILN_PDL_EARLY_ROWS` (decode kernels of up to that many batch rows
/// take the early PDL order, default 16), `KILN_GEMM_REDUCE_IN` (split partials in flight
/// in the register GEMM's last-block sum, default 8; 16 measured slower in session 12),
/// `KILN_GEMM_REG_P` (32-k chunks in flight per warp in the m8/m16 register GEMM, default
/// 4; session 12), `KILN_GEMM_SXW_P` (W chunks in flight per warp in the m16 shared-x
/// kernel's whole-split loop, default 2; session 13), `KILN_GEMM_X_AHEAD` (1: the m8 register
/// GEMM loads x two chunks ahead, the default since session 17; 0 at the chunk).
/// device_run.sh stages `knobs`, `reg_p`, `sxw` and `x_ahead` measure them.
/// `KILN_TIMELINE=1` builds the diagnostic in-graph timeline into every kernel
/// (kernels/common.cuh; `kiln-eval timeline` reads it; stage `timeline`).
pub const BUILD_KNOBS: [&str; 10] = [
    "KILN_PF_MAX_ROWS", "KILN_PF_K", "KILN_PF_BUDGET_MB", "KILN_ATTN_V_EARLY", "KILN_PDL_EARLY_ROWS", "KILN_GEMM_REDUCE_IN", "KILN_GEMM_REG_P", "KILN_GEMM_SXW_P",
    "KILN_GEMM_X_AHEAD", "KILN_TIMELINE",
];

/// The model dimensions the kernels are specialised for (passed as `-D` defines), and
/// the GEMMs' operand type, which fixes the kernels' types as a dimension would.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KernelDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rotary_dim: usize,
    pub rope_theta: f64,
    pub lin_num_k_heads: usize,
    pub lin_num_v_heads: usize,
    pub lin_k_dim: usize,
    pub lin_v_dim: usize,
    pub conv_kernel: usize,
    pub rms_eps: f64,
    /// fp16 GEMM operands (`KILN_GEMM_F16`, kernels/common.cuh, docs/numerics.md): a plan
    /// whose GEMM weights are fp16 (header dtype `f16`); bf16 otherwise.
    pub gemm_f16: bool,
}

impl KernelDims {
    pub fn from_config(c: &ModelConfig) -> Self {
        KernelDims {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            vocab: c.vocab_size,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            rotary_dim: c.rotary_dim,
            rope_theta: c.rope_theta,
            lin_num_k_heads: c.linear_num_key_heads,
            lin_num_v_heads: c.linear_num_value_heads,
            lin_k_dim: c.linear_key_head_dim,
            lin_v_dim: c.linear_value_head_dim,
            conv_kernel: c.conv_kernel,
            rms_eps: c.rms_norm_eps,
            gemm_f16: false,
        }
    }

    /// Qwen3.5-4B's text model.
    pub fn qwen3_5_4b() -> Self {
        KernelDims {
            hidden: 2560,
            intermediate: 9216,
            vocab: 248320,
            num_heads: 16,
            num_kv_heads: 4,
            head_dim: 256,
            rotary_dim: 64,
            rope_theta: 1e7,
            lin_num_k_heads: 16,
            lin_num_v_heads: 32,
            lin_k_dim: 128,
            lin_v_dim: 128,
            conv_kernel: 4,
            rms_eps: 1e-6,
            gemm_f16: false,
        }
    }

    /// Gated DeltaNet conv/qkv channels: q | k | v.
    pub fn conv_dim(&self) -> usize {
        2 * self.lin_num_k_heads * self.lin_k_dim + self.lin_num_v_heads * self.lin_v_dim
    }

    /// What the kernels assume of the dimensions; an error names the first violation.
    pub fn validate(&self) -> Result<()> {
        let d = self;
        let g = d.num_heads / d.num_kv_heads.max(1);
        let checks: [(bool, &str); 12] = [
            (d.hidden > 0 && d.hidden.is_multiple_of(8), "hidden_size must be a positive multiple of 8"),
            (d.intermediate.is_multiple_of(8), "intermediate_size must be a multiple of 8"),
            (d.num_kv_heads > 0 && d.num_heads.is_multiple_of(d.num_kv_heads), "num_heads must be a multiple of num_kv_heads"),
            (matches!(g, 1 | 2 | 4 | 8), "the GQA group (num_heads / num_kv_heads) must be 1, 2, 4 or 8"),
            (d.head_dim.is_multiple_of(32) && d.head_dim > 0 && d.head_dim <= 256, "head_dim must be a multiple of 32, at most 256"),
            (d.rotary_dim.is_multiple_of(2) && d.rotary_dim <= d.head_dim, "rotary_dim must be even and at most head_dim"),
            (d.lin_num_k_heads > 0 && d.lin_num_v_heads.is_multiple_of(d.lin_num_k_heads), "linear value heads must be a multiple of key heads"),
            (d.lin_k_dim.is_multiple_of(16) && d.lin_k_dim > 0, "linear_key_head_dim must be a positive multiple of 16"),
            (d.lin_v_dim.is_multiple_of(32) && d.lin_v_dim > 0 && d.lin_v_dim <= 256, "linear_value_head_dim must be a multiple of 32, at most 256"),
            ((2..=8).contains(&d.conv_kernel), "linear_conv_kernel_dim must be between 2 and 8"),
            (d.vocab > 0 && d.vocab < i32::MAX as usize, "vocab_size out of range"),
            (d.rms_eps > 0.0 && d.rope_theta > 0.0, "rms_norm_eps and rope_theta must be positive"),
        ];
        for (ok, what) in checks {
            ensure!(ok, "kernel dimensions: {what} ({d:?})");
        }
        Ok(())
    }

    /// The `-D` defines of this shape.
    pub fn defines(&self) -> Vec<String> {
        let d = self;
        let mut v = vec![
            format!("-DHIDDEN={}", d.hidden),
            format!("-DINTER={}", d.intermediate),
            format!("-DVOCAB={}", d.vocab),
            format!("-DNUM_HEADS={}", d.num_heads),
            format!("-DNUM_KV_HEADS={}", d.num_kv_heads),
            format!("-DHEAD_DIM={}", d.head_dim),
            format!("-DROTARY_DIM={}", d.rotary_dim),
            format!("-DROPE_THETA={:e}", d.rope_theta),
            format!("-DLIN_NK={}", d.lin_num_k_heads),
            format!("-DLIN_NV={}", d.lin_num_v_heads),
            format!("-DLIN_DK={}", d.lin_k_dim),
            format!("-DLIN_DV={}", d.lin_v_dim),
            format!("-DCONV_K={}", d.conv_kernel),
            format!("-DRMS_EPS={:e}f", d.rms_eps as f32),
        ];
        if d.gemm_f16 {
            v.push("-DKILN_GEMM_F16=1".into());
            v.push(format!("-DGOP_DOWN_LOG2={}", crate::plan::layout::DOWN_SCALE_LOG2));
        }
        v
    }
}

/// One compiled kernel module.
#[derive(Clone, Debug)]
pub struct CompiledModule {
    pub name: String,
    pub cubin: Vec<u8>,
}

/// Whether libnvrtc was found and loaded (see `libs`; the first call searches).
pub fn nvrtc_available() -> bool {
    require(CudaLib::Nvrtc).is_ok()
}

/// NVRTC's (major, minor) version; the error says where NVRTC was looked for.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    let (a, b) = require(CudaLib::Nvrtc)?.version;
    Ok((a as i32, b as i32))
}

fn has_bf16_header(dir: &Path) -> bool {
    dir.join("cuda_bf16.h").is_file()
}

/// The CUDA include folder holding cuda_bf16.h: env KILN_CUDA_INCLUDE, else the headers
/// that came with the NVRTC in use (`targets/*/include` or `include` of its toolkit; the
/// `nvidia/cu13/include` or `nvidia/cuda_runtime/include` wheel beside its wheel), else
/// /usr/local/cuda/include (or $CUDA_HOME/include), else the pip wheel's
/// `nvidia/cu13/include` inside the venv named by KILN_NVRTC_VENV or VIRTUAL_ENV, else
/// the venv scripts/ci_nvrtc.sh makes (target/venv-nvrtc).
pub fn find_cuda_include() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_CUDA_INCLUDE") {
        let p = PathBuf::from(p);
        if has_bf16_header(&p) {
            return Some(p);
        }
    }
    if let Ok(nvrtc) = require(CudaLib::Nvrtc) {
        if let Some(p) = headers_beside(&nvrtc.path).into_iter().find(|p| has_bf16_header(p)) {
            return Some(p);
        }
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = std::env::var_os(var) {
            roots.push(PathBuf::from(p).join("include"));
        }
    }
    roots.push(PathBuf::from("/usr/local/cuda/include"));
    if let Some(p) = roots.into_iter().find(|p| has_bf16_header(p)) {
        return Some(p);
    }
    let mut venvs: Vec<PathBuf> = ["KILN_NVRTC_VENV", "VIRTUAL_ENV"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .collect();
    venvs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv-nvrtc"));
    for venv in venvs {
        let Ok(rd) = std::fs::read_dir(venv.join("lib")) else { continue };
        for e in rd.flatten() {
            let inc = e.path().join("site-packages/nvidia/cu13/include");
            if has_bf16_header(&inc) {
                return Some(inc);
            }
        }
    }
    None
}

/// Where the headers matching the NVRTC at `lib` would be (same release, so the headers
/// and the compiler agree).
pub fn headers_beside(lib: &Path) -> Vec<PathBuf> {
    let Some(dir) = lib.parent() else { return vec![] };
    let mut out = vec![];
    if let Some(up) = dir.parent() {
        out.push(up.join("include")); // <toolkit>/lib64 -> include, targets/x/lib -> targets/x/include, cu13/lib -> cu13/include
        if dir.ends_with("cuda_nvrtc/lib") {
            if let Some(nvidia) = up.parent() {
                out.push(nvidia.join("cuda_runtime/include")); // the nvidia-cuda-runtime-cu12 wheel
            }
        }
    }
    out
}

/// The architecture to compile for on a device of this compute capability.
pub fn arch_for_compute_capability(major: i32, minor: i32) -> Option<&'static str> {
    match (major, minor) {
        (9, 0) => Some("sm_90a"),
        (10, 0) => Some("sm_100a"),
        _ => None,
    }
}

fn check_arch(arch: &str) -> Result<()> {
    let ok = arch
        .strip_prefix("sm_")
        .map(|r| {
            let digits = r.strip_suffix('a').unwrap_or(r);
            !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
        })
        .unwrap_or(false);
    ensure!(ok, "unknown GPU architecture `{arch}` (expected e.g. sm_90a or sm_100a)");
    Ok(())
}

/// Compiles every kernel module for `arch` ("sm_90a", "sm_100a", ...). `include_dirs`
/// must hold cuda_bf16.h; when empty, `find_cuda_include()` is used. Modules compile in
/// parallel. An error names the module and carries NVRTC's log.
pub fn compile_all(arch: &str, dims: &KernelDims, include_dirs: &[PathBuf]) -> Result<Vec<CompiledModule>> {
    check_arch(arch)?;
    dims.validate()?;
    require(CudaLib::Nvrtc)?;
    let mut incs: Vec<PathBuf> = include_dirs.to_vec();
    if incs.is_empty() {
        incs.extend(find_cuda_include());
    }
    ensure!(
        incs.iter().any(|p| has_bf16_header(p)),
        "no CUDA include folder with cuda_bf16.h found (set KILN_CUDA_INCLUDE; scripts/ci_nvrtc.sh prints it)"
    );
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(SOURCES.len());
    let mut out: Vec<Option<Result<CompiledModule>>> = (0..SOURCES.len()).map(|_| None).collect();
    std::thread::scope(|sc| {
        let chunks: Vec<Vec<usize>> = (0..threads).map(|t| (t..SOURCES.len()).step_by(threads).collect()).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|idx| {
                let incs = &incs;
                sc.spawn(move || {
                    idx.into_iter()
                        .map(|i| (i, compile_module(SOURCES[i].0, SOURCES[i].1, arch, dims, incs)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("NVRTC compile thread panicked") {
                out[i] = Some(r);
            }
        }
    });
    out.into_iter().map(|r| r.expect("every module compiled")).collect()
}

/// Compiles one module (`src` may `#include` any of `HEADERS`) to a CUBIN for `arch`.
pub fn compile_module(name: &str, src: &str, arch: &str, dims: &KernelDims, include_dirs: &[PathBuf]) -> Result<CompiledModule> {
    check_arch(arch)?;
    require(CudaLib::Nvrtc)?; // loaded before cudarc's first NVRTC call, which would panic without it
    let c = |s: &str| CString::new(s).context("NUL byte in a kernel source or option");
    let src_c = c(src)?;
    let name_c = c(&format!("{name}.cu"))?;
    let hdr_srcs: Vec<CString> = HEADERS.iter().map(|h| c(h.1)).collect::<Result<_>>()?;
    let hdr_names: Vec<CString> = HEADERS.iter().map(|h| c(h.0)).collect::<Result<_>>()?;
    let headers: Vec<*const c_char> = hdr_srcs.iter().map(|h| h.as_ptr()).collect();
    let header_names: Vec<*const c_char> = hdr_names.iter().map(|h| h.as_ptr()).collect();
    let mut opts: Vec<String> = vec![format!("--gpu-architecture={arch}"), "-std=c++17".into()];
    opts.extend(include_dirs.iter().map(|p| format!("--include-path={}", p.display())));
    opts.extend(dims.defines());
    opts.extend(super::registry::smem_defines(dims));
    // Early PDL triggers (kernels/common.cuh): successors launch at their predecessor's
    // wait and GEMMs prefetch weights into L2 before their own. The default since the H100
    // run of 2026-12-05 (batch 1 -7.6 %, batch 8 -7.5 %, every device test bit-exact);
    // KILN_PDL_EARLY=0 builds the previous kernels.
    let early = std::env::var("KILN_PDL_EARLY").map_or(true, |v| v != "0");
    opts.push(format!("-DKILN_PDL_EARLY={}", early as u8));
    // KILN_ATTN_P_BF16=1 (an experiment, off by default): prefill attention multiplies V by
    // the probabilities' bf16 part only, half its P.V MMAs (device_run.sh stage attn_pbf16
    // measures speed and accuracy).
    if std::env::var("KILN_ATTN_P_BF16").is_ok_and(|v| v == "1") {
        opts.push("-DKILN_ATTN_P_BF16=1".into());
    }
    // KILN_ATTN_Q_BF16=1 (an experiment, off by default): the scores from q's bf16 part only,
    // half the q.k MMAs (device_run.sh stage attn_pbf16 with ATTN_Q=1).
    if std::env::var("KILN_ATTN_Q_BF16").is_ok_and(|v| v == "1") {
        opts.push("-DKILN_ATTN_Q_BF16=1".into());
    }
    // Numeric kernel knobs for measurements (each a `#ifndef` default in the kernels),
    // passed through when set in the environment.
    for name in BUILD_KNOBS {
        if let Some(v) = std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok()) {
            opts.push(format!("-D{name}={v}"));
        }
    }
    // KILN_PTXAS_VERBOSE=1: print ptxas's registers / spills / shared memory per kernel.
    let verbose = std::env::var("KILN_PTXAS_VERBOSE").is_ok_and(|v| v == "1");
    if verbose {
        opts.push("--ptxas-options=-v".into());
    }
    let opts_c: Vec<CString> = opts.iter().map(|o| c(o)).collect::<Result<_>>()?;
    let opt_ptrs: Vec<*const c_char> = opts_c.iter().map(|o| o.as_ptr()).collect();

    unsafe {
        let mut prog: nv::nvrtcProgram = std::ptr::null_mut();
        nv::nvrtcCreateProgram(&mut prog, src_c.as_ptr(), name_c.as_ptr(), headers.len() as i32, headers.as_ptr(), header_names.as_ptr())
            .result()
            .map_err(|e| anyhow::anyhow!("kernel module `{name}`: nvrtcCreateProgram failed: {e:?}"))?;
        let res = nv::nvrtcCompileProgram(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr());
        let log = program_log(prog);
        if verbose {
            eprintln!("{name} ({arch}), NVRTC options {}:\n{}", opts.join(" "), log.trim_end());
        }
        let out = if res != nv::nvrtcResult::NVRTC_SUCCESS {
            Err(anyhow::anyhow!(
                "kernel module `{name}` does not compile for {arch} ({res:?}); NVRTC log:\n{}",
                log.trim_end()
            ))
        } else {
            cubin(prog).map_err(|e| anyhow::anyhow!("kernel module `{name}` for {arch}: {e}"))
        };
        let _ = nv::nvrtcDestroyProgram(&mut prog);
        let cubin = out?;
        // KILN_CUBIN_DIR=dir: keep each module's CUBIN as dir/<module>_<arch>.cubin, for
        // reading the SASS (`cuobjdump -sass`) without a GPU.
        if let Some(dir) = std::env::var_os("KILN_CUBIN_DIR") {
            let path = PathBuf::from(dir).join(format!("{name}_{arch}.cubin"));
            std::fs::write(&path, &cubin).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(CompiledModule { name: name.to_string(), cubin })
    }
}

unsafe fn program_log(prog: nv::nvrtcProgram) -> String {
    let mut n = 0usize;
    if nv::nvrtcGetProgramLogSize(prog, &mut n) != nv::nvrtcResult::NVRTC_SUCCESS || n == 0 {
        return String::new();
    }
    let mut buf = vec![0 as c_char; n];
    if nv::nvrtcGetProgramLog(prog, buf.as_mut_ptr()) != nv::nvrtcResult::NVRTC_SUCCESS {
        return String::new();
    }
    CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
}

unsafe fn cubin(prog: nv::nvrtcProgram) -> Result<Vec<u8>> {
    let mut n = 0usize;
    let r = nv::nvrtcGetCUBINSize(prog, &mut n);
    if r != nv::nvrtcResult::NVRTC_SUCCESS || n == 0 {
        bail!("nvrtcGetCUBINSize: {r:?} (size {n}); was a real architecture (sm_XX) given?");
    }
    let mut buf = vec![0u8; n];
    let r = nv::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char);
    ensure!(r == nv::nvrtcResult::NVRTC_SUCCESS, "nvrtcGetCUBIN: {r:?}");
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::{HEADERS, SOURCES};

    /// The device functions defined in `src` with their bodies: `name(` after a
    /// `__device__` qualifier, the body from the next `{` to its matching `}`.
    fn device_functions(src: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut rest = src;
        while let Some(i) = rest.find("__device__") {
            rest = &rest[i + "__device__".len()..];
            let (Some(paren), Some(brace)) = (rest.find('('), rest.find('{')) else { break };
            let (Some(semi), true) = (rest.find(';'), paren < brace) else { continue };
            if semi < brace && semi < paren {
                continue; // a declaration or a variable, not a definition
            }
            let name = rest[..paren].split(|c: char| !(c.is_alphanumeric() || c == '_')).rfind(|w| !w.is_empty()).unwrap_or("").to_string();
            let mut depth = 0;
            let body = &rest[brace..];
            let end = body.char_indices().find(|&(_, c)| {
                depth += (c == '{') as i32 - (c == '}') as i32;
                depth == 0
            });
            if let Some((e, _)) = end {
                out.push((name, body[1..e].to_string()));
            }
        }
        out
    }

    #[test]
    fn no_device_function_calls_itself() {
        // A recursive helper compiles (with a stack) and runs out of stack on the device:
        // session 14 found a refactored helper that called itself where its body belonged.
        let mut seen = 0;
        for (module, src) in SOURCES.iter().chain(HEADERS) {
            for (name, body) in device_functions(src) {
                if name.is_empty() {
                    continue;
                }
                seen += 1;
                assert!(!calls_itself(&name, &body), "{module}: device function `{name}` calls itself");
            }
        }
        assert!(seen > 50, "found only {seen} device functions: the scan is broken");
        // The scan catches the shape of session 14's bug, and not a call of a longer name.
        let bad = "__device__ __forceinline__ void find_rows(const int* s, int n) {\n    const int t = 0;\n    find_rows(s, n);\n}\n\
                   __device__ void g2(int x) { other_g2(x); }\n";
        let found = device_functions(bad);
        assert!(found.iter().any(|(n, b)| n == "find_rows" && calls_itself(n, b)), "the scan misses a recursive call: {found:?}");
        assert!(found.iter().any(|(n, b)| n == "g2" && !calls_itself(n, b)), "a call of another function counted as recursion: {found:?}");
    }

    fn calls_itself(name: &str, body: &str) -> bool {
        body.match_indices(&format!("{name}(")).any(|(i, _)| body[..i].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_')))
    }
}
