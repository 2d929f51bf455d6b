#!/usr/bin/env python3
"""Per-kernel time and idle gaps of one profiled decode step, from
`nsys stats --report cuda_gpu_trace --format csv` (device_run.sh's nsys_decode stage).

Unlike ncu, which replays each kernel alone, nsys times the kernels as the captured CUDA
graph runs them (PDL overlap included), so this splits the step into: the sum of kernel
times, per kernel name, and the idle time between one kernel's end and the next one's
start (negative when PDL lets them overlap).

usage: nsys_gaps.py trace.csv
"""
import collections, csv, io, sys

text = open(sys.argv[1], errors="replace").read()
rows = list(csv.DictReader(io.StringIO(text[text.find('"Start') if '"Start' in text else text.find("Start"):])))
if not rows:
    sys.exit("no rows in " + sys.argv[1])
start_key = next(k for k in rows[0] if k.startswith("Start"))
dur_key = next(k for k in rows[0] if k.startswith("Duration"))
name_key = "Name" if "Name" in rows[0] else next(k for k in rows[0] if "Name" in k)
ks = []
for r in rows:
    name = r[name_key]
    if name.startswith("[CUDA mem") or not name:
        continue
    ks.append((float(r[start_key]), float(r[dur_key]), name.split("(")[0][:60]))
ks.sort()
span = ks[-1][0] + ks[-1][1] - ks[0][0]
busy = collections.defaultdict(float)
gap = collections.defaultdict(float)
cnt = collections.Counter()
end = ks[0][0]
for s, d, n in ks:
    cnt[n] += 1
    busy[n] += d
    gap[n] += s - end
    end = max(end, s + d)
tot_busy, tot_gap = sum(busy.values()), sum(gap.values())
print(f"step span {span / 1e6:.3f} ms over {len(ks)} kernels: kernel time {tot_busy / 1e6:.3f} ms, "
      f"idle between kernels {tot_gap / 1e6:.3f} ms (negative: overlap)")
print(f"{'kernel':60} {'n':>4} {'total ms':>9} {'mean us':>8} {'gap before, mean us':>20}")
for n in sorted(busy, key=lambda n: -busy[n]):
    print(f"{n:60} {cnt[n]:4d} {busy[n] / 1e6:9.3f} {busy[n] / cnt[n] / 1e3:8.2f} {gap[n] / cnt[n] / 1e3:20.2f}")
