#!/usr/bin/env python3
"""Which blocks end a launch late, from `kiln-eval timeline --blocks F` (device_run.sh stage
`timeline` writes timeline_blocks.jsonl.xz).

For every launch of the kernels matching KERNEL in run RUN (decode1: the batch-1 step):
- the launch's block ends (p50, p90, last) and its latest blocks;
- per SM, the mean lateness of its blocks (end minus the launch's median end) over all those
  launches, and whether the same SMs are late in the even and the odd launches (a
  correlation near 1: some SMs are slow; near 0: lateness moves around, e.g. with DRAM);
- lateness by how many blocks of the launch an SM holds, and by split (block // GX, with
  --gx the grid's x size: the K split of a split-K GEMM).

    python3 scripts/timeline_blocks.py timeline_blocks.jsonl.xz --run decode1 --kernel kiln_gemm_xf32_yf32_m8 --gx 40
"""
import argparse
import json
import lzma
import statistics as st
from collections import defaultdict


def load(path, run, kernel):
    opener = lzma.open if path.endswith(".xz") else open
    by_launch = defaultdict(list)
    with opener(path, "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["run"] == run and kernel in r["kernel"]:
                by_launch[r["i"]].append(r)
    return dict(sorted(by_launch.items()))


def corr(a, b):
    if len(a) < 3:
        return float("nan")
    ma, mb = st.mean(a), st.mean(b)
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    if va == 0 or vb == 0:
        return float("nan")
    return sum((x - ma) * (y - mb) for x, y in zip(a, b)) / (va * vb) ** 0.5


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("blocks")
    ap.add_argument("--run", default="decode1")
    ap.add_argument("--kernel", required=True, help="substring of the kernel name")
    ap.add_argument("--gx", type=int, default=0, help="grid x size: block // gx is the split")
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args()
    launches = load(a.blocks, a.run, a.kernel)
    if not launches:
        raise SystemExit(f"no launch of {a.kernel!r} in run {a.run!r}")
    late_sm = [defaultdict(list), defaultdict(list)]  # even / odd launches: SM -> lateness
    by_count = defaultdict(list)
    by_split = defaultdict(list)
    print(f"{len(launches)} launches of {a.kernel} in {a.run}")
    print(f"{'launch':>6} {'blocks':>6} {'p50':>6} {'p90':>6} {'last':>6}  latest blocks (sm/block: end us)")
    for n, (i, bs) in enumerate(launches.items()):
        ends = sorted(b["end_us"] for b in bs)
        p50 = ends[len(ends) // 2]
        p90 = ends[min(len(ends) - 1, int(0.9 * len(ends)))]
        per_sm = defaultdict(int)
        for b in bs:
            per_sm[b["sm"]] += 1
        for b in bs:
            late = b["end_us"] - p50
            late_sm[n % 2][b["sm"]].append(late)
            by_count[per_sm[b["sm"]]].append(late)
            if a.gx:
                by_split[b["block"] // a.gx].append(late)
        latest = sorted(bs, key=lambda b: -b["end_us"])[: a.top]
        desc = " ".join(f"{b['sm']}/{b['block']}:{b['end_us']:.1f}" for b in latest)
        print(f"{i:>6} {len(bs):>6} {p50:>6.1f} {p90:>6.1f} {ends[-1]:>6.1f}  {desc}")
    sms = sorted(set(late_sm[0]) & set(late_sm[1]))
    even = [st.mean(late_sm[0][s]) for s in sms]
    odd = [st.mean(late_sm[1][s]) for s in sms]
    print(f"\nper-SM mean lateness, even against odd launches: correlation {corr(even, odd):.2f} over {len(sms)} SMs")
    both = sorted(((st.mean(late_sm[0][s] + late_sm[1][s]), s) for s in sms), reverse=True)
    print("latest SMs:   " + " ".join(f"{s}:{m:+.1f}" for m, s in both[:10]))
    print("earliest SMs: " + " ".join(f"{s}:{m:+.1f}" for m, s in both[-10:]))
    print("\nlateness by blocks of the launch on the SM: " + "  ".join(
        f"{c}: {st.mean(v):+.2f} us ({len(v)} blocks)" for c, v in sorted(by_count.items())))
    if a.gx:
        print("lateness by split: " + "  ".join(f"{s}: {st.mean(v):+.2f}" for s, v in sorted(by_split.items())))


if __name__ == "__main__":
    main()
