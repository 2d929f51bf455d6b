//! cuBLASLt for the compute-bound prefill GEMMs: y[M][N] (fp32) = x[M][K] · W[N][K]ᵀ, both
//! bf16 (or fp16 in a plan with fp16 GEMM weights), fp32 accumulation. One algorithm per
//! (M, N, K), chosen once by cuBLASLt's heuristic and cached, so the same chunk length
//! always computes the same way.

use super::kernels::DevPtr;
use super::memory::DevBuf;
use anyhow::{anyhow, Result};
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::CudaStream;
use std::collections::HashMap;
use std::ffi::c_void;

const WORKSPACE: usize = 32 << 20;

struct LtPlan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

pub struct BlasLt {
    handle: sys::cublasLtHandle_t,
    /// The type of W and x: bf16, or fp16 in a plan with fp16 GEMM weights
    /// (docs/numerics.md); the producers write x in the same type.
    operand: sys::cudaDataType,
    workspace: DevBuf,
    plans: HashMap<(usize, usize, usize), LtPlan>,
}

fn err(what: &str) -> impl Fn(lt::CublasError) -> anyhow::Error + '_ {
    move |e| anyhow!("cuBLASLt {what}: {e:?}")
}

impl BlasLt {
    pub fn new(f16: bool) -> Result<Self> {
        let handle = lt::create_handle().map_err(err("create handle (is libcublasLt installed?)"))?;
        let operand = if f16 { sys::cudaDataType::CUDA_R_16F } else { sys::cudaDataType::CUDA_R_16BF };
        Ok(BlasLt { handle, operand, workspace: DevBuf::zeroed(WORKSPACE, "the cuBLASLt workspace")?, plans: HashMap::new() })
    }

    fn plan(&mut self, m: usize, n: usize, k: usize) -> Result<&LtPlan> {
        if !self.plans.contains_key(&(m, n, k)) {
            // Column-major view: D (N x M, ld N) = Wᵀ-view (A: K x N, ld K, transposed) · x (B: K x M, ld K).
            let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)
                .map_err(err("matmul desc"))?;
            let t = cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T;
            unsafe {
                lt::set_matmul_desc_attribute(
                    desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                    &t as *const _ as *const c_void,
                    std::mem::size_of_val(&t),
                )
            }
            .map_err(err("set transa"))?;
            let op = self.operand;
            let a = lt::create_matrix_layout(op, k as u64, n as u64, k as i64).map_err(err("layout A"))?;
            let b = lt::create_matrix_layout(op, k as u64, m as u64, k as i64).map_err(err("layout B"))?;
            let c = lt::create_matrix_layout(sys::cudaDataType::CUDA_R_32F, n as u64, m as u64, n as i64).map_err(err("layout C"))?;
            let pref = lt::create_matmul_pref().map_err(err("preference"))?;
            let ws = WORKSPACE as u64;
            unsafe {
                lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws as *const _ as *const c_void,
                    std::mem::size_of_val(&ws),
                )
            }
            .map_err(err("set workspace"))?;
            let h = unsafe { lt::get_matmul_algo_heuristic(self.handle, desc, a, b, c, c, pref) }
                .map_err(err(&format!("no algorithm for M={m} N={n} K={k}")))?;
            unsafe {
                let _ = lt::destroy_matmul_pref(pref);
            }
            self.plans.insert((m, n, k), LtPlan { desc, a, b, c, algo: h.algo });
        }
        Ok(&self.plans[&(m, n, k)])
    }

    /// y[M][N] (fp32, row stride N) = x[M][K] (bf16, row stride K) · W[N][K]ᵀ (bf16).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(&mut self, stream: &CudaStream, w: DevPtr, x: DevPtr, y: DevPtr, m: usize, n: usize, k: usize) -> Result<()> {
        if m == 0 {
            return Ok(());
        }
        let (handle, ws) = (self.handle, self.workspace.ptr);
        let p = self.plan(m, n, k)?;
        let (alpha, beta) = (1f32, 0f32);
        unsafe {
            lt::matmul(
                handle,
                p.desc,
                &alpha as *const _ as *const c_void,
                &beta as *const _ as *const c_void,
                w as *const c_void,
                p.a,
                x as *const c_void,
                p.b,
                y as *const c_void,
                p.c,
                y as *mut c_void,
                p.c,
                &p.algo,
                ws as *mut c_void,
                WORKSPACE,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(err(&format!("matmul M={m} N={n} K={k}")))
    }
}

impl Drop for BlasLt {
    fn drop(&mut self) {
        unsafe {
            for p in self.plans.values() {
                let _ = lt::destroy_matrix_layout(p.a);
                let _ = lt::destroy_matrix_layout(p.b);
                let _ = lt::destroy_matrix_layout(p.c);
                let _ = lt::destroy_matmul_desc(p.desc);
            }
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
