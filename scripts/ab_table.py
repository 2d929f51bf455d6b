#!/usr/bin/env python3
"""An A/B bench file of device_run.sh (packed.txt, tiled_wide.txt, x_ahead.txt, ...) as a table.

Each line is `TAG: decode batch B ctx C: median X ms/step ...` (bench_as); a tag appears
once per repetition. Prints, per tag, every repetition's median at each batch, their
mean, and the mean's change against the first tag in the file (the baseline):

    python3 scripts/ab_table.py /path/to/packed.txt
"""
import re
import sys

LINE = re.compile(r"^(?P<tag>.+?): decode batch (?P<b>\d+) ctx (?P<ctx>\d+): median (?P<ms>[0-9.]+) ms")


def read(path):
    """{tag: {(batch, ctx): [ms, ...]}} in the file's order of first appearance."""
    runs = {}
    with open(path) as f:
        for line in f:
            m = LINE.match(line.strip())
            if m:
                key = (int(m["b"]), int(m["ctx"]))
                runs.setdefault(m["tag"], {}).setdefault(key, []).append(float(m["ms"]))
    return runs


def table(runs):
    if not runs:
        return "no `decode batch` lines"
    base_tag = next(iter(runs))
    keys = sorted({k for r in runs.values() for k in r})
    out = []
    for tag, r in runs.items():
        cells = []
        for k in keys:
            v = r.get(k)
            if not v:
                cells.append(f"b{k[0]}: -")
                continue
            mean = sum(v) / len(v)
            base = runs[base_tag].get(k)
            rel = ""
            if tag != base_tag and base:
                b = sum(base) / len(base)
                rel = f" ({100 * (mean - b) / b:+.1f} %)"
            cells.append(f"b{k[0]}: {' / '.join(f'{x:.3f}' for x in v)}{rel}")
        out.append(f"{tag}: " + "; ".join(cells))
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: ab_table.py FILE")
    print(table(read(sys.argv[1])))
