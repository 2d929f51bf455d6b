//! Typed launchers for the kiln CUDA kernels (see docs/kernels.md and the header of each
//! `kernels/*.cu` for layouts).
//!
//! - Arguments are raw device pointers (`DevPtr`, a CUdeviceptr) into buffers the caller
//!   owns; launchers allocate nothing on the device and never synchronise, so every
//!   launch can be captured into a CUDA graph on the given stream.
//! - The caller's thread must have the context current (`ctx.bind_to_thread()`); cudarc's
//!   own calls (allocation, copies, module loading) do that themselves.
//! - Grid and block shapes are computed here; a launch with no work (M = 0, ...) is
//!   skipped.

mod attention;
mod gdn;
mod gemm;
mod misc;

pub use attention::{AttnDecode, AttnPrefill, QkNormRope};
pub use gdn::{Conv1d, GdnDecode, GdnPrefill};
pub use gemm::{GemmKind, GemmPlan, GemmScratch, GEMM_MAX_M, TARGET_WARPS_PER_SM};

use super::compile::{self, CompiledModule, KernelDims};
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A device address (CUdeviceptr). 0 is null (optional arguments).
pub type DevPtr = u64;
pub const NULL: DevPtr = 0;

/// Element type of an activation buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 => 2,
        }
    }
    fn idx(self) -> usize {
        match self {
            DType::F32 => 0,
            DType::BF16 => 1,
        }
    }
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
        }
    }
}

/// A row-major matrix view: `ptr` to element (0, 0), `ld` elements between rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mat {
    pub ptr: DevPtr,
    pub ld: usize,
    pub dtype: DType,
}

impl Mat {
    pub fn f32(ptr: DevPtr, ld: usize) -> Self {
        Mat { ptr, ld, dtype: DType::F32 }
    }
    pub fn bf16(ptr: DevPtr, ld: usize) -> Self {
        Mat { ptr, ld, dtype: DType::BF16 }
    }
    /// The same rows starting `cols` columns to the right.
    pub fn cols(self, cols: usize) -> Self {
        Mat { ptr: self.ptr + (cols * self.dtype.size()) as u64, ..self }
    }
    /// The same columns starting `rows` rows down.
    pub fn rows(self, rows: usize) -> Self {
        Mat { ptr: self.ptr + (rows * self.ld * self.dtype.size()) as u64, ..self }
    }
}

/// Pointers to typed locals, as cuLaunchKernel wants its parameters.
macro_rules! params {
    ($($x:ident),* $(,)?) => { [$( &$x as *const _ as *mut ::std::ffi::c_void ),*] };
}
pub(crate) use params;

pub(crate) fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("{what} = {v} does not fit a 32-bit int"))
}

/// Dynamic shared memory of kiln_attn_prefill (mirrors AP_SMEM_BYTES in attn_prefill.cu).
pub(crate) fn attn_prefill_smem(head_dim: usize) -> usize {
    // q hi + lo [64 rows] and k, v [2 buffers][32 keys], bf16 rows padded by 8 (AP_SMEM_BYTES).
    (2 * 64 + 4 * 32) * (head_dim + 8) * 2
}

/// Dynamic shared memory of the staged GEMM (GS_STAGES * NT*8 rows * GS_LD * sizeof(x)).
pub(crate) fn gemm_staged_smem(x: DType, max_m: usize) -> usize {
    let (ld, es) = match x {
        DType::F32 => (64 + 4, 4),
        DType::BF16 => (64 + 32, 2),
    };
    3 * max_m * ld * es
}

/// Every kernel function, loaded from the compiled modules.
pub struct Kernels {
    pub(crate) dims: KernelDims,
    pub(crate) num_sms: u32,
    funcs: HashMap<String, CudaFunction>,
    _modules: Vec<Arc<CudaModule>>,
    pdl: AtomicBool,
}

impl Kernels {
    /// Loads compiled modules (all of `compile::SOURCES`) into `ctx`.
    pub fn load(ctx: &Arc<CudaContext>, modules: &[CompiledModule], dims: &KernelDims) -> Result<Self> {
        dims.validate()?;
        let mut funcs = HashMap::new();
        let mut loaded = Vec::new();
        for (name, _) in compile::SOURCES {
            let m = modules
                .iter()
                .find(|m| m.name == *name)
                .with_context(|| format!("kernel module `{name}` missing from the compiled set"))?;
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(m.cubin.clone()))
                .map_err(|e| anyhow!("loading kernel module `{name}`: {e:?} (built for another GPU architecture?)"))?;
            for f in function_names(name) {
                let func = module
                    .load_function(&f)
                    .map_err(|e| anyhow!("kernel `{f}` not found in module `{name}`: {e:?}"))?;
                funcs.insert(f, func);
            }
            loaded.push(module);
        }
        let mut big_smem: Vec<(String, usize)> = vec![("kiln_attn_prefill".into(), attn_prefill_smem(dims.head_dim))];
        for x in [DType::F32, DType::BF16] {
            for y in ["f32", "bf16"] {
                for m in [32, 64] {
                    big_smem.push((format!("kiln_gemm_sx_x{}_y{y}_m{m}", x.suffix()), gemm_staged_smem(x, m)));
                }
            }
        }
        for d in ["f32", "bf16"] {
            big_smem.push((format!("kiln_gdn_prefill_prep_{d}"), gdn::gdn_prefill_prep_smem(dims.lin_k_dim, dims.lin_v_dim)));
        }
        big_smem.push(("kiln_gdn_prefill_scan".into(), gdn::gdn_prefill_scan_smem(dims.lin_k_dim)));
        for (name, bytes) in big_smem {
            funcs[&name]
                .set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
                .map_err(|e| anyhow!("raising {name}'s shared memory to {bytes} bytes: {e:?}"))?;
        }
        let num_sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| anyhow!("reading the multiprocessor count: {e:?}"))? as u32;
        Ok(Kernels { dims: dims.clone(), num_sms, funcs, _modules: loaded, pdl: AtomicBool::new(false) })
    }

    /// Compiles every kernel for the device's architecture (NVRTC) and loads it.
    pub fn compile_and_load(ctx: &Arc<CudaContext>, dims: &KernelDims) -> Result<Self> {
        let (major, minor) = ctx.compute_capability().map_err(|e| anyhow!("compute capability: {e:?}"))?;
        let arch = compile::arch_for_compute_capability(major, minor)
            .with_context(|| format!("no kernel architecture for compute capability {major}.{minor}"))?;
        let modules = compile::compile_all(arch, dims, &[])?;
        Self::load(ctx, &modules, dims)
    }

    pub fn dims(&self) -> &KernelDims {
        &self.dims
    }

    pub fn num_sms(&self) -> u32 {
        self.num_sms
    }

    /// A loaded kernel by entry-point name (panics if unknown).
    pub fn func(&self, name: &str) -> &CudaFunction {
        &self.funcs[name]
    }

    /// Programmatic dependent launch: when on, every launch lets the kernel start while
    /// its predecessor on the stream finishes (each kiln kernel waits for the
    /// predecessor's writes with griddepcontrol.wait before reading them; the GEMMs first
    /// prefetch weights). Needs sm_90+; also valid inside stream capture. Off by default.
    pub fn set_pdl(&self, on: bool) {
        self.pdl.store(on, Ordering::Relaxed);
    }

    pub fn pdl(&self) -> bool {
        self.pdl.load(Ordering::Relaxed)
    }

    /// Launches `name` on `stream`. `params` point at the kernel's arguments in order.
    pub(crate) fn launch(
        &self,
        name: &str,
        stream: &CudaStream,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        let f = self.funcs.get(name).with_context(|| format!("unknown kernel `{name}`"))?;
        let r = if self.pdl() {
            unsafe {
                let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
                attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
                attr.value.programmaticStreamSerializationAllowed = 1;
                let cfg = sys::CUlaunchConfig {
                    gridDimX: grid.0,
                    gridDimY: grid.1,
                    gridDimZ: grid.2,
                    blockDimX: block,
                    blockDimY: 1,
                    blockDimZ: 1,
                    sharedMemBytes: smem,
                    hStream: stream.cu_stream(),
                    attrs: &mut attr,
                    numAttrs: 1,
                };
                sys::cuLaunchKernelEx(&cfg, f.cu_function(), params.as_mut_ptr(), std::ptr::null_mut()).result()
            }
        } else {
            unsafe {
                cudarc::driver::result::launch_kernel(f.cu_function(), grid, (block, 1, 1), smem, stream.cu_stream(), params)
            }
        };
        r.map_err(|e| anyhow!("launching {name} (grid {grid:?}, block {block}): {e:?}"))
    }
}

/// The entry points of one module (see the header of each .cu file).
fn function_names(module: &str) -> Vec<String> {
    let dt = ["f32", "bf16"];
    let pairs = || dt.iter().flat_map(|a| dt.iter().map(move |b| format!("{a}_{b}")));
    match module {
        "norm" => {
            let mut v = vec!["kiln_embed".to_string()];
            v.extend(dt.iter().map(|d| format!("kiln_add_rmsnorm_{d}")));
            v.extend(pairs().map(|p| format!("kiln_gated_rmsnorm_{p}")));
            v
        }
        "gemm" => {
            let mut v = Vec::new();
            for x in dt {
                for y in dt {
                    for m in [8, 16, 32, 64] {
                        v.push(format!("kiln_gemm_x{x}_y{y}_m{m}"));
                    }
                    for m in [32, 64] {
                        v.push(format!("kiln_gemm_sx_x{x}_y{y}_m{m}"));
                    }
                }
            }
            v
        }
        "conv" => dt.iter().map(|d| format!("kiln_conv1d_{d}")).collect(),
        "gdn_decode" => pairs().map(|p| format!("kiln_gdn_decode_{p}")).collect(),
        "gdn_prefill" => {
            let mut v: Vec<String> = dt.iter().map(|d| format!("kiln_gdn_prefill_prep_{d}")).collect();
            v.push("kiln_gdn_prefill_scan".to_string());
            v
        }
        "rope_kv" => dt.iter().map(|d| format!("kiln_qk_norm_rope_{d}")).collect(),
        "attn_prefill" => vec!["kiln_attn_prefill".to_string()],
        "attn_decode" => {
            let mut v = vec!["kiln_attn_decode_partial".to_string()];
            v.extend(dt.iter().map(|d| format!("kiln_attn_decode_combine_{d}")));
            v
        }
        "elementwise" => {
            let mut v: Vec<String> = pairs().map(|p| format!("kiln_output_gate_{p}")).collect();
            v.extend(pairs().map(|p| format!("kiln_silu_mul_{p}")));
            v.extend(dt.iter().map(|d| format!("kiln_argmax_{d}")));
            v.push("kiln_f32_to_bf16".to_string());
            v
        }
        _ => Vec::new(),
    }
}

pub(crate) fn check_aligned(p: DevPtr, bytes: u64, what: &str) -> Result<()> {
    ensure!(p.is_multiple_of(bytes), "{what}: device pointer {p:#x} is not {bytes}-byte aligned");
    Ok(())
}
