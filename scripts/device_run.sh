#!/usr/bin/env bash
# One device call: full-size correctness and speed on the GPU machine.
# Run from the repo root on the device with the release binaries in .devbin/ and the
# peer in .peer/ (see docs/perf.md). Stages (space-separated in $STAGES, default all):
#   make     seeded random Qwen3.5-4B checkpoint (transformers, bf16, official layout)
#   build    kiln-build the plan (timed)
#   bench    kiln-eval bench: decode steps at batch 1..256, ctx 1024; prefill 1024; batch 1 at
#            ctx 8192 and prefill 8192 (bench8k.txt)
#   profile  ncu: per-kernel times of one 1024-token prefill (profile.txt)
#   stalls   ncu's SpeedOfLight / WarpStateStats / Occupancy sections for the kernels matching
#            $STALL_KERNELS (default the prefill attention and GDN kernels), $STALL_COUNT launches,
#            during `kiln-eval bench $STALL_BENCH` (default a 1024-token prefill). The tiled decode
#            GEMM at batch 64: STALL_KERNELS=kiln_gemm_tiled STALL_BENCH="--batch 64 --ctx 1024 --prefill 16 --iters 2"
#   profile_decode  ncu over one decode step at batch 1 and at batch 64 (ctx 1024): time, DRAM
#            bytes and achieved bandwidth per kernel, and per GEMM weight (grid) (profile_decode.txt)
#   bench_bf16  bench at $BF16_BATCHES (1,8,32,64,128,256) with KILN_ACT=bf16 (one MMA per product
#            on 16-bit GEMM inputs: the fp16 GEMM contract's step times, docs/numerics.md) against
#            the default, two runs each (bench_bf16.txt)
#   eval_bf16  logits and accuracy with KILN_ACT=bf16
#   f16      a plan with fp16 GEMM operands (kiln-build --gemm-operands f16) against the default:
#            bench at $F16_BATCHES (1,8,32,64,128,256) twice each (bench_f16.txt), and with refs
#            its accuracy and batch / mixed-step invariance (eval_f16.txt, compare_f16.json)
#   bench_tiled  bench with the pre-tiled decode GEMMs (KILN_GEMM_TILED=0: shared-x for M = 17..64,
#            64-row pieces; the tiled kernel is the default since 2026-12-05): batch 8..256
#   eval_tiled   logits, accuracy and batch invariance (8/64/256) with KILN_GEMM_TILED=0
#   pdl_early  a second plan built with KILN_PDL_EARLY=0 (the kernels before early PDL
#            triggers and L2 weight prefetch, the default since 2026-12-05): bench at
#            batch 1/8/64, and its logits against the default plan's when refs exist
#   cmp_prev  (CMP_PREV_BENCH="flags" also benches the old plan) a plan built by an earlier commit's binaries (.devbin/old_<sha>.tar.xz: kiln-build and
#            kiln-eval): its teacher-forced logits against this commit's, byte for byte (a change
#            meant to keep every bit, such as a reduction's load batching, proves it here).
#            Every "bit-identical to the default plan's" line goes to cmp.txt
#   sweep    the decode GEMM on every shape under candidate K splits (bench_gemm_sweep: sweep.txt)
#   attn_pbf16  plans built with KILN_ATTN_P_BF16=1 (prefill attention with bf16 probabilities:
#            half its P.V MMAs) and with KILN_ATTN_Q_BF16=1 too (bf16 q: half its q.k MMAs):
#            prefill 1024 and 8192 against the default (bench_attn_pbf16.txt), and each one's
#            accuracy against the references (compare_attn_pbf16.json, compare_attn_qpbf16.json)
#   attn_parts  batch 1 and 8 at ctx 8192 with KILN_ATTN_MAX_PARTS=64 and 128 (decode attention
#            split into more parts at long context; the default 32 gives 256-key parts at 8K)
#   timeline a plan built with KILN_TIMELINE=1, then kiln-eval timeline at batch $TL_BATCH (default
#            1,8,64): one decode step replayed from its graph with every kernel's blocks timed
#            (entry, PDL release, end): how far each launch moves the step and each GEMM's
#            weight bandwidth inside the graph, and a prefill chunk of $TL_PREFILL tokens
#            (default 1024) launch by launch
#            ($OUT/timeline.txt, timeline.jsonl)
#   tl_env   the timeline stage's batches again with the run-time variables $TL_ENV (default
#            KILN_GEMM_REG_SPREAD=0; same plan), and scripts/timeline_blocks.py on $TL_KERNEL
#            (default the m8 register GEMM, --gx $TL_GX) in both (timeline_env*.txt)
#   tl_verify  (uses the timeline stage's plan, built here if missing) kiln-eval timeline at batch 1
#            with a verify step of 3 drafts beside the decode step, with the verify's GDN launch
#            by position (KILN_GDN_VERIFY_FUSED=0) and fused (=1): timeline_verify*.txt
#   mma_rate  bench/mma_rate.cu (nvcc here): mma.sync m16n8k16 TFLOP/s by warps per SM and
#            independent accumulator chains, on registers alone and with the tiled GEMM's
#            shared loads (mma_rate.txt): what the tensor pipe allows the tiled kernels
#   tiled_stage  bench/tiled_stage.cu (nvcc here): the wide tiled GEMM's stage built up piece by
#            piece (MMAs and shared loads, + barrier, + W by cp.async, + x load / split / store,
#            + the partial tile's store) in gate_up's shape at M = 256: time per stage (tiled_stage.txt)
#   mma_perm  bench/mma_perm.cu (nvcc here): whether mma.sync's bits depend on which position of
#            a k16 step holds which product (mma_perm.txt)
#   pf_budget  plans built with KILN_PF_BUDGET_MB=$PF_BUDGETS (default "24"; the early L2 weight
#            prefetch's MB per GEMM, default 0 since session 26; with $PF_K also KILN_PF_K, its columns per
#            row, default 256) against the default: bench at $PF_BATCHES (1,4,8) twice, the
#            GEMM table test, logits (pf_budget.txt)
#   mixed    mixed steps (kiln-eval bench --mixed: decode rows and one prefill chunk in a step,
#            $MIXED, default "16:2048,64:2048,64:512") with the long chunk's GEMM inputs
#            written as bf16 by their producers (the default) against fp32 then converted
#            (KILN_MIXED_BF16_INPUTS=0), twice each (mixed.txt)
#   norm_warps  the cluster norm with a thread per two vectors (KILN_GEMM_DEFER_CLUSTER_WARPS=0, run time)
#            against the default (a warp per vector, since session 26): bench at $PF_BATCHES twice, logits (norm_warps.txt)
#   tiled_wide  the tiled GEMM's 128-row blocks everywhere (KILN_GEMM_TILED_WIDE_MIN_M=0, run time)
#            against the default (256-row blocks from 64 rows) and 256-row blocks from 128 rows:
#            bench at $WIDE_BATCHES (32,64,128,256) twice, logits (tiled_wide.txt);
#            KERNEL_TESTS=gemm_matches checks its bits against the other kernels
#   tiled_paired  the wide tiled GEMM with one wait and barrier per two stages (KILN_GEMM_TILED_PAIRED=1,
#            run time) against the default: bench at $WIDE_BATCHES (64,128,256) twice, logits (tiled_paired.txt)
#   reg_spread  the register GEMM packed by the block scheduler (KILN_GEMM_REG_SPREAD=0) against
#            the default (unused shared memory caps its blocks per SM), batch $SPREAD_BATCHES (1,4): reg_spread.txt
#   packed   the decode weights packed at load (the default) against row-major (KILN_GEMM_PACKED=0): bench at
#            batch 1-32 twice, the packing kernel tests, logits (needs refs), verify (packed.txt)
#   gate_up_sum  gate_up's split-K sum in silu_mul (default) against the GEMM's own
#            (KILN_GEMM_DEFER_GATE_UP=0): bench at batch 1-256 twice, logits, the kernel tests (gate_up_sum.txt)
#   sxw      the m16 shared-x GEMM staging a whole K slice of x (the default since session 13)
#            against a plan built with KILN_GEMM_SXW_MAX_BYTES=0 (the two-slab ring), and with
#            the shared-x kernel for every weight up to 16 rows (KILN_GEMM_SX_MIN_N=0): bench at
#            batch 1/8/16 twice each, logits of both against the default's (needs refs, eval)
#   x_ahead  a plan whose m8 register GEMM loads each chunk's x at the chunk (KILN_GEMM_X_AHEAD=0; the default is two chunks ahead):
#            bench at batch 1/4/8 twice beside the default, the GEMM table test, logits (x_ahead.txt)
#   reg_p    a plan whose m8/m16 register GEMM keeps 8 chunks of 32 k in flight per warp
#            (KILN_GEMM_REG_P=8, default 4): bench at batch 1/8/16 twice, the GEMM table test, logits with refs (reg_p.txt)
#   splits   bench at batch 1..128 with the K-split targets KILN_GEMM_WARPS=16/20/24/12 (twice)
#            and KILN_GEMM_WIDE_WARPS=32/16 (splits.txt)
#   knobs    session 7's prepared experiments, each against the default in the same call
#            (knobs.txt): the shared-x GEMM for every weight up to 16 rows
#            (KILN_GEMM_SX_MIN_N=0) at batch 1/8; the split target of the weights below
#            N = 12288 (KILN_GEMM_WARPS=12/20/24, default 16) at 1/8/64 and of the wide ones
#            (KILN_GEMM_WIDE_WARPS=32, default 24) at 1/32/64; a plan with the early PDL
#            order up to 64 rows (KILN_PDL_EARLY_ROWS=64, default 16) at 32/64; plans built with a longer early L2 prefetch
#            (KILN_PF_K=512) and a bigger budget (KILN_PF_BUDGET_MB=48, and both) at 1/8;
#            a plan with KILN_ATTN_V_EARLY=1 (decode attention loads values with keys) at
#            batch 1/8 ctx 8192 and 64 ctx 1024, its kernel against the CPU twin
#            (attn_decode test), and its logits against the default plan's (the same
#            arithmetic: bit-identical expected); prefill 1024
#            and 8192 with KILN_ATTN_PREFILL_ROWS=64 and 128 (the prefill attention kernel
#            with 8 warps per block sharing each K/V tile), and its logits (bit-identical);
#            prefill 1024 and 8192 with KILN_PDL_STREAM=1 (launch-by-launch steps with PDL)
#            and its logits (bit-identical)
#   defer_sum  the out/o/down GEMMs' split-K sums in the next add_rmsnorm (default, session 12)
#            against the GEMMs summing (KILN_GEMM_DEFER_SUM=0) and against one-block norms at
#            batch 1-16 (KILN_GEMM_DEFER_CLUSTER_MAX_M=0, not the cluster norm): kernel
#            tests, bench at batch 1..256 twice each, logits (defer_sum.txt)
#   cluster_norm  bench at batch 32-256 with the deferred sums' norm as 8-block clusters at every M
#            (KILN_GEMM_DEFER_CLUSTER_MAX_M=256) against the default (16), and its logits
#   ncu_src  ncu's full set and per-instruction (SASS) stall samples of the tiled GEMM at batch 64
#            and of the prefill's GDN prep, scan and attention (2048 tokens; SRC_PREFILL_KERNELS,
#            SRC_PREFILL_COUNT), and with NCU_SRC="gdn_decode" of the GDN decode step at batch
#            64, with "b1" of the batch-1 step's first four GEMMs (NCU_SRC picks the runs;
#            default "tiled prefill"): ncu_src_*, read with
#            scripts/ncu_sass.py
#   tiled_min  bench at batch 1/8/16/24 with the tiled decode GEMM from M = 17 (default), 9
#            and 1 (KILN_GEMM_TILED_MIN_M): bench_tiled_min.txt
#   nopdl    bench at batch 1/8/64 with decode graphs captured without PDL (KILN_PDL=0)
#   peer     shared/bench/peer_torch_graph.py in the same call
#   membench bench/membench.cu (nvcc on the device): the decode GEMMs' weight bytes read
#            contiguously, in the skinny kernels' strip pattern and in a packed layout,
#            without arithmetic (membench.txt): what access pattern and grid cost
#   refs     HF fp32/bf16 references for N prompts (16..2000 tokens)
#   eval     kiln-eval logits + compare against the references
#   verify   kiln-eval verify: speculative verification exact against plain decoding at batch
#            1/4/8 (3 drafts), and a verify call's time against a decode step's; again
#            without graphs, with the fused GDN computing every position's inputs first
#            (KILN_GDN_VERIFY_PRE=1), and with the GDN one launch per position
#            (KILN_GDN_VERIFY_FUSED=0; the default fuses it up to 4 sequences), and with each
#            head's GDN over a cluster of 4 blocks (KILN_GDN_VERIFY_SPLIT_MAX_SEQS=4)
#   kernels  tests/cuda_kernels (.devbin/cuda_kernels-*) with --ignored (KERNEL_TESTS: name
#            filters), then the kernel bench (KERNEL_BENCH=0: the tests only)
#   backend  tests/cuda_backend.rs (.devbin/cuda_backend-*): the cuda backend against the cpu one
#            (BACKEND_TESTS: name filters; all by default)
#   serve    launch_server.sh --model-path: time to /health 200, one request
#   serving  (with serve) scripts/bench_serving.py against that server
#   serving_steps  a second server, the seq workload only, then the server's mean decode step
#            (backend forward and whole scheduler step, /metrics) beside the client's TPOT:
#            where serving's time per token goes beside the bench's step
#   serving_constrained  (with serve) 16 in flight, half of them with a regex constraint:
#            TPOT of the unconstrained half against serving's c16 (issue 12: no slowdown)
#   serving_fcfs  a second server with --schedule-policy fcfs (the policy before shortest-prefill
#            became the default): bench_serving seq,c16,c64, the same draws as serving (serving_fcfs.txt)
#   serving_chunk  a second server with --chunked-prefill-size $CHUNK (default 8192, SGLang's H200
#            default; kiln's is 2048): bench_serving seq,c16,c64 with serving's draws
#            (serving_chunk.txt), to choose the step budget from measurements
#   serving_mtp  a second server with --speculative-algorithm NEXTN (policy auto: speculation
#            per step from the measured costs and acceptance, probing while it does not pay):
#            bench_serving seq,c16, the same draws as serving (serving_mtp.txt). With random
#            weights the MTP head accepts almost nothing, so this is the policy's cost when
#            speculation does not pay; the win needs a real checkpoint
#   serving_mtp_full  serving_mtp with KILN_MTP_FULL_UPKEEP=1 (forward steps run the whole MTP
#            layer, as before session 7, instead of only its KV): what the KV-only upkeep saves
#   soak     (with serve) scripts/soak.py for $SOAK_S seconds (default 240): mixed traffic with
#            cut streams and aborts, then memory flat, every slot and block free, nothing lost
#   wheel_nvrtc  issue 11: hide the toolkit's libnvrtc from the loader, give python3 only the
#            NVRTC 13.0 wheel (the device's own torch wheels if they have it, else the one
#            carried as .devbin/nvrtc13.tar.xz), and let launch_server.sh build and serve a plan
# Always last: scripts/perf_record.py writes the run's line ($OUT/run.json, and appends it
# to docs/perf/runs.jsonl here; copy it into the checkout's docs/perf/runs.jsonl).
# KILN_COMMIT names the commit (the device's copy has no .git).
set -uo pipefail
# The binaries travel packed (.devbin/bins.tar.xz, scripts/pack_devbin.sh); a call that
# carries .devbin gets the archive alone, so unpack it here when they are missing.
if [ ! -x .devbin/kiln ] && [ -f .devbin/bins.tar.xz ]; then tar -xJf .devbin/bins.tar.xz -C .devbin; fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
CKPT=/tmp/qwen35_4b_random; REFS=/tmp/refs; ENG=/tmp/engines
STAGES=${STAGES:-"make build bench nograph peer refs eval"}
N=${N:-32}
export PYTHONUNBUFFERED=1
log() { echo "[$(date +%T)] $*"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }
# logits_check TAG PLAN [VAR=value ...]: teacher-forced logits of PLAN (with those variables
# set) as /tmp/ours_TAG.f32, their accuracy against the references ($OUT/compare_TAG.json),
# and whether they are bit-identical to the default plan's (eval stage) ($OUT/cmp.txt).
logits_check() {
  local tag=$1 plan=$2; shift 2
  env "$@" .devbin/kiln-eval logits --plan "$plan" --cases "$REFS/cases.json" --out "/tmp/ours_$tag.f32" 2>&1 | tee "$OUT/eval_$tag.txt" | tail -2
  python3 scripts/gpu_reference.py compare --out "$REFS" --ours "/tmp/ours_$tag.f32" 2>&1 | tee "$OUT/compare_$tag.json" | tr -d '\n ' | head -c 600; echo
  if [ -f /tmp/ours.f32 ]; then
    if cmp -s /tmp/ours.f32 "/tmp/ours_$tag.f32"; then echo "$tag: teacher-forced logits bit-identical to the default plan's"; else echo "$tag: logits DIFFER from the default plan's"; fi | tee -a "$OUT/cmp.txt"
  fi
}
# plan_with TAG [VAR=value ...] [-- kiln-build flags]: the checkpoint's plan built with those
# variables set (and flags given), at /tmp/engines_TAG/qwen35_4b_random.plan (a kernel knob
# or experiment compiled in).
plan_with() {
  local tag=$1; shift
  local vars=(); while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do vars+=("$1"); shift; done; [ "$#" -gt 0 ] && shift
  env "${vars[@]}" .devbin/kiln-build --model "$CKPT" --out "/tmp/engines_$tag" --name qwen35_4b_random "$@" 2>&1 | tail -1
}
# bench_as TAG FILE PLAN [VAR=value ...] -- [kiln-eval bench flags]: the bench's decode and
# prefill lines with those variables set, each prefixed with TAG, appended to $OUT/FILE.
bench_as() {
  local tag=$1 file=$2 plan=$3; shift 3
  local vars=(); while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do vars+=("$1"); shift; done; shift
  env "${vars[@]}" .devbin/kiln-eval bench --plan "$plan" "$@" 2>&1 | grep -E "decode batch|prefill" | sed "s/^/$tag: /" | tee -a "$OUT/$file"
}
# knob_ab TAG FILE VAR=value BATCHES: a plan built with a kernel build knob against the
# default plan, the same checkpoint: the bench at BATCHES twice each ("TAG default" and "TAG
# VAR=value" lines in $OUT/FILE), the GEMM table test with the knob (bit-identical to the
# other kernels at the same plan), and with refs its logits (bit-identical to the default
# plan's expected).
knob_ab() {
  local tag=$1 file=$2 knob=$3 batches=$4
  plan_with "$tag" "$knob"
  for r in 1 2; do
    bench_as "$tag default" "$file" "$ENG/qwen35_4b_random.plan" -- --batch "$batches" --prefill 16
    bench_as "$tag $knob" "$file" "/tmp/engines_$tag/qwen35_4b_random.plan" -- --batch "$batches" --prefill 16
  done
  for t in .devbin/cuda_kernels*; do [ -x "$t" ] && env "$knob" "$t" gemm_matches --ignored --test-threads=1 --nocapture 2>&1 | grep -E "test result|panicked|differ" | sed "s/^/$tag $knob kernels: /" | tee -a "$OUT/$file"; done
  if [ -f "$REFS/cases.json" ]; then logits_check "$tag" "/tmp/engines_$tag/qwen35_4b_random.plan"; fi
  python3 scripts/ab_table.py "$OUT/$file"
}
# env_ab BASE_TAG TAG FILE VARS BATCHES [TAG2 VARS2 ...]: run-time experiments (environment
# variables the engine reads at load; VARS: one or more space-separated VAR=value) against
# the default, on the default plan: the bench at BATCHES twice each, the variants after
# the default in each round, with refs each variant's logits (bit-identical expected), then
# the A/B table.
env_ab() {
  local base=$1 file=$3 batches=$5
  local variants=("$2" "$4"); shift 5; variants+=("$@")
  local i
  for r in 1 2; do
    bench_as "$base" "$file" "$ENG/qwen35_4b_random.plan" -- --batch "$batches" --prefill 16
    for ((i = 0; i < ${#variants[@]}; i += 2)); do
      # shellcheck disable=SC2086  # VARS splits into its assignments
      bench_as "${variants[i]}" "$file" "$ENG/qwen35_4b_random.plan" ${variants[i + 1]} -- --batch "$batches" --prefill 16
    done
  done
  if [ -f "$REFS/cases.json" ]; then
    for ((i = 0; i < ${#variants[@]}; i += 2)); do
      # shellcheck disable=SC2086
      logits_check "${variants[i]// /_}" "$ENG/qwen35_4b_random.plan" ${variants[i + 1]}
    done
  fi
  python3 scripts/ab_table.py "$OUT/$file"
}
# step_means PORT: the server's mean decode-only step (backend forward, whole scheduler
# step) and inter-token latency from /metrics, to set against the client's TPOT.
step_means() {
  curl -s "localhost:$1/metrics" | python3 -c '
import sys
v = {}
for line in sys.stdin:
    if line.startswith(("kiln:decode_", "sglang:inter_token_latency_seconds_")) and ("_sum" in line or "_count" in line):
        name, val = line.split("{")[0], float(line.split()[-1])
        v[name] = val
for h in ("kiln:decode_forward_seconds", "kiln:decode_step_seconds", "sglang:inter_token_latency_seconds"):
    n, total = v.get(h + "_count", 0), v.get(h + "_sum", 0)
    print(f"{h}: mean {1e3 * total / n:.3f} ms over {n:.0f}" if n else f"{h}: none")'
}
# second_server TAG PORT WORKLOADS [kiln flags ...]: another server on the default plan with
# those flags, bench_serving WORKLOADS with serving's draws ($OUT/serving_TAG.txt, ending
# with its avg_spec_accept_length), then stopped.
second_server() {
  local tag=$1 port=$2 workloads=$3; shift 3
  log "serving with $*"
  KILN_BIN=.devbin/kiln KILN_BUILD_BIN=.devbin/kiln-build KILN_ENGINES="$ENG" ./launch_server.sh --model-path "$CKPT" --port "$port" "$@" > "$OUT/serve_$tag.log" 2>&1 & local pid=$!
  for i in $(seq 1 600); do curl -sf "localhost:$port/health" >/dev/null && break; sleep 0.1; done
  python3 scripts/bench_serving.py --url "http://127.0.0.1:$port" --workloads "$workloads" --num-seq 8 --num 64 2>&1 | tee "$OUT/serving_$tag.txt"
  curl -s "localhost:$port/get_server_info" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("avg_spec_accept_length", d["internal_states"][0].get("avg_spec_accept_length"))' | tee -a "$OUT/serving_$tag.txt"
  step_means "$port" | tee -a "$OUT/serving_$tag.txt"
  kill $pid 2>/dev/null; pkill -f -- "--port $port" 2>/dev/null; sleep 1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if has make && [ ! -f "$CKPT/config.json" ]; then
  log make; t=$(date +%s); python3 scripts/gpu_reference.py make --ckpt "$CKPT" 2>&1 | tail -3; log "make took $(( $(date +%s) - t )) s"
  # A real checkpoint ships its tokenizer; give the random one the bundled Qwen3.5 files.
  cp assets/qwen3_5/tokenizer.json assets/qwen3_5/tokenizer_config.json assets/qwen3_5/chat_template.jinja "$CKPT/"
fi
if has build; then
  log build; t=$(date +%s%N)
  .devbin/kiln-build --model "$CKPT" --out "$ENG" --name qwen35_4b_random 2>&1 | tail -15
  log "kiln-build took $(( ($(date +%s%N) - t) / 1000000 )) ms"; ls -la "$ENG"
fi
if has bench; then
  log bench; .devbin/kiln-eval bench --plan "$ENG/qwen35_4b_random.plan" 2>&1 | grep -v "^\s*$" | tee "$OUT/bench.txt" | tail -8
  .devbin/kiln-eval bench --plan "$ENG/qwen35_4b_random.plan" --batch 1 --ctx 8192 --prefill 8192 2>&1 | grep -v "^\s*$" | tee "$OUT/bench8k.txt" | tail -2
fi
# Accuracy right after speed: a call cut short by its time limit still has both.
# The peer right after our own speed: every ratio needs it from the same call.
if has peer; then
  log peer; python3 -m pip install -q --no-index --no-deps --target /tmp/site .peer/*.whl 2>&1 | tail -2
  PYTHONPATH=/tmp/site python3 .peer/peer_torch_graph.py --batch 1,8,32,64,128,256 --ctx 1024 > "$OUT/peer.txt" 2>&1
  grep -E '"[0-9]+": \{|"ms"' "$OUT/peer.txt" | paste - - 
fi
if has membench; then
  log membench; ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
  NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc); $NVCC -O3 -std=c++17 -arch=sm_${ARCH}a bench/membench.cu -o /tmp/membench 2>&1 | tail -5 && /tmp/membench 2>&1 | tee "$OUT/membench.txt"
fi
if has refs; then
  log refs; t=$(date +%s); python3 scripts/gpu_reference.py refs --ckpt "$CKPT" --out "$REFS" --n "$N" 2>&1 | tail -3; log "refs took $(( $(date +%s) - t )) s"
fi
if has eval; then
  log eval; .devbin/kiln-eval logits --plan "$ENG/qwen35_4b_random.plan" --cases "$REFS/cases.json" --out /tmp/ours.f32 2>&1 | tee "$OUT/eval.txt" | tail -6
  python3 scripts/gpu_reference.py compare --out "$REFS" --ours /tmp/ours.f32 2>&1 | tee "$OUT/compare.json" | tail -40
fi
if has verify; then
  # Issue 9: speculative verification against plain decoding (exact tokens, accepted
  # lengths, bit-identical logits after the commit), and a verify call's time.
  # VERIFY_VARIANTS picks the runs (all by default): default graphs pre by_position bf16_head int4_head split.
  vv() { [ -z "${VERIFY_VARIANTS:-}" ] || [[ " $VERIFY_VARIANTS " == *" $1 "* ]]; }
  VERIFY="--plan $ENG/qwen35_4b_random.plan --drafts 3 --steps 24 --ctx 1024"
  if vv default; then log verify; .devbin/kiln-eval verify $VERIFY --batch 1,4,8 2>&1 | grep -v "^\s*$" | tee "$OUT/verify.txt" | tail -5; fi
  # The same with verify steps launch by launch (graphs are the default).
  if vv graphs; then log "verify (no graphs)"; KILN_VERIFY_GRAPHS=0 .devbin/kiln-eval verify $VERIFY --batch 1,4,8 2>&1 | grep -v "^\s*$" | tee "$OUT/verify_graphs.txt" | tail -5; fi
  # The fused verify with every position's inputs first (KILN_GDN_VERIFY_PRE=1, session 13;
  # its updates' barriers and norms reworked in session 14).
  if vv pre; then log "verify (fused, inputs first)"; KILN_GDN_VERIFY_PRE=1 .devbin/kiln-eval verify $VERIFY --batch 1,4,8 2>&1 | grep -v "^\s*$" | tee "$OUT/verify_pre.txt" | tail -5; fi
  # The verify's GDN one launch per position (KILN_GDN_VERIFY_FUSED=0; the default runs one
  # launch per layer up to 4 sequences since session 13): exact too, and its time.
  if vv by_position; then log "verify (GDN by position)"; KILN_GDN_VERIFY_FUSED=0 .devbin/kiln-eval verify $VERIFY --batch 1,4,8 2>&1 | grep -v "^\s*$" | tee "$OUT/verify_by_position.txt" | tail -5; fi
  # Drafts from the bf16 lm_head (the default since session 14 is its int8 copy):
  # the draft call's time against verify.txt's.
  if vv bf16_head; then log "verify (bf16 draft head)"; KILN_DRAFT_HEAD=bf16 .devbin/kiln-eval verify $VERIFY --batch 1 2>&1 | grep -v "^\s*$" | tee "$OUT/verify_bf16_head.txt" | tail -5; fi
  # Drafts from the int4 copy (session 22, a scale per 128 weights): the draft call's time,
  # and exactness (verification decides every token whatever the table).
  if vv int4_head; then log "verify (int4 draft head)"; KILN_DRAFT_HEAD=int4 .devbin/kiln-eval verify $VERIFY --batch 1,4 2>&1 | grep -v "^\s*$" | tee "$OUT/verify_int4_head.txt" | tail -5; fi
  # The verify's GDN with each head over a cluster of 4 blocks (kiln_gdn_verify_split, session
  # 26) up to 4 sequences: exact, and its time against verify.txt's (run both for an A/B).
  if vv split; then log "verify (GDN split over clusters)"; KILN_GDN_VERIFY_SPLIT_MAX_SEQS=4 .devbin/kiln-eval verify $VERIFY --batch 1,4 2>&1 | grep -v "^\s*$" | tee "$OUT/verify_split.txt" | tail -5; fi
fi
if has profile; then
  log "ncu: per-kernel times of one 1024-token prefill"
  ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file /tmp/ncu.csv \
    .devbin/kiln-eval bench --plan "$ENG/qwen35_4b_random.plan" --batch 1 --ctx 16 --prefill 1024 --iters 1 > /dev/null 2>&1
  # 6 prefills of 1024 tokens (1 warm + 5 timed); the one 16-token prefill and the few
  # decode steps of the run are in the log too (small).
  python3 scripts/ncu_summary.py /tmp/ncu.csv --runs 6 | tee "$OUT/profile.txt" | head -40
fi
if has profile_decode; then
  for b in 1 64; do
    log "ncu: one decode step at batch $b, ctx 1024"
    KILN_PROFILE_DECODE=1 ncu --profile-from-start off --clock-control none \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv --log-file /tmp/ncu_dec$b.csv \
      .devbin/kiln-eval bench --plan "$ENG/qwen35_4b_random.plan" --batch $b --ctx 1024 --prefill 16 --iters 3 > /dev/null 2>&1
    echo "batch $b:" | tee -a "$OUT/profile_decode.txt"
    python3 scripts/ncu_summary.py /tmp/ncu_dec$b.csv | tee -a "$OUT/profile_decode.txt" | head -24
    echo "batch $b, per kernel and grid (the GEMMs per weight):" | tee -a "$OUT/profile_decode.txt"
    python3 scripts/ncu_summary.py /tmp/ncu_dec$b.csv --by-grid | tee -a "$OUT/profile_decode.txt" | grep gemm | head -16
  done
fi
if has stalls; then
  log "ncu: stall reasons of ${STALL_KERNELS:=kiln_attn_prefill|kiln_gdn_prefill}"
  ncu --clock-control none -k "regex:$STALL_KERNELS" -c "${STALL_COUNT:-8}" --section SpeedOfLight --section WarpStateStats \
    --section Occupancy --section LaunchStats .devbin/kiln-eval bench --plan "$ENG/qwen35_4b_random.plan" \
    ${STALL_BENCH:---batch 1 --ctx 16 --prefill 1024 --iters 1} > "$OUT/stalls.txt" 2>&1
  grep -vE "^\s*$|^==PROF==|^\s*-+\s*$|prefill 1024|decode batch|INFO" "$OUT/stalls.txt" | sed -E 's/ +/ /g' | head -300
fi
if has bench_bf16; then
  # One MMA per product on 16-bit GEMM inputs (KILN_ACT=bf16): the step times an fp16 GEMM
  # contract would have (docs/numerics.md), against the default, two runs each.
  log "bench with bf16 GEMM inputs against the default"
  for r in 1 2; do
    bench_as default bench_bf16.txt "$ENG/qwen35_4b_random.plan" -- --batch "${BF16_BATCHES:-1,8,32,64,128,256}"
    bench_as act_bf16 bench_bf16.txt "$ENG/qwen35_4b_random.plan" KILN_ACT=bf16 -- --batch "${BF16_BATCHES:-1,8,32,64,128,256}"
  done
fi
if has f16; then
  # fp16 GEMM operands (kiln-build --gemm-operands f16, docs/numerics.md): fp16 GEMM weights
  # and kernels, one MMA per product, against the default plan: bench at $F16_BATCHES twice
  # each (bench_f16.txt), and with refs its accuracy and invariance (eval_f16.txt,
  # compare_f16.json; its logits differ from the default plan's by design).
  log "fp16 GEMM operands: plan, bench against the default, accuracy"
  plan_with f16 -- --gemm-operands f16
  for r in 1 2; do
    bench_as default bench_f16.txt "$ENG/qwen35_4b_random.plan" -- --batch "${F16_BATCHES:-1,8,32,64,128,256}"
    bench_as gemm_f16 bench_f16.txt /tmp/engines_f16/qwen35_4b_random.plan -- --batch "${F16_BATCHES:-1,8,32,64,128,256}"
  done
  if [ -f "$REFS/cases.json" ]; then logits_check f16 /tmp/engines_f16/qwen35_4b_random.plan; fi
fi
if has bench_tiled; then
  log "bench without the tiled decode GEMM"; KILN_GEMM_TILED=0 .devbin/kiln-eval bench --plan "$ENG/qwen35_4b_random.plan" --batch 8,32,64,128,256 2>&1 | grep "decode batch" | tee "$OUT/bench_tiled.txt"
fi
if has eval_tiled && [ -f "$REFS/cases.json" ]; then
  log "eval without the tiled decode GEMM"; logits_check tiled "$ENG/qwen35_4b_random.plan" KILN_GEMM_TILED=0
fi
if has pdl_early; then
  log "plan with KILN_PDL_EARLY=0"; plan_with early KILN_PDL_EARLY=0
  bench_as pdl_early0 bench_pdl_early.txt /tmp/engines_early/qwen35_4b_random.plan -- --batch 1,8,64
  [ -f "$REFS/cases.json" ] && logits_check pdl_early0 /tmp/engines_early/qwen35_4b_random.plan
fi
if has cmp_prev && [ -f "$REFS/cases.json" ]; then
  for a in .devbin/old_*.tar.xz; do
    [ -f "$a" ] || continue; old=$(basename "$a" .tar.xz); mkdir -p "/tmp/$old"; tar -xJf "$a" -C "/tmp/$old"
    log "logits of a plan built by $old"
    "/tmp/$old/kiln-build" --model "$CKPT" --out "/tmp/engines_$old" --name qwen35_4b_random 2>&1 | tail -1
    # Its own kiln-eval reads the plan (the plan format is the old binary's).
    "/tmp/$old/kiln-eval" logits --plan "/tmp/engines_$old/qwen35_4b_random.plan" --cases "$REFS/cases.json" --out "/tmp/ours_$old.f32" 2>&1 | tail -1
    if cmp -s /tmp/ours.f32 "/tmp/ours_$old.f32"; then echo "$old: teacher-forced logits bit-identical to this commit's"; else echo "$old: logits DIFFER from this commit's"; fi | tee -a "$OUT/cmp.txt"
    # CMP_PREV_BENCH="kiln-eval bench flags": the old plan's speed on this machine too.
    if [ -n "${CMP_PREV_BENCH:-}" ]; then
      "/tmp/$old/kiln-eval" bench --plan "/tmp/engines_$old/qwen35_4b_random.plan" $CMP_PREV_BENCH 2>&1 | grep -E "decode batch|prefill" | sed "s/^/$old: /" | tee -a "$OUT/cmp_bench.txt"
    fi
    rm -rf "/tmp/engines_$old"
  done
fi
if has sweep; then
  log "decode GEMM sweep"; for t in .devbin/cuda_kernels*; do [ -x "$t" ] && KILN_CUDA_BENCH=1 "$t" bench_gemm_sweep --ignored --nocapture 2>&1 | grep SWEEP > "$OUT/sweep.txt"; done; wc -l "$OUT/sweep.txt"
fi
if has attn_pbf16; then
  # Prefill attention with one MMA per product: P's bf16 part only (KILN_ATTN_P_BF16=1), and
  # q's too (KILN_ATTN_Q_BF16=1; docs/numerics.md): prefill 8192 / 1024 against the default
  # plan, then each plan's accuracy.
  for v in "pbf16 KILN_ATTN_P_BF16=1" "qpbf16 KILN_ATTN_P_BF16=1 KILN_ATTN_Q_BF16=1"; do
    read -r tag knobs <<< "$v"
    log "plan with $knobs"; plan_with "$tag" $knobs
    for c in 8192 1024; do
      bench_as default bench_attn_pbf16.txt "$ENG/qwen35_4b_random.plan" -- --batch 1 --ctx $c --prefill $c
      bench_as "$tag" bench_attn_pbf16.txt "/tmp/engines_$tag/qwen35_4b_random.plan" -- --batch 1 --ctx $c --prefill $c
    done
    if [ -f "$REFS/cases.json" ]; then logits_check "attn_$tag" "/tmp/engines_$tag/qwen35_4b_random.plan"; fi
    rm -rf "/tmp/engines_$tag"
  done
fi
if has attn_parts; then
  for p in 32 64 128; do
    log "decode at ctx 8192 with KILN_ATTN_MAX_PARTS=$p"; KILN_ATTN_MAX_PARTS=$p .devbin/kiln-eval bench --plan "$ENG/qwen35_4b_random.plan" --batch 1,8 --ctx 8192 --prefill 16 2>&1 | grep "decode batch" | sed "s/^/parts $p: /" | tee -a "$OUT/attn_parts.txt"
  done
fi
if has timeline; then
  log "timeline: decode steps at batch ${TL_BATCH:=1,8,64} replayed from their graphs, every kernel's blocks timed (a KILN_TIMELINE=1 plan)"
  plan_with tl KILN_TIMELINE=1
  .devbin/kiln-eval timeline --plan /tmp/engines_tl/qwen35_4b_random.plan --batch "$TL_BATCH" --prefill "${TL_PREFILL:-1024}" --out "$OUT/timeline.jsonl" \
    --blocks "$OUT/timeline_blocks.jsonl" > "$OUT/timeline.txt" 2>&1
  xz -f "$OUT/timeline_blocks.jsonl"  # every block of every launch: large
  # The log keeps each batch's head line, its first 24 launches (the embedding and the
  # first layers) and the per-kernel sums; timeline.txt and .jsonl have every launch.
  awk '/^(decode|prefill)/ {n = 0; print; next} /^  +[0-9]+ / {if (n++ < 24) print; next} {print}' "$OUT/timeline.txt" | grep -v "^\s*$"
fi
if has tl_env; then
  # The same timeline with run-time variables set (same plan): TL_ENV, default the register
  # GEMM's blocks packed; then the per-block summary of TL_KERNEL in both.
  : "${TL_ENV:=KILN_GEMM_REG_SPREAD=0}"
  log "timeline at batch ${TL_BATCH:=1,8,64} with $TL_ENV"
  [ -f /tmp/engines_tl/qwen35_4b_random.plan ] || plan_with tl KILN_TIMELINE=1
  # shellcheck disable=SC2086  # TL_ENV splits into its assignments
  env $TL_ENV .devbin/kiln-eval timeline --plan /tmp/engines_tl/qwen35_4b_random.plan --batch "$TL_BATCH" --prefill "${TL_PREFILL:-1024}" \
    --out "$OUT/timeline_env.jsonl" --blocks "$OUT/timeline_env_blocks.jsonl" > "$OUT/timeline_env.txt" 2>&1
  xz -f "$OUT/timeline_env_blocks.jsonl"
  grep -E "^(decode|prefill)|^    kiln" "$OUT/timeline_env.txt"
  for f in timeline_blocks timeline_env_blocks; do
    [ -f "$OUT/$f.jsonl.xz" ] && python3 scripts/timeline_blocks.py "$OUT/$f.jsonl.xz" --kernel "${TL_KERNEL:-kiln_gemm_xf32_yf32_m8}" --gx "${TL_GX:-40}" > "$OUT/$f.summary.txt" 2>&1 && head -40 "$OUT/$f.summary.txt"
  done
fi
if has tl_verify; then
  log "timeline of a verify step (3 drafts) beside the decode step, batch 1, GDN by position and fused"
  [ -f /tmp/engines_tl/qwen35_4b_random.plan ] || plan_with tl KILN_TIMELINE=1
  KILN_GDN_VERIFY_FUSED=0 .devbin/kiln-eval timeline --plan /tmp/engines_tl/qwen35_4b_random.plan --batch 1 --verify-drafts 3 > "$OUT/timeline_verify.txt" 2>&1
  KILN_GDN_VERIFY_FUSED=1 .devbin/kiln-eval timeline --plan /tmp/engines_tl/qwen35_4b_random.plan --batch 1 --verify-drafts 3 > "$OUT/timeline_verify_fused.txt" 2>&1
  grep -h -E "^(decode|verify)|^    kiln" "$OUT/timeline_verify.txt" "$OUT/timeline_verify_fused.txt"
fi
if has mma_rate; then
  log "mma_rate: mma.sync throughput by warps per SM and chains"
  nvcc -O3 -gencode arch=compute_90a,code=sm_90a bench/mma_rate.cu -o /tmp/mma_rate && /tmp/mma_rate 2>&1 | tee "$OUT/mma_rate.txt"
fi
if has tiled_stage; then
  log "tiled_stage: the wide tiled GEMM's stage piece by piece"
  nvcc -O3 -gencode arch=compute_90a,code=sm_90a bench/tiled_stage.cu -o /tmp/tiled_stage && /tmp/tiled_stage 2>&1 | tee "$OUT/tiled_stage.txt"
fi
if has mma_perm; then
  log "mma_perm: mma.sync bits under permuted k positions"
  nvcc -O3 -gencode arch=compute_90a,code=sm_90a bench/mma_perm.cu -o /tmp/mma_perm && /tmp/mma_perm 2>&1 | tee "$OUT/mma_perm.txt"
fi
if has pf_budget; then
  # The early L2 weight prefetch's bytes per GEMM (KILN_PF_BUDGET_MB; 0, off, since session 26:
  # 0 against 24 was 1-4 % faster at batch 1-8 on the H100, 40 MB 4-5 % slower).
  # A budget above 24 MB needs more columns per row than KILN_PF_K's 256 (gate_up takes 224
  # at 24 MB): PF_K sets it for these plans.
  log "L2 prefetch budget per GEMM: ${PF_BUDGETS:=24} MB against the default 0 (KILN_PF_K ${PF_K:-256})"
  (
    if [ -n "${PF_K:-}" ]; then export KILN_PF_K=$PF_K; fi
    for mb in $PF_BUDGETS; do knob_ab "pf$mb" pf_budget.txt "KILN_PF_BUDGET_MB=$mb" "${PF_BATCHES:-1,4,8}"; done
  )
fi
if has mixed; then
  log "mixed steps: bf16 GEMM inputs written directly against converted"
  for run in 1 2; do
    for v in 1 0; do
      bench_as "bf16_inputs=$v run $run" mixed.txt "$ENG/qwen35_4b_random.plan" KILN_MIXED_BF16_INPUTS=$v -- \
        --batch 16,64 --ctx 1024 --prefill 2048 --iters 10 --mixed "${MIXED:-16:2048,64:2048,64:512}"
    done
  done
fi
if has norm_warps; then
  # The deferred-sum cluster norm with a thread per two vectors (KILN_GEMM_DEFER_CLUSTER_WARPS=0)
  # against the default warp per vector (both of a thread's vectors in flight at once).
  log "cluster norm: a thread per two vectors against a warp per vector"
  env_ab "default" "two vectors a thread" norm_warps.txt KILN_GEMM_DEFER_CLUSTER_WARPS=0 "${PF_BATCHES:-1,4,8}"
fi
if has tiled_wide; then
  # The tiled GEMM's 256-row blocks, one per SM (KILN_GEMM_TILED_WIDE_MIN_M: from that many
  # rows, 0 never; the default 64 since session 22) against 128-row blocks everywhere.
  log "tiled GEMM: 256-row blocks from 64 rows (default) against never and from 128"
  env_ab "default" "narrow" tiled_wide.txt KILN_GEMM_TILED_WIDE_MIN_M=0 "${WIDE_BATCHES:-32,64,128,256}" "wide from 128" KILN_GEMM_TILED_WIDE_MIN_M=128
fi
if has tiled_paired; then
  # The wide tiled GEMM with one cp.async wait and barrier per two stages (KILN_GEMM_TILED_PAIRED=1,
  # kiln_gemm_tiled_w2_*, session 26) against the default: the same bits (GEMM table test,
  # logits), time at the batches the wide kernel takes.
  log "tiled GEMM: paired barriers against one per stage"
  env_ab "default" "paired" tiled_paired.txt KILN_GEMM_TILED_PAIRED=1 "${WIDE_BATCHES:-64,128,256}"
fi
if has reg_spread; then
  # The register GEMM's blocks spread over every SM (the default since session 21: unused
  # dynamic shared memory caps them at ceil(blocks / SMs) per SM) against packed by the block
  # scheduler (KILN_GEMM_REG_SPREAD=0: up to 6 per SM by registers): the same kernel and grid.
  log "register GEMM: blocks packed by the block scheduler against spread over every SM (default)"
  env_ab "default" "packed" reg_spread.txt KILN_GEMM_REG_SPREAD=0 "${SPREAD_BATCHES:-1,4}"
fi
if has gate_up_sum; then
  # Session 17: the MLP's gate_up leaves its split-K sum to silu_mul (the default) against
  # the GEMM's own last-block sum (KILN_GEMM_DEFER_GATE_UP=0): bench at batch 1-256 twice
  # each, logits (bit-identical expected), the two kernel tests.
  log "gate_up's split sum in silu_mul against the GEMM's own"
  env_ab "gate_up sum in silu_mul" "gate_up sum in GEMM" gate_up_sum.txt KILN_GEMM_DEFER_GATE_UP=0 1,8,32,64,128,256
  for t in .devbin/cuda_kernels*; do [ -x "$t" ] && "$t" silu_mul_parts deferred_gate_up --ignored --test-threads=1 --nocapture 2>&1 | grep -E "^test |test result|panicked|differ" | sed "s/^/gate_up_sum tests: /" | tee -a "$OUT/gate_up_sum.txt"; done
fi
if has packed; then
  # The decode weights packed at load (session 16; the default where memory allows since
  # session 17, a second copy the register and shared-x kernels read with contiguous
  # per-warp loads) against row-major (KILN_GEMM_PACKED=0): bench at batch 1-32 twice
  # each, logits (bit-identical expected), the kernel and backend tests, and exact
  # speculation with it.
  log "packed GEMM weights against row-major (KILN_GEMM_PACKED=0)"
  env_ab packed row-major packed.txt KILN_GEMM_PACKED=0 1,4,8,16,32
  for t in .devbin/cuda_kernels* .devbin/cuda_backend*; do [ -x "$t" ] && "$t" packed --ignored --test-threads=1 --nocapture 2>&1 | grep -E "^test |test result|panicked" | sed "s/^/packed tests: /" | tee -a "$OUT/packed.txt"; done
  KILN_GEMM_PACKED=1 .devbin/kiln-eval verify --plan "$ENG/qwen35_4b_random.plan" --drafts 3 --steps 24 --ctx 1024 --batch 1,4 2>&1 | grep -v "^\s*$" | tee -a "$OUT/packed.txt" | tail -4
fi
if has sxw; then
  log "shared-x GEMM: whole-split x staging against the ring, and for every weight"
  plan_with sxw0 KILN_GEMM_SXW_MAX_BYTES=0
  for r in 1 2; do
    bench_as "sxw whole" sxw.txt "$ENG/qwen35_4b_random.plan" -- --batch 1,8,16 --prefill 16
    bench_as "sxw ring" sxw.txt /tmp/engines_sxw0/qwen35_4b_random.plan -- --batch 1,8,16 --prefill 16
    bench_as "sxw whole, every weight" sxw.txt "$ENG/qwen35_4b_random.plan" KILN_GEMM_SX_MIN_N=0 -- --batch 1,8,16 --prefill 16
  done
  logits_check sxw0 /tmp/engines_sxw0/qwen35_4b_random.plan
  logits_check sxall "$ENG/qwen35_4b_random.plan" KILN_GEMM_SX_MIN_N=0
fi
if has reg_p; then
  # The m8/m16 register GEMM with 8 chunks of 32 k in flight per warp (default 4).
  knob_ab regp8 reg_p.txt KILN_GEMM_REG_P=8 1,8,16
fi
if has x_ahead; then
  # The m8 register GEMM (out/o/down at batch 1-7) with each chunk's x loaded two chunks
  # ahead (session 15; the default since session 17) against x at the chunk.
  knob_ab xa0 x_ahead.txt KILN_GEMM_X_AHEAD=0 1,4,8
fi
if has splits; then
  # The K-split targets again with the deferred split sum (session 12): more splits cost
  # the out/o/down launches no tail now. KILN_GEMM_WARPS (weights below 12288 columns,
  # default 16) and KILN_GEMM_WIDE_WARPS (qkvz, gate_up; default 24), the same plan (the
  # split is chosen at load; each target is its own arithmetic, shared by every row).
  for r in 1 2; do
    for w in 16 20 24 12; do bench_as "warps $w" splits.txt "$ENG/qwen35_4b_random.plan" KILN_GEMM_WARPS=$w -- --batch 1,8,32,64,128 --prefill 16; done
  done
  for ww in 32 16; do bench_as "wide_warps $ww" splits.txt "$ENG/qwen35_4b_random.plan" KILN_GEMM_WIDE_WARPS=$ww -- --batch 1,8,32,64,128 --prefill 16; done
fi
if has knobs; then
  log "kernel knobs"; P="$ENG/qwen35_4b_random.plan"
  knob() { bench_as "$1" knobs.txt "$2" "${@:3}"; }  # TAG PLAN [VAR=value ...] -- bench flags
  knob default "$P" -- --batch 1,8,32,64
  knob sx_all "$P" KILN_GEMM_SX_MIN_N=0 -- --batch 1,8
  for w in 12 20 24; do knob "warps$w" "$P" KILN_GEMM_WARPS=$w -- --batch 1,8,64; done
  knob wide_warps32 "$P" KILN_GEMM_WIDE_WARPS=32 -- --batch 1,32,64
  for v in "pf_k512 1,8 KILN_PF_K=512" "pf_budget48 1,8 KILN_PF_BUDGET_MB=48" "pf_both 1,8 KILN_PF_K=512 KILN_PF_BUDGET_MB=48" \
           "pdl_rows64 32,64 KILN_PDL_EARLY_ROWS=64"; do
    set -- $v; tag=$1 batches=$2; shift 2
    plan_with "$tag" "$@"; knob "$tag" "/tmp/engines_$tag/qwen35_4b_random.plan" -- --batch "$batches"; rm -rf "/tmp/engines_$tag"
  done
  plan_with v_early KILN_ATTN_V_EARLY=1
  for p in "$P" /tmp/engines_v_early/qwen35_4b_random.plan; do
    tag=$([ "$p" = "$P" ] && echo default || echo v_early)
    knob "${tag}_8k" "$p" -- --batch 1,8 --ctx 8192 --prefill 16
    knob "${tag}_b64" "$p" -- --batch 64
  done
  [ -f "$REFS/cases.json" ] && logits_check v_early /tmp/engines_v_early/qwen35_4b_random.plan
  rm -rf /tmp/engines_v_early
  # The V-early decode attention kernel against its CPU twin (the test compiles the kernels
  # with the environment's knobs).
  for t in .devbin/cuda_kernels*; do [ -x "$t" ] && KILN_ATTN_V_EARLY=1 "$t" attn_decode --ignored --nocapture 2>&1 | grep -E "^test |rel err|panicked" | sed "s/^/v_early: /" | tee -a "$OUT/knobs.txt"; done
  for r in 64 128; do
    for c in 8192 1024; do knob "attn_rows$r" "$P" KILN_ATTN_PREFILL_ROWS=$r -- --batch 1 --ctx $c --prefill $c; done
  done
  [ -f "$REFS/cases.json" ] && logits_check attn_rows128 "$P" KILN_ATTN_PREFILL_ROWS=128
  # Launch-by-launch steps (prefill) with programmatic dependent launch (KILN_PDL_STREAM=1;
  # the attn_rows64 lines above are the default's): same kernels, so the same bits.
  for c in 8192 1024; do knob pdl_stream "$P" KILN_PDL_STREAM=1 -- --batch 1 --ctx $c --prefill $c; done
  [ -f "$REFS/cases.json" ] && logits_check pdl_stream "$P" KILN_PDL_STREAM=1
fi
if has nopdl; then
  log "bench with decode graphs captured without PDL"; KILN_PDL=0 .devbin/kiln-eval bench --plan "$ENG/qwen35_4b_random.plan" --batch 1,8,64 2>&1 | grep "decode batch" | tee "$OUT/bench_nopdl.txt"
fi
if has defer_sum; then
  # Session 12: out/o/down leave their split-K sum to the next add_rmsnorm (the default)
  # against the GEMM summing it (KILN_GEMM_DEFER_SUM=0), the same plan: every batch twice,
  # the kernel tests of both paths, logits (bit-identical expected).
  for t in .devbin/cuda_kernels*; do [ -x "$t" ] && "$t" deferred_split_sum add_rmsnorm_parts --ignored --test-threads=1 --nocapture 2>&1 | grep -E "test result|panicked|identical: false|rel err" | tail -8 | sed "s/^/defer_sum kernels: /" | tee -a "$OUT/defer_sum.txt"; done
  for r in 1 2; do
    for v in 1 0; do bench_as "defer_sum $v" defer_sum.txt "$ENG/qwen35_4b_random.plan" KILN_GEMM_DEFER_SUM=$v -- --batch 1,8,16,32,64,128,256 --prefill 16; done
    # The one-block norm at small M too (the cluster norm's baseline).
    bench_as "defer_sum 1 cluster_max_m 0" defer_sum.txt "$ENG/qwen35_4b_random.plan" KILN_GEMM_DEFER_CLUSTER_MAX_M=0 -- --batch 1,8,16 --prefill 16
  done
  [ -f "$REFS/cases.json" ] && logits_check defer0 "$ENG/qwen35_4b_random.plan" KILN_GEMM_DEFER_SUM=0
fi
if has cluster_norm; then
  # Session 15: the deferred split-K sums' norm as clusters of 8 one-warp blocks per row
  # at every M (KILN_GEMM_DEFER_CLUSTER_MAX_M=256) against the default (clusters up to 16
  # rows, one block per row above): batch 32-256 twice each, then logits of both
  # (bit-identical expected: the same vectors through the same add_rmsnorm body).
  for r in 1 2; do
    for v in 16 256; do bench_as "cluster_max_m $v" cluster_norm.txt "$ENG/qwen35_4b_random.plan" KILN_GEMM_DEFER_CLUSTER_MAX_M=$v -- --batch 32,64,128,256 --prefill 16; done
  done
  [ -f "$REFS/cases.json" ] && logits_check cluster256 "$ENG/qwen35_4b_random.plan" KILN_GEMM_DEFER_CLUSTER_MAX_M=256
fi
if has ncu_src; then
  # Where the warps of a kernel stall, instruction by instruction: ncu's full set for the
  # tiled GEMM at batch 64, then for the prefill's GDN prep, scan and attention (a
  # 2048-token chunk; -c 7 reaches layer 3's attention); per run the source page (SASS, one row per instruction with its stall samples)
  # as CSV and the details page ($OUT/ncu_src_<tag>_*).
  ncu_src_run() {
    local tag=$1 kernels=$2 count=$3; shift 3
    ncu ${NCU_EXTRA:-} --clock-control none --set full --import-source no -k "regex:$kernels" -c "$count" -f -o "/tmp/ncu_src_$tag" \
      .devbin/kiln-eval bench --plan "$ENG/qwen35_4b_random.plan" "$@" > "$OUT/ncu_src_${tag}_run.txt" 2>&1
    ncu -i "/tmp/ncu_src_$tag.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_src_${tag}_sass.csv" 2> "$OUT/ncu_src_${tag}_err.txt"
    ncu -i "/tmp/ncu_src_$tag.ncu-rep" --page details --print-details all > "$OUT/ncu_src_${tag}_details.txt" 2>> "$OUT/ncu_src_${tag}_err.txt"
    wc -l "$OUT"/ncu_src_"$tag"_*; tail -3 "$OUT/ncu_src_${tag}_err.txt"
  }
  # NCU_SRC: which runs (default "tiled prefill"; gdn_decode: the fused GDN decode step at batch 64).
  has_src() { [[ " ${NCU_SRC:-tiled prefill} " == *" $1 "* ]]; }
  has_src tiled && ncu_src_run tiled kiln_gemm_tiled_xf32_yf32 2 --batch 64 --ctx 1024 --prefill 16 --iters 2
  has_src prefill && ncu_src_run prefill "${SRC_PREFILL_KERNELS:-kiln_attn_prefill_r128|kiln_gdn_prefill_prep|kiln_gdn_prefill_scan}" "${SRC_PREFILL_COUNT:-7}" --batch 1 --ctx 16 --prefill 2048 --iters 1
  # tiled256: the first layer's four tiled GEMMs (qkvz, out, gate_up, down) at batch 256.
  has_src tiled256 && KILN_GEMM_TILED_WIDE_MIN_M=0 ncu_src_run tiled256 kiln_gemm_tiled_xf32 4 --batch 256 --ctx 1024 --prefill 16 --iters 2
  # tw256: the same four GEMMs through the 256-row tiled kernel (KILN_GEMM_TILED_WIDE_MIN_M).
  has_src tw256 && KILN_GEMM_TILED_WIDE_MIN_M=17 ncu_src_run tw256 kiln_gemm_tiled_w_xf32 4 --batch 256 --ctx 1024 --prefill 16 --iters 2
  has_src gdn_decode && ncu_src_run gdn_decode kiln_gdn_decode_f32_f32 2 --batch 64 --ctx 1024 --prefill 16 --iters 2
  # b1: the batch-1 step's wide GEMM (shared-x m16: qkvz, then gate_up) and the register m8
  # one (out, then down) of the first layer, as the step launches them.
  # (Only the last bench step is profiled: the prefills before it run skinny GEMMs too.)
  has_src b1 && KILN_PROFILE_DECODE=1 NCU_EXTRA="--profile-from-start off" ncu_src_run b1 "kiln_gemm_sx_xf32_yf32_m16|kiln_gemm_xf32_yf32_m8" 4 --batch 1 --ctx 1024 --prefill 16 --iters 2
fi
if has tiled_min; then
  # The tiled GEMM for small batches too (session 10: its fragments are plain shared loads).
  for mm in 17 9 1; do
    bench_as "tiled_min_m $mm" bench_tiled_min.txt "$ENG/qwen35_4b_random.plan" KILN_GEMM_TILED_MIN_M=$mm -- --batch 1,8,16,24 --prefill 16
  done
fi
if has nograph; then
  log "bench without CUDA graphs"; KILN_CUDA_GRAPHS=0 .devbin/kiln-eval bench --plan "$ENG/qwen35_4b_random.plan" --batch 1,32 --prefill 64 2>&1 | grep "decode batch"
fi
if has kernels; then
  # KERNEL_TESTS: name filters (e.g. "gemm add_rmsnorm"); all tests by default.
  log "kernel tests"; for t in .devbin/cuda_kernels*; do [ -x "$t" ] && "$t" ${KERNEL_TESTS:-} --ignored --test-threads=1 --nocapture > "$OUT/kernels.txt" 2>&1; grep -E "^test |test result|panicked|rel err|bit-identical" "$OUT/kernels.txt" | tail -70
    [ "${KERNEL_BENCH:-1}" = 1 ] && KILN_CUDA_BENCH=1 "$t" bench_gdn_prefill bench_kernels --ignored --test-threads=1 --nocapture 2>&1 | grep BENCH | tee "$OUT/kernel_bench.txt"
  done
fi
if has backend; then
  log "cuda backend vs cpu backend on the toy model"; for t in .devbin/cuda_backend*; do [ -x "$t" ] && "$t" ${BACKEND_TESTS:-} --ignored --test-threads=1 --nocapture 2>&1 | tee "$OUT/backend.txt" | grep -E "^test |test result|panicked" ; done
fi
if has eval_bf16; then
  log "eval with bf16 GEMM inputs"; logits_check bf16 "$ENG/qwen35_4b_random.plan" KILN_ACT=bf16
fi
if has serve; then
  log serve; t=$(date +%s%N)
  KILN_BIN=.devbin/kiln KILN_BUILD_BIN=.devbin/kiln-build KILN_ENGINES="$ENG" ./launch_server.sh --model-path "$CKPT" --port 30111 --enable-cache-report > "$OUT/serve.log" 2>&1 &
  for i in $(seq 1 600); do curl -sf localhost:30111/health >/dev/null && break; sleep 0.1; done
  log "launch to /health 200: $(( ($(date +%s%N) - t) / 1000000 )) ms"
  grep -h "speculative decoding (auto)" "$OUT/serve.log" | sed 's/.*speculative/speculative/' | head -2
  curl -s localhost:30111/generate -d '{"input_ids":[1,2,3,4],"sampling_params":{"temperature":0,"max_new_tokens":8}}' | head -c 600; echo
  if has serving; then
    log "bench_serving (sequential, 16 and 64 in flight; inputs 32..4000, outputs 64..512, greedy; 16 chats sharing a 1500-token system prompt, 4 turns)"
    python3 scripts/bench_serving.py --url http://127.0.0.1:30111 --workloads seq,c16,c64,shared16 --num-seq 8 --num 64 2>&1 | tee "$OUT/serving.txt"
  fi
  if has serving_constrained; then
    log "bench_serving c16 with half the requests constrained (regex)"
    python3 scripts/bench_serving.py --url http://127.0.0.1:30111 --workloads c16 --num 64 --constrained 0.5 2>&1 | tee "$OUT/serving_constrained.txt"
  fi
  if has soak; then
    log "soak ${SOAK_S:=240} s"; SPID=$(pgrep -f "devbin/kiln serve" | head -1)
    python3 scripts/soak.py --url http://127.0.0.1:30111 --duration "$SOAK_S" --concurrency 32 --pid "${SPID:-0}" 2>&1 | tee "$OUT/soak.txt" | grep -E "^soak|sample" | tail -8
  fi
  kill %1; tail -5 "$OUT/serve.log"
fi
if has serving_steps; then second_server steps 30116 seq; fi
if has serving_fcfs; then second_server fcfs 30113 seq,c16,c64 --schedule-policy fcfs; fi
if has serving_chunk; then second_server chunk 30115 seq,c16,c64 --chunked-prefill-size "${CHUNK:=8192}"; fi
if has serving_mtp; then second_server mtp 30114 seq,c16 --speculative-algorithm NEXTN; fi
if has serving_mtp_full; then KILN_MTP_FULL_UPKEEP=1 second_server mtp_full 30116 seq,c16 --speculative-algorithm NEXTN; fi
if has wheel_nvrtc; then
  log "issue 11: plan built with NVRTC found only through the pip wheel"
  mkdir -p /tmp/hidden_nvrtc
  for f in /usr/local/cuda*/targets/*/lib/libnvrtc* /usr/local/cuda*/lib64/libnvrtc* /usr/lib/x86_64-linux-gnu/libnvrtc*; do
    [ -e "$f" ] && echo "$f" >> /tmp/hidden_nvrtc/list && mv "$f" "/tmp/hidden_nvrtc/$(echo "$f" | tr / _)"
  done
  ldconfig; echo "loader cache now: $(ldconfig -p | grep -c nvrtc) nvrtc entries"
  WSITE=$(python3 -c 'import sys,glob; print(" ".join(p for p in sys.path if glob.glob(p+"/nvidia/*/lib/libnvrtc.so*")))')
  if [ -z "$WSITE" ] && [ -f .devbin/nvrtc13.tar.xz ]; then
    mkdir -p /tmp/wheel/site-packages && tar -xJf .devbin/nvrtc13.tar.xz -C /tmp/wheel/site-packages
    export PYTHONPATH=/tmp/wheel/site-packages${PYTHONPATH:+:$PYTHONPATH}; WSITE="/tmp/wheel/site-packages (carried nvidia-cuda-nvrtc 13.0 wheel)"
  fi
  echo "python3's site-packages with an NVRTC wheel: ${WSITE:-none}"
  t=$(date +%s%N)
  KILN_BIN=.devbin/kiln KILN_BUILD_BIN=.devbin/kiln-build KILN_ENGINES=/tmp/engines_wheel ./launch_server.sh --model-path "$CKPT" --port 30112 > "$OUT/wheel_serve.log" 2>&1 & WPID=$!
  for i in $(seq 1 1200); do curl -sf localhost:30112/health >/dev/null && break; sleep 0.1; done
  log "wheel NVRTC: launch (plan build included) to /health 200: $(( ($(date +%s%N) - t) / 1000000 )) ms"
  grep -iE "nvrtc|cublas|driver|libcuda" "$OUT/wheel_serve.log" | head -12
  curl -s localhost:30112/generate -d '{"input_ids":[1,2,3,4],"sampling_params":{"temperature":0,"max_new_tokens":8}}' | head -c 400; echo
  kill $WPID 2>/dev/null; pkill -f -- "--port 30112" 2>/dev/null; sleep 1
  while read -r f; do mv "/tmp/hidden_nvrtc/$(echo "$f" | tr / _)" "$f"; done < /tmp/hidden_nvrtc/list; rm -f /tmp/hidden_nvrtc/list; ldconfig
fi
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
mkdir -p docs/perf
python3 scripts/perf_record.py --out "$OUT" --commit "${KILN_COMMIT:-unknown}" --gpu "$GPU_NAME" --append docs/perf/runs.jsonl | tee "$OUT/run.json"
log done
