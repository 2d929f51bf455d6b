#!/usr/bin/env python3
"""Sum ncu's gpu__time_duration per kernel name (device_run.sh's `profile` stages), and
where the log has dram__bytes_read.sum / dram__bytes_write.sum, each kernel's DRAM bytes
and achieved bandwidth.

usage: ncu_summary.py ncu.csv [--runs N] [--by-grid]
  --runs N    how many identical runs the log holds (times are divided by it, so the table
              reads per run)
  --by-grid   one line per kernel and grid size (the decode GEMMs' grids tell the weights
              apart: each weight's time, bytes and bandwidth)
"""
import argparse, collections, csv, io

ap = argparse.ArgumentParser()
ap.add_argument("csv")
ap.add_argument("--runs", type=int, default=1)
ap.add_argument("--by-grid", action="store_true")
a = ap.parse_args()
text = open(a.csv, errors="replace").read()
# ncu prints its own lines (==PROF==) before the CSV header.
start = text.find('"ID"')
rows = csv.DictReader(io.StringIO(text[start:]))
tot = collections.defaultdict(float)
cnt = collections.Counter()
dram = collections.defaultdict(float)
BYTES = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9}
for r in rows:
    name = r["Kernel Name"].split("(")[0][:70]
    if a.by_grid:
        name = f"{name} grid {r.get('Grid Size', '?')}"
    if r.get("Metric Name", "").startswith("dram__bytes_"):
        dram[name] += float(r["Metric Value"].replace(",", "")) * BYTES.get(r.get("Metric Unit", "byte"), 1)
        continue
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    v = float(r["Metric Value"].replace(",", ""))
    unit = r.get("Metric Unit", "ns")
    v *= {"ns": 1e-3, "usecond": 1, "us": 1, "msecond": 1e3, "ms": 1e3, "nsecond": 1e-3}.get(unit, 1e-3)
    tot[name] += v
    cnt[name] += 1
all_us = sum(tot.values())
print(f"total {all_us / a.runs / 1000:.2f} ms per run over {sum(cnt.values()) // a.runs} kernels")
for name, us in sorted(tot.items(), key=lambda kv: -kv[1]):
    bw = f"  {dram[name] / a.runs / 1e6:9.2f} MB {dram[name] / (us * 1e-6) / 1e9:7.0f} GB/s" if name in dram else ""
    print(f"{us / a.runs / 1000:8.3f} ms  {cnt[name] // a.runs:5d}x{bw}  {name}")
