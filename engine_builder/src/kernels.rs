//! Compiling the CUDA kernels for one architecture (NVRTC, no GPU needed), through
//! `kiln::backend::cuda::compile`.

use anyhow::{Context, Result};
use kiln::backend::cuda::compile::{compile_all, find_cuda_include, KernelDims};
use kiln::backend::cuda::libs::{require, CudaLib};
use kiln::config::ModelConfig;
use kiln::plan::{Arch, KernelImage};
use std::path::PathBuf;

/// The include folders to give NVRTC: `--include` if given, else the one the compile
/// module finds (KILN_CUDA_INCLUDE, CUDA_HOME, /usr/local/cuda, the CI venv).
pub fn include_dirs(given: &[PathBuf]) -> Vec<PathBuf> {
    if given.is_empty() {
        find_cuda_include().into_iter().collect()
    } else {
        given.to_vec()
    }
}

/// Finds and loads NVRTC; returns its version and the log line naming it and its file.
pub fn nvrtc() -> Result<((u32, u32), String)> {
    let l = require(CudaLib::Nvrtc)?;
    Ok((l.version, l.line()))
}

/// Every kernel module for `arch`, specialised to `cfg`'s dimensions and the GEMM operand
/// type (`gemm_f16`: fp16, docs/numerics.md).
pub fn compile(arch: Arch, cfg: &ModelConfig, gemm_f16: bool, include: &[PathBuf]) -> Result<Vec<KernelImage>> {
    let dims = KernelDims { gemm_f16, ..KernelDims::from_config(cfg) };
    let modules = compile_all(arch.as_str(), &dims, include)
        .with_context(|| format!("compiling the CUDA kernels for {arch}"))?;
    Ok(modules.into_iter().map(|m| KernelImage { name: m.name, cubin: m.cubin }).collect())
}
