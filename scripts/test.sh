#!/usr/bin/env bash
# The whole test suite, on any machine (no GPU needed): every Rust test, plus every CUDA
# kernel compiled for sm_90a (H200) and sm_100a (B200) with NVRTC 13.0 and 12.8 from PyPI.
# GPU tests are #[ignore]d here (listed as ignored); the device runs them with --ignored.
set -euo pipefail
cd "$(dirname "$0")/.."

# NVRTC 13.0 + CUDA headers from PyPI into target/venv-nvrtc (once), so kernels compile
# without a CUDA toolkit.
# shellcheck source=scripts/ci_nvrtc.sh
source scripts/ci_nvrtc.sh

# SGLang's router from PyPI into target/venv-router (once), for tests/router.rs.
scripts/ci_router.sh >/dev/null
# The `openai` Python client for tests/openai_client.rs, once, into target/venv-openai
# (a few MB of wheels); if it cannot be installed the test prints "skipped: ...".
if ! target/venv-openai/bin/python -c 'import openai' 2>/dev/null; then
    { python3 -m venv target/venv-openai \
        && target/venv-openai/bin/python -m pip install --quiet --disable-pip-version-check 'openai>=1.40'; } \
        || echo "test.sh: could not install the openai client; tests/openai_client.rs will skip" >&2
fi

cargo build --workspace --release --bins
out="$(target/release/kiln-build --compile-only --arch sm_90a,sm_100a 2>&1)" || { echo "$out" >&2; exit 1; }
grep -E '^(NVRTC|sm_)' <<<"$out"
# The kernels without early PDL triggers too (KILN_PDL_EARLY=0, the opt-out).
KILN_PDL_EARLY=0 target/release/kiln-build --compile-only --arch sm_90a,sm_100a | tail -1
# The prefill attention experiment with bf16 probabilities (KILN_ATTN_P_BF16=1, off by default).
KILN_ATTN_P_BF16=1 target/release/kiln-build --compile-only --arch sm_90a,sm_100a | tail -1
# ... and with bf16 q too (KILN_ATTN_Q_BF16=1, docs/numerics.md).
KILN_ATTN_P_BF16=1 KILN_ATTN_Q_BF16=1 target/release/kiln-build --compile-only --arch sm_90a,sm_100a | tail -1
# The kernel knobs' variants (compile::BUILD_KNOBS; stage knobs of device_run.sh measures them).
KILN_ATTN_V_EARLY=1 KILN_PF_K=512 KILN_PF_BUDGET_MB=48 KILN_PDL_EARLY_ROWS=64 KILN_PF_MAX_ROWS=256 KILN_TIMELINE=1 \
    target/release/kiln-build --compile-only --arch sm_90a,sm_100a | tail -1
# fp16 GEMM operands (kernels/common.cuh's KILN_GEMM_F16, docs/numerics.md).
target/release/kiln-build --compile-only --gemm-operands f16 --arch sm_90a,sm_100a | tail -1
# NVRTC 12.8 (CUDA 12.8/12.9 containers), found as beside torch: only through the wheels
# of the python3 on PATH, nothing on LD_LIBRARY_PATH, headers from the runtime wheel.
cu12_bin="$(scripts/ci_nvrtc.sh --cu12)"
out="$(env -u LD_LIBRARY_PATH -u KILN_CUDA_INCLUDE PATH="$cu12_bin:$PATH" \
    target/release/kiln-build --compile-only --arch sm_90a,sm_100a 2>&1)" || { echo "$out" >&2; exit 1; }
grep -E '^(NVRTC|sm_)' <<<"$out"
grep -q '^NVRTC 12\.8 from .*(pip wheel)$' <<<"$out" || { echo "test.sh: NVRTC 12.8 was not found through its wheel" >&2; exit 1; }
cargo test --workspace --release
