#!/usr/bin/env python3
"""One JSON line per device run (docs/perf/runs.jsonl), built from what
scripts/device_run.sh left in its output folder:

  bench.txt      kiln-eval bench (decode batches at ctx 1024, prefill 1024)
  bench8k.txt    kiln-eval bench --batch 1 --ctx 8192 --prefill 8192
  peer.txt       shared/bench/peer_torch_graph.py (its last JSON object; copy bandwidth)
  compare.json   scripts/gpu_reference.py compare (logits error, agreement by margin)
  compare_TAG.json, eval_TAG.txt   the same for another plan (stage f16: the fp16 GEMM
                 plan): `correctness_by_plan` {TAG: {...}}
  eval.txt       kiln-eval logits (batch and mixed-step invariance lines)
  verify.txt     kiln-eval verify (speculative verification: exact, ms per call; the
                 MTP draft, oracle and adversarial costs: issue 9's `mtp` object)
  serving.txt    scripts/bench_serving.py (one "workload {json}" line per workload)
  *.txt          the A/B stages' bench lines ("TAG: decode batch B ctx C[ + prefill P]: median
                 X ms", device_run.sh bench_as): `ab_ms` {file stem: {TAG: {B or B+P: [X, ...]}}}
  kernels.txt, backend.txt   the GPU tests' "test result" lines: `gpu_tests`
  mma_rate.txt, tiled_stage.txt   bench/*.cu: `mma_rate_tflops`, `tiled_stage_us_per_stage`

Missing files leave their fields out; nothing is invented. Usage:
  perf_record.py --out DIR --commit SHA --gpu NAME [--append docs/perf/runs.jsonl]
"""
import argparse
import datetime
import json
import os
import re


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def last_json_object(text):
    """The last top-level {...} in text (a script may print lines around it)."""
    end = text.rfind("}")
    depth = 0
    for i in range(end, -1, -1):
        depth += text[i] == "}"
        depth -= text[i] == "{"
        if depth == 0:
            return json.loads(text[i:end + 1])
    raise ValueError("no JSON object")


def parse_bench(text, key_ctx=None):
    decode, prefill = {}, {}
    for m in re.finditer(r"decode batch (\d+) ctx (\d+): median ([0-9.]+) ms/step", text):
        if key_ctx is None or int(m.group(2)) == key_ctx:
            decode[m.group(1)] = float(m.group(3))
    for m in re.finditer(r"prefill (\d+) tokens: median ([0-9.]+) ms", text):
        prefill[m.group(1)] = float(m.group(2))
    return decode, prefill


def parse_compare(rep):
    agree, hf = {}, {}
    for k, v in rep["agreement_with_fp32"].items():
        key = k.lstrip(">")
        key = "0" if float(key) == 0 else key
        agree[key], hf[key] = v["ours"], v["hf_bf16"]
    return {"rel_err": rep["rel_err_vs_fp32"]["ours"], "hf_bf16_rel_err": rep["rel_err_vs_fp32"]["hf_bf16"],
            "agree": agree, "hf_bf16_agree": hf, "nan": rep.get("nan_in_ours")}


# Acceptance lengths (tokens per cycle) issue 9 projects the time per token at.
ACCEPT_LENGTHS = ("2.5", "2.8", "3.2")


def parse_mtp(verify):
    """Issue 9's `mtp` object from kiln-eval verify's text: the draft's cost, verify calls
    by batch, the oracle's (every draft accepted) and the adversarial (none) time per
    token, and the projected time per token at ACCEPT_LENGTHS from the oracle's measured
    cycle (k drafts + one verify, host work included: oracle ms x (k + 1))."""
    mtp = {}
    for m in re.finditer(r"a draft of (\d+) MTP steps over the first (\d+) ids: median ([\d.]+) ms", verify):
        if not mtp:  # the first line is the full vocabulary's
            mtp["draft_steps"], mtp["draft_ms"] = int(m.group(1)), float(m.group(3))
        mtp.setdefault("draft_ms_by_vocab", {})[m.group(2)] = float(m.group(3))
    rows = re.findall(r"verify batch (\d+) .*?verify median ([\d.]+) ms", verify)
    if rows:
        mtp["verify_ms"] = {b: float(v) for b, v in rows}
    for key, name in (("plain_tpot_ms", r"plain greedy"), ("adversarial_tpot_ms", r"Adversarial drafts \(\d+ per cycle\):")):
        m = re.search(name + r" ([\d.]+) ms per token", verify)
        if m:
            mtp[key] = float(m.group(1))
    oracle = re.search(r"Oracle drafts \((\d+) per cycle\): ([\d.]+) ms per token", verify)
    if oracle:
        mtp["oracle_tpot_ms"] = float(oracle.group(2))
        cycle = mtp["oracle_tpot_ms"] * (int(oracle.group(1)) + 1)
        mtp["cycle_ms"] = round(cycle, 3)
        mtp["projected_tpot_ms"] = {a: round(cycle / float(a), 3) for a in ACCEPT_LENGTHS}
    return mtp


AB_LINE = re.compile(r"^(.+?): (?:mixed step: )?decode batch (\d+) ctx \d+(?: \+ prefill (\d+))?: median ([\d.]+)", re.M)


def parse_ab(text):
    """The bench lines of an A/B file, by tag and batch (B, or B+P for a mixed step), in order."""
    ab = {}
    for tag, b, p, ms in AB_LINE.findall(text):
        key = b if not p else f"{b}+{p}"
        ab.setdefault(tag.strip(), {}).setdefault(key, []).append(float(ms))
    return ab


def correctness(out, suffix):
    """compare{suffix}.json and eval{suffix}.txt: error, agreement and invariance ({} if absent)."""
    c = {}
    compare = read(os.path.join(out, f"compare{suffix}.json"))
    if compare:
        c = parse_compare(last_json_object(compare))
    ev = read(os.path.join(out, f"eval{suffix}.txt"))
    if ev:
        inv = re.findall(r"batch invariance \(.*?among (\d+) others\): (\w+)", ev)
        if inv:
            c["batch_invariant"] = all(r == "identical" for _, r in inv)
            c["batch_invariant_sizes"] = [int(n) + 1 for n, _ in inv]
        mixed = re.search(r"mixed-step invariance \(.*?\): (.*)", ev)
        if mixed:
            c["mixed_invariant"] = mixed.group(1).startswith("bit-identical")
    return c


def record(out, commit, gpu):
    line = {"date": datetime.date.today().isoformat(), "commit": commit, "gpu": gpu}
    bench = read(os.path.join(out, "bench.txt"))
    if bench:
        line["decode_ms"], line["prefill_ms"] = parse_bench(bench, 1024)
    bench8k = read(os.path.join(out, "bench8k.txt"))
    if bench8k:
        d, p = parse_bench(bench8k, 8192)
        if "1" in d:
            line["decode_ms_ctx8192"] = d["1"]
        line.setdefault("prefill_ms", {}).update(p)
    peer = read(os.path.join(out, "peer.txt"))
    if peer:
        rep = last_json_object(peer)
        line["peer_ms"] = {str(b): v["ms"] for b, v in rep["steps"].items()}
        line["copy_tbps"] = round(rep["copy_bw_TBps"], 3)
    c = correctness(out, "")
    if c:
        line["correctness"] = c
    # Another plan's accuracy (device_run.sh logits_check TAG: compare_TAG.json, eval_TAG.txt),
    # e.g. the fp16 GEMM plan's (stage f16).
    tags = sorted(n[len("compare_"):-len(".json")] for n in (os.listdir(out) if os.path.isdir(out) else [])
                  if n.startswith("compare_") and n.endswith(".json"))
    variants = {t: correctness(out, "_" + t) for t in tags}
    if any(variants.values()):
        line["correctness_by_plan"] = {t: v for t, v in variants.items() if v}
    verify = read(os.path.join(out, "verify.txt"))
    if verify:
        rows = re.findall(r"verify batch (\d+) .*?: (\w+) \(.*?(\d+\.\d+) tokens per cycle\); decode step median ([\d.]+) ms, verify median ([\d.]+) ms", verify)
        line["verify"] = {b: {"exact": ok == "exact", "tokens_per_cycle": float(t), "decode_ms": float(d), "verify_ms": float(v)} for b, ok, t, d, v in rows}
        if "Error" in verify or "panicked" in verify:
            line["verify"]["error"] = verify.strip().splitlines()[-1][:300]
        mtp = parse_mtp(verify)
        if mtp:
            line["mtp"] = mtp
    serving = read(os.path.join(out, "serving.txt"))
    if serving:
        line["serving"] = {m.group(1): json.loads(m.group(2)) for m in re.finditer(r"^(\w+) (\{.*\})$", serving, re.M)}
    tests = {}
    for name, what in (("kernels.txt", "cuda_kernels"), ("backend.txt", "cuda_backend")):
        text = read(os.path.join(out, name))
        m = text and re.search(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text)
        if m:
            tests[what] = {"passed": int(m.group(2)), "failed": int(m.group(3))}
    if tests:
        line["gpu_tests"] = tests
    mma = read(os.path.join(out, "mma_rate.txt"))
    if mma:
        rows = re.findall(r"^(\w+)\s+warps/SM\s+(\d+) chains\s+(\d+).*?:\s+([\d.]+) TFLOP/s", mma, re.M)
        line["mma_rate_tflops"] = {f"{kind} warps {w} chains {c}": float(t) for kind, w, c, t in rows}
    stage = read(os.path.join(out, "tiled_stage.txt"))
    if stage:
        rows = re.findall(r"^(\S+)\s+[\d.]+ us\s+[\d.]+ TFLOP/s\s+([\d.]+) us per stage", stage, re.M)
        line["tiled_stage_us_per_stage"] = {name: float(us) for name, us in rows}
    ab = {}
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        # (log.txt repeats every stage's lines; the plain benches are decode_ms.)
        if name.endswith(".txt") and name not in ("bench.txt", "bench8k.txt", "log.txt"):
            parsed = parse_ab(read(os.path.join(out, name)) or "")
            if parsed:
                ab[name[:-4]] = parsed
    if ab:
        line["ab_ms"] = ab
    return line


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--gpu", required=True)
    ap.add_argument("--append")
    a = ap.parse_args()
    line = json.dumps(record(a.out, a.commit, a.gpu), sort_keys=False)
    print(line)
    if a.append:
        with open(a.append, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
