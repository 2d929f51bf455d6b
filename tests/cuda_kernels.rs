//! The CUDA kernels against their CPU twins (src/backend/cpu/ops.rs, or the plain
//! references in tests/cuda_kernels/reference.rs), table-driven over random inputs of
//! awkward sizes, compared by normalised error ‖out − ref‖ / ‖ref‖ with outputs
//! poisoned (NaN) before each run, so an unwritten element fails.
//!
//! Every device test is `#[ignore]`d, so a machine without a GPU lists it as ignored,
//! never as passed; on the device run them with `-- --ignored` (scripts/device_run.sh's
//! `kernels` stage), where a missing GPU fails them. The NVRTC test needs no GPU and
//! always runs: it compiles every kernel for sm_90a and sm_100a and fails without
//! libnvrtc (scripts/ci_nvrtc.sh provides it).
//! Timings: `KILN_CUDA_BENCH=1 cargo test --release --test cuda_kernels bench -- --ignored --nocapture`.
//!
//! Tolerances (each test says which applies):
//! - fp32 arithmetic on exactly representable inputs, fp32 output: 1e-5 (a few ulp of
//!   reordering in sums of hundreds to thousands of terms lands near 1e-6);
//! - paths with transcendentals or long recurrences in fp32: 1e-4;
//! - fp32 activations split into bf16 hi + lo for the tensor cores: 1e-4 (about 16
//!   mantissa bits of x survive, 2^-17 ≈ 7.6e-6 relative per product);
//! - a bf16 output or bf16-rounded operand the reference does not share: 1e-2 (bf16
//!   keeps 8 mantissa bits: 2^-9 ≈ 2e-3 relative rounding per element).
#![cfg(feature = "cuda")]

#[path = "cuda_kernels/bench.rs"]
mod bench;
#[path = "cuda_kernels/harness.rs"]
mod harness;
#[path = "cuda_kernels/reference.rs"]
mod reference;
#[path = "cuda_kernels/t_attn.rs"]
mod t_attn;
#[path = "cuda_kernels/t_basic.rs"]
mod t_basic;
#[path = "cuda_kernels/t_draft_head.rs"]
mod t_draft_head;
#[path = "cuda_kernels/t_gdn.rs"]
mod t_gdn;
#[path = "cuda_kernels/t_gdn_verify.rs"]
mod t_gdn_verify;
#[path = "cuda_kernels/t_gemm.rs"]
mod t_gemm;
#[path = "cuda_kernels/t_gemm_packed.rs"]
mod t_gemm_packed;
#[path = "cuda_kernels/t_silu_mul_parts.rs"]
mod t_silu_mul_parts;
#[path = "cuda_kernels/t_spec_cycle.rs"]
mod t_spec_cycle;
