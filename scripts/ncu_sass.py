#!/usr/bin/env python3
"""Where a kernel's warps stall, from ncu's source page (device_run.sh stage `ncu_src`:
`ncu -i REPORT --page source --csv --print-source sass > FILE.csv`).

    python3 scripts/ncu_sass.py FILE.csv [KERNEL_SUBSTRING] [--top N] [--list] [--regions]

Per kernel: stall samples by reason, then the N instructions with the most samples (rows of
several launches of one kernel are added by address). --list prints every instruction in
address order with its share, its executions and its two main reasons, so the prologue,
the loop (executed once per iteration) and the epilogue can be told apart. --regions sums
the samples of each run of instructions between barriers (BAR.SYNC) and says how often the
run executed relative to the kernel's first instruction: a block's phases at a glance.
"""
import argparse
import collections
import csv


def kernels_in(path):
    """{kernel name: {address: row}} with the launches of one kernel added together."""
    out = collections.OrderedDict()
    kernel, header = None, None
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if row[0] == "Kernel Name":
                kernel, header = row[1], None
                out.setdefault(kernel, collections.OrderedDict())
                continue
            if row[0] == "Address":
                header = row
                continue
            if header is None or kernel is None:
                continue
            r = dict(zip(header, row))
            a = out[kernel].setdefault(r["Address"], {"src": r["Source"], "samples": 0.0, "executed": 0.0,
                                                       "reasons": collections.Counter()})
            a["samples"] += num(r.get("Warp Stall Sampling (All Samples)"))
            a["executed"] += num(r.get("Instructions Executed"))
            for c, v in r.items():
                if c.startswith("stall_") and "Not Issued" not in c:
                    a["reasons"][c[len("stall_"):]] += num(v)
    return out


def print_regions(rows, total):
    """Samples per run of instructions ending at a block barrier, with the run's most
    executed instruction relative to the first instruction (loop trips per block)."""
    first = rows[0]["executed"] or 1.0
    start, acc, peak = 0, 0.0, 0.0
    for i, r in enumerate(rows):
        acc += r["samples"]
        peak = max(peak, r["executed"])
        if "BAR.SYNC" in r["src"] or i == len(rows) - 1:
            print(f"   {start:5d}-{i:5d} {100 * acc / total:5.1f} %  x{peak / first:6.1f}")
            start, acc, peak = i + 1, 0.0, 0.0


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("kernel", nargs="?", default="")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--regions", action="store_true")
    args = ap.parse_args()
    for name, rows in kernels_in(args.csv).items():
        if args.kernel not in name:
            continue
        total = sum(r["samples"] for r in rows.values()) or 1.0
        reasons = collections.Counter()
        for r in rows.values():
            reasons.update(r["reasons"])
        print(f"== {name}: {len(rows)} instructions, {total:.0f} samples")
        for reason, n in reasons.most_common(10):
            print(f"   {reason:20s} {n:8.0f} {100 * n / total:5.1f} %")
        if args.regions:
            print_regions(list(rows.values()), total)
            continue
        if args.list:
            shown = list(enumerate(rows.values()))
        else:
            shown = sorted(enumerate(rows.values()), key=lambda x: -x[1]["samples"])[: args.top]
        for i, r in shown:
            why = " ".join(f"{k}:{v:.0f}" for k, v in r["reasons"].most_common(2) if v > 0)
            print(f"   {i:5d} {100 * r['samples'] / total:5.2f} % ex={r['executed']:9.0f}  {r['src'][:64]:64s} {why}")


if __name__ == "__main__":
    main()
