#!/usr/bin/env bash
# Starts the kiln server with SGLang's `launch_server` flags, from any working directory:
#
#   ./launch_server.sh --model-path /models/Qwen3.5-4B --host 0.0.0.0 --port 30000 \
#       [--context-length N] [--max-running-requests N] [--chunked-prefill-size N] \
#       [--mem-fraction-static F] [--served-model-name NAME] [--api-key KEY] [--tp-size 1] \
#       [--speculative-algorithm NEXTN --speculative-num-steps 3 --speculative-eagle-topk 1 \
#        --speculative-num-draft-tokens 4]
#
# Other SGLang flags are accepted with a warning. `--flag=value` works too.
#
# 1. Finds the kiln binary: $KILN_BIN, else target/release/kiln, else builds it with
#    `cargo build --release`.
# 2. With a GPU (nvidia-smi works) and a model, builds the engine plan
#    engines/<model folder name>.plan once if it is missing (target/release/kiln-build).
# 3. Execs `kiln serve` with the same flags (plus --plan). Without a GPU or a model the
#    server serves the embedded demo model and says so in its first log line. It logs
#    "The server is fired up and ready to roll!" once warm; /health answers 200 from then.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "[launch_server] $*" >&2; }

# Read the flags this script needs, leaving "$@" untouched for kiln.
MODEL="" CTX="" MAXRUN=""
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
    esac
done

have_cargo() { command -v cargo >/dev/null 2>&1; }

BIN="${KILN_BIN:-}"
if [[ -z "$BIN" ]]; then
    BIN="$ROOT/target/release/kiln"
    if [[ ! -x "$BIN" ]]; then
        have_cargo || { log "no kiln binary at $BIN and no cargo to build it"; exit 1; }
        log "building kiln (cargo build --release; one time) ..."
        (cd "$ROOT" && cargo build --release --bin kiln >&2)
    fi
fi
[[ -x "$BIN" ]] || { log "kiln binary $BIN is missing or not executable"; exit 1; }

gpu_present() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

PLAN_ARGS=()
if [[ -n "$MODEL" && -d "$MODEL" ]] && gpu_present; then
    NAME="$(basename "$(cd "$MODEL" && pwd)")"
    ENGINES="${KILN_ENGINES:-$ROOT/engines}"
    PLAN="$ENGINES/$NAME.plan"
    if [[ ! -f "$PLAN" ]]; then
        BUILDER="${KILN_BUILD_BIN:-$ROOT/target/release/kiln-build}"
        if [[ ! -x "$BUILDER" ]] && have_cargo && [[ -z "${KILN_BUILD_BIN:-}" ]]; then
            log "building kiln-build (cargo build --release -p kiln-build; one time) ..."
            (cd "$ROOT" && cargo build --release -p kiln-build >&2) || log "could not build kiln-build"
        fi
        if [[ -x "$BUILDER" ]]; then
            log "building the engine plan $PLAN from $MODEL (one time) ..."
            mkdir -p "$ENGINES"
            build_args=(--model "$MODEL" --out "$ENGINES" --name "$NAME")
            [[ -n "$CTX" ]] && build_args+=(--max-context "$CTX")
            [[ -n "$MAXRUN" ]] && build_args+=(--max-batch "$MAXRUN")
            "$BUILDER" "${build_args[@]}" >&2 || { log "the engine build failed"; exit 1; }
        else
            log "no engine builder at $BUILDER; skipping the engine build"
        fi
    fi
    [[ -f "$PLAN" ]] && PLAN_ARGS=(--plan "$PLAN")
fi

exec "$BIN" serve "$@" ${PLAN_ARGS[@]+"${PLAN_ARGS[@]}"}
