#!/usr/bin/env python3
"""Predicts TTFT/TPOT of bench_serving.py's c64 burst (64 prompts of 32..4000 tokens, outputs
64..512, all sent at once) under kiln's step loop (scheduler/engine.rs: decode rows first,
prefill chunks cut at the prefix-cache schedule fill the rest of the step budget), for the
`fcfs` and `shortest-prefill` policies and several budgets.

Step costs are the H100's of 2026-12-05 (docs/perf.md, session 7, call 4): the decode step
at batch B from `kiln-eval bench`, prefill at 19.5 us per token plus attention growing with
the position. It ignores HTTP, tokenizing and sampling, so it reads about 25 % low against the
server (it gave FCFS a 1654 ms TTFT p50 where the server measured 2083); use it for the
difference between policies (it predicted -42 %; the server measured -36 %).

Session 7's reading: with these costs, shortest-prefill gives c64 TTFT p50 / TPOT p50 of
943 / 16.1 ms at the 2048 budget and 1601 / 13.9 at 16384; no budget meets both issue 10
targets (H100-scaled 1180 / 13.9 measured, about 900 / 12.7 here), so they need faster
steps, not another schedule.

usage: sim_schedule.py [--budgets 1024,2048,4096] [--costs s7|s21]
"""
import argparse, random

# Decode step at batch B (ms) and prefill cost per token (ms), H100, by when measured:
# session 7 (2026-12-05, call 4) and session 21 (83ee372 bench with the batch-1/4 register
# GEMM spread of the same call; prefill 1024 at 19.9 ms).
COSTS = {
    "s7": ([(0, 0.0), (1, 4.87), (8, 5.50), (32, 8.16), (64, 11.39), (128, 20.82), (256, 39.55)], 0.0195),
    "s21": ([(0, 0.0), (1, 3.785), (4, 4.03), (8, 4.468), (32, 6.532), (64, 9.145), (128, 16.867), (256, 32.967)], 0.0194),
}
DECODE_MS, PREFILL_MS_PER_TOKEN = COSTS["s7"]


def workload(seed=0, n=64, vocab=150000):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(32, 4000)
        _ids = [rng.randrange(1000, vocab) for _ in range(length)]  # keeps the draws in step with bench_serving
        out.append((length, rng.randint(64, 512)))
    return out


def decode_ms(b):
    for (b0, t0), (b1, t1) in zip(DECODE_MS, DECODE_MS[1:]):
        if b <= b1:
            return t0 + (t1 - t0) * (b - b0) / (b1 - b0)
    return DECODE_MS[-1][1] * b / DECODE_MS[-1][0]


def prefill_ms(chunks):
    return 1.0 + sum(n * (PREFILL_MS_PER_TOKEN + 0.55e-6 * (s + n / 2)) for s, n in chunks) if chunks else 0.0


def cut_schedule(budget, first=256):
    top = budget // first * first

    def next_cut(pos):
        c = first
        while c <= pos:
            c = c * 2 if c * 2 <= top else c + top
        return c
    return next_cut


def simulate(policy, step_budget, max_running=256, work=None):
    seqs = [dict(L=L, out=o, fed=0, gen=0, ttft=None, end=None) for L, o in (work or workload())]
    next_cut = cut_schedule(step_budget - max_running)
    t, running = 0.0, list(range(len(seqs)))
    while running:
        dec = [i for i in running if seqs[i]["fed"] >= seqs[i]["L"]]
        pre = [i for i in running if seqs[i]["fed"] < seqs[i]["L"]]
        if policy == "shortest-prefill":  # a burst: every prompt has waited as long
            pre.sort(key=lambda i: seqs[i]["L"] - seqs[i]["fed"])
        budget, chunks = step_budget - len(dec), []
        for i in pre:
            s = seqs[i]
            n = min(s["L"] - s["fed"], next_cut(s["fed"]) - s["fed"])
            if n <= budget:
                budget -= n
                chunks.append((i, s["fed"], n))
        t += decode_ms(len(dec)) + prefill_ms([(st, n) for _, st, n in chunks])
        for i in dec:
            seqs[i]["gen"] += 1
            if seqs[i]["gen"] >= seqs[i]["out"]:
                seqs[i]["end"] = t
        for i, _, n in chunks:
            seqs[i]["fed"] += n
            if seqs[i]["fed"] >= seqs[i]["L"]:
                seqs[i]["ttft"], seqs[i]["gen"] = t, 1
        running = [i for i in running if seqs[i]["end"] is None]
    ttft = sorted(s["ttft"] for s in seqs)
    tpot = sorted((s["end"] - s["ttft"]) / max(1, s["out"] - 1) for s in seqs)
    pct = lambda v, q: v[min(len(v) - 1, int(q / 100 * len(v)))]
    return dict(policy=policy, budget=step_budget, ttft_p50=round(pct(ttft, 50)), ttft_p99=round(pct(ttft, 99)),
                tpot_p50=round(pct(tpot, 50), 1), tpot_p99=round(pct(tpot, 99), 1), wall_ms=round(t))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="1024,2048,4096")
    ap.add_argument("--costs", default="s7", choices=sorted(COSTS), help="whose step costs (COSTS)")
    a = ap.parse_args()
    DECODE_MS, PREFILL_MS_PER_TOKEN = COSTS[a.costs]
    for b in map(int, a.budgets.split(",")):
        for p in ("fcfs", "shortest-prefill"):
            print(simulate(p, b))
