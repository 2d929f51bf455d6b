#!/usr/bin/env bash
# Builds the release binaries and the GPU test executables, and packs them into
# .devbin/bins.tar.xz (~10 MB) for a device call: carry [".devbin", ".peer"] and start
# the command with `tar -xJf .devbin/bins.tar.xz -C .devbin` (docs/perf.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -p kiln -p kiln-build
tests="$(cargo test --release --no-run --test cuda_kernels --test cuda_backend 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')"
stage="$(mktemp -d)"
cp target/release/kiln target/release/kiln-build target/release/kiln-eval $tests "$stage/"
mkdir -p .devbin .peer
tar -C "$stage" -cf - . | xz -T2 -6 > .devbin/bins.tar.xz
rm -rf "$stage"
# The peer (shared/ does not travel with a device call).
if [ -d ../shared/bench ]; then cp ../shared/bench/peer_torch_graph.py ../shared/bench/wheels/*.whl .peer/ 2>/dev/null || true; fi
ls -la .devbin/bins.tar.xz
