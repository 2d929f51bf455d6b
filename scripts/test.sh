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

# The `openai` Python client for tests/openai_client.rs, once, into target/venv-openai
# (a few MB of wheels); if it cannot be installed the test prints "skipped: ...".
if ! target/venv-openai/bin/python -c 'import openai' 2>/dev/null; then
    { python3 -m venv target/venv-openai \
        && target/venv-openai/bin/python -m pip install --quiet --disable-pip-version-check 'openai>=1.40'; } \
        || echo "test.sh: could not install the openai client; tests/openai_client.rs will skip" >&2
fi

cargo build --workspace --release --bins
target/release/kiln-build --compile-only --arch sm_90a,sm_100a
cargo test --workspace --release
