#!/usr/bin/env bash
# Makes NVRTC usable on a machine with no GPU and no CUDA toolkit, so CI can compile
# every kiln kernel for sm_90a and sm_100a (tests/cuda_kernels.rs, kiln-build --compile-only).
#
# Usage:
#   source scripts/ci_nvrtc.sh          # sets LD_LIBRARY_PATH and KILN_CUDA_INCLUDE here
#   eval "$(scripts/ci_nvrtc.sh)"       # same, from a sub-shell (prints the export line)
#   scripts/ci_nvrtc.sh --cu12          # NVRTC 12.8 instead, into target/venv-nvrtc-cu12
#                                       # ($KILN_NVRTC12_VENV); prints that venv's bin folder.
#                                       # With it first on PATH (and nothing on LD_LIBRARY_PATH),
#                                       # kiln finds NVRTC the way it does beside torch: through
#                                       # the wheels of the python3 on PATH, headers beside them.
#
# Creates (once) the venv $KILN_NVRTC_VENV (default target/venv-nvrtc, ignored with
# target/) holding the NVRTC and CUDA runtime-header wheels of CUDA 13.0. The version is
# pinned: the device's driver is 580 (CUDA 13.0) and a newer NVRTC minor could emit
# cubins that driver rejects.

# NVRTC 12.8: the first NVRTC that knows sm_100a, common in containers built for SGLang.
_kiln_nvrtc_cu12() {
    local root venv site
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="${KILN_NVRTC12_VENV:-$root/target/venv-nvrtc-cu12}"
    if [ ! -x "$venv/bin/python" ]; then
        mkdir -p "$(dirname "$venv")"
        python3 -m venv "$venv" >&2 || { echo "ci_nvrtc.sh: python3 -m venv failed" >&2; return 1; }
    fi
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    if [ ! -e "$site/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ] || [ ! -e "$site/nvidia/cuda_runtime/include/cuda_bf16.h" ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "nvidia-cuda-nvrtc-cu12==12.8.*" "nvidia-cuda-runtime-cu12==12.8.*" >&2 \
            || { echo "ci_nvrtc.sh: pip install of the NVRTC 12.8 wheels failed" >&2; return 1; }
    fi
    echo "$venv/bin"
}

if [ "${1:-}" = "--cu12" ]; then
    if _kiln_nvrtc_cu12; then exit 0; else exit 1; fi
fi

_kiln_nvrtc_main() {
    local root venv py cu13
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="${KILN_NVRTC_VENV:-$root/target/venv-nvrtc}"
    py="$venv/bin/python"
    if [ ! -x "$py" ]; then
        mkdir -p "$(dirname "$venv")"
        python3 -m venv "$venv" >&2 || { echo "ci_nvrtc.sh: python3 -m venv failed" >&2; return 1; }
    fi
    cu13="$("$py" -c 'import nvidia.cu13 as m; print(list(m.__path__)[0])' 2>/dev/null)"
    if [ -z "$cu13" ] || [ ! -e "$cu13/include/cuda_bf16.h" ] || ! ls "$cu13"/lib/libnvrtc.so.13* >/dev/null 2>&1; then
        "$py" -m pip install --quiet --disable-pip-version-check \
            nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 >&2 \
            || { echo "ci_nvrtc.sh: pip install of the NVRTC wheels failed" >&2; return 1; }
        cu13="$("$py" -c 'import nvidia.cu13 as m; print(list(m.__path__)[0])')"
    fi
    if [ ! -e "$cu13/include/cuda_bf16.h" ] || ! ls "$cu13"/lib/libnvrtc.so.13* >/dev/null 2>&1; then
        echo "ci_nvrtc.sh: $cu13 lacks include/cuda_bf16.h or lib/libnvrtc.so.13" >&2
        return 1
    fi
    _kiln_nvrtc_lib="$cu13/lib"
    _kiln_nvrtc_inc="$cu13/include"
}

if _kiln_nvrtc_main; then
    if [ "${BASH_SOURCE[0]}" != "$0" ]; then
        export LD_LIBRARY_PATH="$_kiln_nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        export KILN_CUDA_INCLUDE="$_kiln_nvrtc_inc"
        echo "ci_nvrtc.sh: NVRTC from $_kiln_nvrtc_lib" >&2
    else
        echo "export LD_LIBRARY_PATH=$_kiln_nvrtc_lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} KILN_CUDA_INCLUDE=$_kiln_nvrtc_inc"
    fi
    unset _kiln_nvrtc_lib _kiln_nvrtc_inc
    unset -f _kiln_nvrtc_main
else
    unset -f _kiln_nvrtc_main
    if [ "${BASH_SOURCE[0]}" != "$0" ]; then return 1; else exit 1; fi
fi
