#!/usr/bin/env bash
# Installs SGLang's own router (`sglang-router` from PyPI: a Rust binary in a ~30 MB
# wheel, no GPU needed) into target/venv-router once, for tests/router.rs, which puts
# two demo-model kiln servers behind it. The version is pinned: the router's worker API
# (what it reads from /get_load, /get_server_info, ...) changes between releases.
#
# Usage: scripts/ci_router.sh   (prints the venv's python)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KILN_ROUTER_VENV:-$root/target/venv-router}"
if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c 'import sglang_router' 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check sglang-router==0.3.2 >&2
fi
echo "$venv/bin/python"
