#!/usr/bin/env bash
# Starts the kiln server with SGLang's `launch_server` flags, from any working directory:
#
#   ./launch_server.sh --model-path /models/Qwen3.5-4B --host 0.0.0.0 --port 30000 \
#       [--context-length N] [--max-running-requests N] [--chunked-prefill-size N] \
#       [--mem-fraction-static F] [--served-model-name NAME] [--api-key KEY] [--tp-size 1] \
#       [--backend cpu] \
#       [--speculative-algorithm NEXTN --speculative-num-steps 3 --speculative-eagle-topk 1 \
#        --speculative-num-draft-tokens 4]
#
# Other SGLang flags are accepted with a warning. `--flag=value` works too.
#
# 1. Finds the kiln binary: $KILN_BIN, else target/release/kiln, else builds it with
#    `cargo build --release` (with no Rust toolchain, says how to get one and exits 1).
# 2. Without --model-path: serves the embedded demo model (its first log line says so).
#    With --backend cpu: serves --model-path on the CPU backend (slow; small checkpoints).
# 3. Otherwise asks the CUDA driver, through `kiln probe` (not nvidia-smi), whether GPU 0
#    can run kiln. If not, `kiln serve` refuses in one sentence and exits 1: a named model
#    is never replaced by the demo model.
# 4. Builds the engine plan engines/<model folder name>.plan with kiln-build when it is
#    missing or no longer fits (another checkpoint, GPU, driver, kernels or config:
#    `kiln probe --plan` says which), then execs `kiln serve` with the same flags plus
#    --plan, and `--speculative-algorithm auto` when no algorithm is given (MTP kept
#    only if a start-up trial measures it faster with exactly plain decoding's tokens).
#    It logs "The server is fired up and ready to roll!" once warm; /health answers 200
#    from then.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "[launch_server] $*" >&2; }

# Read the flags this script needs, leaving "$@" untouched for kiln.
MODEL="" CTX="" MAXRUN="" BACKEND="" SPEC=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    a="${args[$i]}"
    next="${args[$((i + 1))]:-}"
    case "$a" in
        --model-path=* | --model=*) MODEL="${a#*=}" ;;
        --model-path | --model) MODEL="$next" ;;
        --context-length=*) CTX="${a#*=}" ;;
        --context-length) CTX="$next" ;;
        --max-running-requests=*) MAXRUN="${a#*=}" ;;
        --max-running-requests) MAXRUN="$next" ;;
        --backend=*) BACKEND="${a#*=}" ;;
        --backend) BACKEND="$next" ;;
        --speculative-algorithm | --speculative-algorithm=*) SPEC=1 ;;
    esac
done

have_cargo() { command -v cargo >/dev/null 2>&1; }
NO_TOOLCHAIN="install a Rust toolchain (rustup) and run \`cargo build --release\` in $ROOT, or set KILN_BIN and KILN_BUILD_BIN to built binaries"

BIN="${KILN_BIN:-}"
if [[ -z "$BIN" ]]; then
    BIN="$ROOT/target/release/kiln"
    if [[ ! -x "$BIN" ]]; then
        have_cargo || { log "no kiln binary at $BIN and no cargo to build one: $NO_TOOLCHAIN"; exit 1; }
        log "building kiln (cargo build --release; one time) ..."
        (cd "$ROOT" && cargo build --release --bin kiln >&2)
    fi
fi
[[ -x "$BIN" ]] || { log "kiln binary $BIN is missing or not executable"; exit 1; }

# No model named, or the CPU backend asked for: nothing to build.
if [[ -z "$MODEL" || "$BACKEND" == "cpu" || "$BACKEND" == "demo" ]]; then
    exec "$BIN" serve "$@"
fi
[[ -d "$MODEL" ]] || { log "--model-path $MODEL is not a folder"; exit 1; }

# No usable GPU: `kiln serve` refuses in one sentence (it asks the driver the same way).
"$BIN" probe >/dev/null 2>&1 || exec "$BIN" serve "$@"

NAME="$(basename "$(cd "$MODEL" && pwd)")"
ENGINES="${KILN_ENGINES:-$ROOT/engines}"
PLAN="$ENGINES/$NAME.plan"
if [[ -f "$PLAN" ]]; then
    # 0: fits; 2: built for another checkpoint, GPU, driver, kernels or config.
    why="$("$BIN" probe --plan "$PLAN" --model-path "$MODEL" 2>&1 >/dev/null)" && rebuild="" || rebuild="${why#kiln: }"
else
    rebuild="there is no engine plan $PLAN yet"
fi
if [[ -n "$rebuild" ]]; then
    BUILDER="${KILN_BUILD_BIN:-$ROOT/target/release/kiln-build}"
    if [[ ! -x "$BUILDER" && -z "${KILN_BUILD_BIN:-}" ]]; then
        have_cargo || { log "no kiln-build at $BUILDER and no cargo to build one: $NO_TOOLCHAIN"; exit 1; }
        log "building kiln-build (cargo build --release -p kiln-build; one time) ..."
        (cd "$ROOT" && cargo build --release -p kiln-build >&2)
    fi
    [[ -x "$BUILDER" ]] || { log "kiln-build $BUILDER is missing or not executable"; exit 1; }
    log "building the engine plan $PLAN from $MODEL ($rebuild) ..."
    mkdir -p "$ENGINES"
    build_args=(--model "$MODEL" --out "$ENGINES" --name "$NAME")
    [[ -n "$CTX" ]] && build_args+=(--max-context "$CTX")
    [[ -n "$MAXRUN" ]] && build_args+=(--max-batch "$MAXRUN")
    "$BUILDER" "${build_args[@]}" >&2 || { log "the engine build failed (see above)"; exit 1; }
fi

# MTP speculation unless the flags say otherwise: `auto` keeps it only when a start-up trial
# measures it faster at concurrency 1 with plain decoding's exact tokens
# (`--speculative-algorithm none` turns it off without a trial).
spec_default=()
[[ -z "$SPEC" ]] && spec_default=(--speculative-algorithm auto)
exec "$BIN" serve "$@" "${spec_default[@]}" --plan "$PLAN"
