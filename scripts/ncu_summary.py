#!/usr/bin/env python3
"""Sum ncu's gpu__time_duration per kernel name (device_run.sh's `profile` stage).

usage: ncu_summary.py ncu.csv [--runs N]   (N: how many identical runs the log holds;
times are divided by it so the table reads per run)
"""
import argparse, collections, csv, io

ap = argparse.ArgumentParser()
ap.add_argument("csv")
ap.add_argument("--runs", type=int, default=1)
a = ap.parse_args()
text = open(a.csv, errors="replace").read()
# ncu prints its own lines (==PROF==) before the CSV header.
start = text.find('"ID"')
rows = csv.DictReader(io.StringIO(text[start:]))
tot = collections.defaultdict(float)
cnt = collections.Counter()
for r in rows:
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    name = r["Kernel Name"].split("(")[0][:70]
    v = float(r["Metric Value"].replace(",", ""))
    unit = r.get("Metric Unit", "ns")
    v *= {"ns": 1e-3, "usecond": 1, "us": 1, "msecond": 1e3, "ms": 1e3, "nsecond": 1e-3}.get(unit, 1e-3)
    tot[name] += v
    cnt[name] += 1
all_us = sum(tot.values())
print(f"total {all_us / a.runs / 1000:.2f} ms per run over {sum(cnt.values()) // a.runs} kernels")
for name, us in sorted(tot.items(), key=lambda kv: -kv[1]):
    print(f"{us / a.runs / 1000:8.3f} ms  {cnt[name] // a.runs:5d}x  {name}")
