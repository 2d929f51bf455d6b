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
mod draft_head;
mod misc;
#[cfg(test)]
mod tiled_pipeline;

pub use attention::{AttnDecode, AttnPrefill, QkNormRope};
pub use gdn::{Conv1d, GdnDecode, GdnPrefill, GdnVerifyKind};
pub use gemm::{GemmChoices, GemmKind, GemmPlan, GemmScratch, GemmWeight, SplitParts, GEMM_MAX_M, TARGET_WARPS_PER_SM};
pub use misc::{ArgmaxScratch, NormPartsForm};

use super::compile::{self, CompiledModule, KernelDims};
use super::registry;
use super::timeline::{LaunchInfo, Timeline};
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
    pub(crate) fn idx(self) -> usize {
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

/// What `Kernels::add_rmsnorm` adds to the residual.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delta {
    /// Rows of a matrix (fp32 or bf16).
    Mat(Mat),
    /// A decode GEMM's split-K partials, summed by the norm (`Kernels::gemm_deferred`).
    Parts(SplitParts),
}

impl From<Mat> for Delta {
    fn from(m: Mat) -> Self {
        Delta::Mat(m)
    }
}

impl Delta {
    /// The same delta from row `r` on. Split-K partials are summed by one launch over all
    /// their rows, so they can only start at row 0.
    pub fn rows(self, r: usize) -> Result<Self> {
        match self {
            Delta::Mat(m) => Ok(Delta::Mat(m.rows(r))),
            Delta::Parts(_) if r > 0 => Err(anyhow!("split-K partials cannot be summed from row {r}")),
            parts => Ok(parts),
        }
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

/// Every kernel function, loaded from the compiled modules.
pub struct Kernels {
    pub(crate) dims: KernelDims,
    pub(crate) num_sms: u32,
    /// Shared memory per SM, and what the driver reserves per resident block (bytes).
    smem_per_sm: usize,
    smem_reserved_per_block: usize,
    /// Blocks of each register GEMM kernel (`registry::GEMM`) an SM holds (the
    /// driver's occupancy at its block size, read at load), and its static shared memory.
    reg_gemm_per_sm: HashMap<&'static str, (usize, usize)>,
    funcs: HashMap<String, CudaFunction>,
    _modules: Vec<Arc<CudaModule>>,
    pdl: AtomicBool,
    /// `KILN_GDN_VERIFY_FUSED`: 1 always, 0 never, unset by the batch (`gdn_verify_fused`).
    gdn_verify_fused: Option<bool>,
    /// The fused verify runs kiln_gdn_verify_pre (the default since session 14;
    /// `KILN_GDN_VERIFY_PRE=0` runs kiln_gdn_verify).
    gdn_verify_pre: bool,
    /// Up to this many sequences the fused verify runs kiln_gdn_verify_split
    /// (`KILN_GDN_VERIFY_SPLIT_MAX_SEQS`, default 0: never; an experiment of session 26).
    gdn_verify_split_max_seqs: usize,
    /// Which decode GEMM kernel takes which shape, and the K splits (read at load).
    pub(crate) gemm_choices: GemmChoices,
    /// Rows per block of the prefill attention kernel (`ATTN_PREFILL_ROWS`): 128 (8 warps
    /// share each K/V tile; measured on the H100 2026-12-05: an 8192-token prefill 179.6
    /// against 193.9 ms, bit-identical logits), or 64 with `KILN_ATTN_PREFILL_ROWS=64`.
    pub(crate) attn_prefill_rows: usize,
    /// The in-graph timeline of a `KILN_TIMELINE=1` build (None otherwise).
    timeline: Option<Timeline>,
    /// While Some, every launch is appended (`record_launches`; the timeline names its
    /// launches with it). `logging` mirrors it, so launches take no lock otherwise.
    launch_log: Mutex<Option<Vec<LaunchInfo>>>,
    logging: AtomicBool,
}

/// Records of a timeline build's buffer (48 bytes each, 768 MB; only timeline builds
/// allocate it): a decode step at batch 256 or an 8192-token prefill chunk fits (the
/// 8192-token chunk overflowed 2M records).
const TIMELINE_RECORDS: usize = 1 << 24;

impl Kernels {
    /// Loads compiled modules (all of `compile::SOURCES`) into `ctx`.
    pub fn load(ctx: &Arc<CudaContext>, modules: &[CompiledModule], dims: &KernelDims) -> Result<Self> {
        dims.validate()?;
        let mut funcs = HashMap::new();
        let mut loaded = Vec::new();
        let entries = registry::entries(dims);
        for (name, _) in compile::SOURCES {
            let m = modules
                .iter()
                .find(|m| m.name == *name)
                .with_context(|| format!("kernel module `{name}` missing from the compiled set"))?;
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(m.cubin.clone()))
                .map_err(|e| anyhow!("loading kernel module `{name}`: {e:?} (built for another GPU architecture?)"))?;
            for e in entries.iter().filter(|e| e.module == *name) {
                let func = module
                    .load_function(e.name)
                    .map_err(|err| anyhow!("kernel `{}` not found in module `{name}`: {err:?}", e.name))?;
                if e.smem > registry::SMEM_NO_OPT_IN {
                    func.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, e.smem as i32)
                        .map_err(|err| anyhow!("raising {}'s shared memory to {} bytes: {err:?}", e.name, e.smem))?;
                }
                funcs.insert(e.name.to_string(), func);
            }
            loaded.push(module);
        }
        let num_sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| anyhow!("reading the multiprocessor count: {e:?}"))? as u32;
        let attr = |a, what: &str| ctx.attribute(a).map_err(|e| anyhow!("reading {what}: {e:?}")).map(|v| v as usize);
        let smem_per_sm = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR, "the shared memory per SM")?;
        let smem_reserved_per_block = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK, "the shared memory reserved per block")?;
        // The register GEMM's occupancy, once: `spread_smem` needs it at every launch.
        let mut reg_gemm_per_sm = HashMap::new();
        for &name in registry::GEMM.as_flattened().as_flattened() {
            let f = funcs.get(name).with_context(|| format!("kernel `{name}` not loaded"))?;
            let n = f.occupancy_max_active_blocks_per_multiprocessor(gemm::GEMM_REG_THREADS, 0, None).map_err(|e| anyhow!("occupancy of {name}: {e:?}"))?;
            let static_smem = f.shared_size_bytes().map_err(|e| anyhow!("static shared memory of {name}: {e:?}"))?;
            reg_gemm_per_sm.insert(name, (n as usize, static_smem as usize));
        }
        let gdn_verify_fused = std::env::var("KILN_GDN_VERIFY_FUSED").ok().map(|v| v != "0");
        let gdn_verify_pre = std::env::var("KILN_GDN_VERIFY_PRE").map_or(true, |v| v != "0");
        let gdn_verify_split_max_seqs = std::env::var("KILN_GDN_VERIFY_SPLIT_MAX_SEQS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        let attn_prefill_rows = if std::env::var("KILN_ATTN_PREFILL_ROWS").is_ok_and(|v| v == "64") { 64 } else { 128 };
        let timeline = Timeline::attach(&loaded, &ctx.default_stream(), TIMELINE_RECORDS)?;
        Ok(Kernels {
            dims: dims.clone(),
            num_sms,
            smem_per_sm,
            smem_reserved_per_block,
            reg_gemm_per_sm,
            funcs,
            _modules: loaded,
            pdl: AtomicBool::new(false),
            gdn_verify_fused,
            gdn_verify_pre,
            gdn_verify_split_max_seqs,
            gemm_choices: GemmChoices::from_env(),
            attn_prefill_rows,
            timeline,
            launch_log: Mutex::new(None),
            logging: AtomicBool::new(false),
        })
    }

    /// The in-graph timeline, when the plan's kernels were built with it.
    pub fn timeline(&self) -> Option<&Timeline> {
        self.timeline.as_ref()
    }

    /// Starts (`true`) or stops appending every launch to the launch log; stopping
    /// returns what was logged.
    pub fn record_launches(&self, on: bool) -> Vec<LaunchInfo> {
        let mut log = self.launch_log.lock().unwrap_or_else(|e| e.into_inner());
        self.logging.store(on, Ordering::Relaxed);
        std::mem::replace(&mut *log, on.then(Vec::new)).unwrap_or_default()
    }

    /// Notes the weight bytes of the last logged launch (a GEMM's).
    pub(crate) fn note_weight_bytes(&self, bytes: u64) {
        if !self.logging.load(Ordering::Relaxed) {
            return;
        }
        if let Some(last) = self.launch_log.lock().unwrap_or_else(|e| e.into_inner()).as_mut().and_then(|l| l.last_mut()) {
            last.weight_bytes = bytes;
        }
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

    /// Runs `enqueue` with programmatic dependent launch `on`, then turns it off again
    /// (whatever `enqueue` returns).
    pub fn with_pdl<T>(&self, on: bool, enqueue: impl FnOnce() -> T) -> T {
        self.set_pdl(on);
        let r = enqueue();
        self.set_pdl(false);
        r
    }

    /// The kernel of a fused verify over `seqs` sequences: `KILN_GDN_VERIFY_SPLIT_MAX_SEQS`
    /// sequences or fewer the cluster-split form, else kiln_gdn_verify_pre (or with
    /// `KILN_GDN_VERIFY_PRE=0` kiln_gdn_verify). The same bits (kernel test). The pre form
    /// computes every position's inputs first and keeps one barrier between position
    /// updates: verify 5.017 against 5.090 ms at batch 1 and 6.070 against 6.586 at 4
    /// (H100, session 14 call 2).
    pub fn gdn_verify_kind(&self, seqs: usize) -> GdnVerifyKind {
        if seqs <= self.gdn_verify_split_max_seqs {
            GdnVerifyKind::Split
        } else if self.gdn_verify_pre {
            GdnVerifyKind::Pre
        } else {
            GdnVerifyKind::InTurn
        }
    }

    /// Dynamic shared memory (unused) that spreads a launch of `blocks` blocks of the
    /// register GEMM kernel `name` over every SM (`gemm::spread_smem`, with the kernel's
    /// occupancy and this device's shared memory).
    pub(crate) fn spread_smem(&self, name: &str, blocks: usize) -> Result<u32> {
        let &(per_sm, static_smem) = self.reg_gemm_per_sm.get(name).with_context(|| format!("`{name}` is not a register GEMM kernel"))?;
        Ok(gemm::spread_smem(blocks, self.num_sms as usize, per_sm, self.smem_per_sm, self.smem_reserved_per_block, static_smem))
    }

    /// Whether a verify step of `seqs` sequences runs its GDN as one kiln_gdn_verify launch
    /// per layer (every fed position of a sequence in one block) instead of one decode
    /// launch per position. The same bits either way (t_gdn_verify; exact end to end on
    /// the H100, session 13). By default while its blocks (one per sequence and value
    /// head, one per SM) fit one wave: H100, 3 drafts, verify 5.079 against 5.101 ms at
    /// batch 1, 6.121 against 6.410 at 4, but 7.171 against 7.038 at 8 (256 blocks, two
    /// waves). `KILN_GDN_VERIFY_FUSED=1` / `0` forces it on / off.
    pub fn gdn_verify_fused(&self, seqs: usize) -> bool {
        let fits = seqs * self.dims.lin_num_v_heads <= self.num_sms as usize;
        self.gdn_verify_fused.unwrap_or(fits)
    }

    pub fn gemm_choices(&self) -> &GemmChoices {
        &self.gemm_choices
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
        if self.logging.load(Ordering::Relaxed) {
            if let Some(log) = self.launch_log.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                log.push(LaunchInfo { name: name.to_string(), blocks: grid.0 as u64 * grid.1 as u64 * grid.2 as u64, weight_bytes: 0 });
            }
        }
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
        // The shared memory is in the message: CUDA_ERROR_INVALID_VALUE names no argument,
        // and an over-budget dynamic size was the cause once (session 23).
        r.map_err(|e| anyhow!("launching {name} (grid {grid:?}, block {block}, {smem} bytes of dynamic shared memory): {e:?}"))
    }
}

pub(crate) fn check_aligned(p: DevPtr, bytes: u64, what: &str) -> Result<()> {
    ensure!(p.is_multiple_of(bytes), "{what}: device pointer {p:#x} is not {bytes}-byte aligned");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_from_a_row_moves_a_matrix_and_keeps_partials_at_row_zero() {
        let m = Mat { ptr: 0x1000, ld: 2560, dtype: DType::F32 };
        assert_eq!(Delta::Mat(m).rows(3).unwrap(), Delta::Mat(Mat { ptr: 0x1000 + 3 * 2560 * 4, ..m }));
        let parts = Delta::Parts(SplitParts { ptr: 0x2000, splits: 13, split_stride: 2560, ld: 2560 });
        assert_eq!(parts.rows(0).unwrap(), parts);
        let e = parts.rows(1).unwrap_err().to_string();
        assert!(e.contains("row 1"), "{e}");
    }
}
