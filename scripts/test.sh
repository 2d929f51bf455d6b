#!/usr/bin/env bash
# The whole test suite, on any machine (no GPU needed): every Rust test, plus every CUDA
# kernel compiled for sm_90a (H200) and sm_100a (B200) with NVRTC from PyPI.
# GPU kernel tests report "skipped: no CUDA device" here; they run on the device.
set -euo pipefail
cd "$(dirname "$0")/.."

# NVRTC 13.0 + CUDA headers from PyPI into target/venv-nvrtc (once), so kernels compile
# without a CUDA toolkit.
# shellcheck source=scripts/ci_nvrtc.sh
source scripts/ci_nvrtc.sh

# SGLang's router from PyPI into target/venv-router (once), for tests/router.rs.
scripts/ci_router.sh >/dev/null

cargo build --workspace --release --bins
target/release/kiln-build --compile-only --arch sm_90a,sm_100a
cargo test --workspace --release
