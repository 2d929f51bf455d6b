#!/usr/bin/env python3
"""Load generator for any SGLang- or OpenAI-compatible server (kiln or SGLang itself).

Streams `/v1/completions` requests with token-id prompts of mixed lengths, greedy, with
`ignore_eos` so every request produces exactly its output length, and reports per
workload: TTFT, TPOT (time per output token after the first), end-to-end latency
percentiles, and output-token throughput.

Workloads: `seq` (one request at a time), `cK` (K requests in flight) and `sharedK` (K
chats in flight that share one system prompt of --shared-len tokens and re-send their
history every turn, --turns turns each: the prefix cache's workload; its report adds the
cache hit rate, cached prompt tokens over prompt tokens, from the usage of each stream).
Standard library only, so it runs anywhere python3 does.

    python3 scripts/bench_serving.py --url http://127.0.0.1:30000 --workloads seq,c16,c64 \\
        --num 64 --min-in 32 --max-in 4000 --min-out 64 --max-out 512 --seed 0
"""
import argparse, http.client, json, random, statistics, threading, time, urllib.parse


CONSTRAINT = "[A-Za-z0-9 ,.]*"  # a grammar that never ends, so ignore_eos lengths still hold


def stream_events(resp):
    """Yields the JSON events of a server-sent-events response until [DONE] or the end."""
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        yield json.loads(data)


def one_request(url, prompt, max_tokens, model, constrained=False):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=600)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
                       **({"regex": CONSTRAINT} if constrained else {})})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        return {"error": f"HTTP {resp.status}: {resp.read()[:200]!r}"}
    ttft, usage = None, None
    for ev in stream_events(resp):
        if ev.get("usage"):
            usage = ev["usage"]
        if ev.get("choices") and ev["choices"][0].get("text") is not None and ttft is None:
            ttft = time.perf_counter() - t0
    e2e = time.perf_counter() - t0
    conn.close()
    out = max_tokens
    cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {"ttft": ttft or e2e, "e2e": e2e, "out": out, "tpot": (e2e - (ttft or e2e)) / max(out - 1, 1),
            "prompt": len(prompt), "cached": cached, "constrained": constrained}


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def run(url, reqs, concurrency, model, constrained=0.0):
    """`reqs`: (prompt, max_tokens) pairs, or lists of them (a chat: its turns in order,
    on one worker). A `constrained` fraction of the requests (every k-th) carries a regex."""
    results, lock, it = [], threading.Lock(), iter(reqs)

    def worker():
        while True:
            with lock:
                r = next(it, None)
            if r is None:
                return
            for prompt, n in (r if isinstance(r, list) else [r]):
                pick = constrained > 0 and sum(prompt[:4]) % 1000 < constrained * 1000
                res = one_request(url, prompt, n, model, pick)
                with lock:
                    results.append(res)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(concurrency)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    errs = [r["error"] for r in results if "error" in r]
    rep = {"requests": len(results), "errors": len(errs), "wall_s": round(wall, 3)}
    if ok:
        for k in ("ttft", "tpot", "e2e"):
            vals = [r[k] * 1000 for r in ok]
            rep[k + "_ms"] = {"mean": round(statistics.mean(vals), 2), "p50": round(pct(vals, 50), 2),
                              "p90": round(pct(vals, 90), 2), "p99": round(pct(vals, 99), 2)}
        rep["output_tok_per_s"] = round(sum(r["out"] for r in ok) / wall, 1)
        rep["cache_hit_rate"] = round(sum(r["cached"] for r in ok) / max(1, sum(r["prompt"] for r in ok)), 3)
        if constrained > 0:
            # Does structured output slow the unconstrained requests that share its steps?
            for tag, grp in (("constrained", [r for r in ok if r["constrained"]]), ("unconstrained", [r for r in ok if not r["constrained"]])):
                if grp:
                    vals = [r["tpot"] * 1000 for r in grp]
                    rep[f"tpot_ms_{tag}"] = {"n": len(grp), "p50": round(pct(vals, 50), 2), "p99": round(pct(vals, 99), 2)}
    if errs:
        rep["first_error"] = errs[0]
    return rep


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:30000")
    ap.add_argument("--model", default="default")
    ap.add_argument("--workloads", default="seq,c16,c64")
    ap.add_argument("--num", type=int, default=64, help="requests per concurrent workload")
    ap.add_argument("--num-seq", type=int, default=8, help="requests in the sequential workload")
    ap.add_argument("--min-in", type=int, default=32)
    ap.add_argument("--max-in", type=int, default=4000)
    ap.add_argument("--min-out", type=int, default=64)
    ap.add_argument("--max-out", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=150000, help="prompt ids are drawn from [1000, vocab)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--constrained", type=float, default=0.0,
                    help="fraction of requests with a regex constraint (cK workloads; TPOT reported per group)")
    ap.add_argument("--shared-len", type=int, default=1500, help="system prompt tokens of the shared workload")
    ap.add_argument("--turns", type=int, default=4, help="turns per chat of the shared workload")
    ap.add_argument("--turn-in", type=int, default=200, help="new user tokens per turn (shared workload)")
    a = ap.parse_args()
    rng = random.Random(a.seed)

    def make(n):
        return [([rng.randrange(1000, a.vocab) for _ in range(rng.randint(a.min_in, a.max_in))],
                 rng.randint(a.min_out, a.max_out)) for _ in range(n)]

    def chats(n):
        # One system prompt for all; each turn re-sends the chat so far (the previous
        # outputs stand in as fresh ids: the ids a client would re-send are the server's
        # own tokens, which a load generator does not keep), then a new user message.
        system = [rng.randrange(1000, a.vocab) for _ in range(a.shared_len)]
        out = []
        for _ in range(n):
            hist, turns = list(system), []
            for _ in range(a.turns):
                hist += [rng.randrange(1000, a.vocab) for _ in range(a.turn_in)]
                m = rng.randint(a.min_out, a.max_out)
                turns.append((list(hist), m))
                hist += [rng.randrange(1000, a.vocab) for _ in range(m)]
            out.append(turns)
        return out

    # Warm-up: one short request (graphs, allocator, first-use costs stay out of the numbers).
    one_request(a.url, [1000, 1001, 1002], 8, a.model)
    report = {}
    for w in a.workloads.split(","):
        if w == "seq":
            report[w] = run(a.url, make(a.num_seq), 1, a.model)
        elif w.startswith("shared"):
            k = int(w[6:])
            report[w] = run(a.url, chats(max(k, a.num // a.turns)), k, a.model)
        else:
            report[w] = run(a.url, make(a.num), int(w[1:]), a.model, a.constrained)
        print(w, json.dumps(report[w]), flush=True)
    return report


if __name__ == "__main__":
    main()
