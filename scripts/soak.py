#!/usr/bin/env python3
"""Soak test for a running kiln (or SGLang-compatible) server: mixed traffic for a while,
then checks that nothing leaked and nothing was lost (issue 13).

Traffic, from --concurrency workers for --duration seconds, each request drawn at random:
  full      streamed /v1/completions, greedy, ignore_eos: must end with exactly max_tokens
  sample    the same with temperature 0.8, top_p 0.9, a seed
  native    non-streamed /generate with input_ids: must return completion_tokens == max
  cut       a stream the client drops after a few chunks (the server must free its slot)
  abort     a streamed /generate with a rid, aborted through /abort_request mid-way
Prompts: 70 % short (8..64 token ids), 30 % long (--long-min..--long-max).

Every --sample-every seconds it records the server's /metrics (slots and KV blocks in use),
the server process's resident memory (--pid) and the GPU's used memory (nvidia-smi, when
present). At the end it waits for the server to go idle, flushes the prefix cache and checks:
no slot and no KV block in use, no request lost (every full/sample/native request answered
200 with its full length; cut and abort requests may end either way but never with a 5xx),
and memory flat (the last samples against the ones after warm-up, within --mem-slack).
Prints one line `soak {json}` and exits non-zero if a check fails. Standard library only.

    python3 scripts/soak.py --url http://127.0.0.1:30000 --duration 1800 --pid $(pgrep -f 'kiln serve')
"""
import argparse, http.client, json, random, re, subprocess, threading, time, urllib.parse

from bench_serving import stream_events  # scripts/ is on sys.path when this script runs


def conn(url, timeout=600):
    u = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)


def post(url, path, body, timeout=600):
    c = conn(url, timeout)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    return c, r


def get(url, path):
    c = conn(url, 30)
    c.request("GET", path)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def one(url, kind, prompt, n, rng, rid):
    """Runs one request; returns (kind, status, ok, detail)."""
    if kind in ("full", "sample", "cut"):
        body = {"prompt": prompt, "max_tokens": n, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        if kind == "sample":
            body.update(temperature=0.8, top_p=0.9, seed=rng.randrange(1 << 30))
        else:
            body["temperature"] = 0
        c, r = post(url, "/v1/completions", body)
        if r.status != 200:
            return kind, r.status, False, r.read()[:200].decode(errors="replace")
        if kind == "cut":
            keep = rng.randint(1, 4)
            for i, _ in enumerate(stream_events(r)):
                if i + 1 >= keep:
                    break
            c.close()  # drop the connection mid-stream
            return kind, 200, True, ""
        usage = None
        for ev in stream_events(r):
            usage = ev.get("usage") or usage
        c.close()
        got = (usage or {}).get("completion_tokens")
        return kind, 200, got == n, f"completion_tokens {got} of {n}"
    if kind == "native":
        body = {"input_ids": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": n, "ignore_eos": True}}
        c, r = post(url, "/generate", body)
        data = r.read()
        c.close()
        if r.status != 200:
            return kind, r.status, False, data[:200].decode(errors="replace")
        got = json.loads(data).get("meta_info", {}).get("completion_tokens")
        return kind, 200, got == n, f"completion_tokens {got} of {n}"
    # abort: stream with a rid, abort after a couple of chunks, read to the end.
    body = {"input_ids": prompt, "rid": rid, "stream": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": n, "ignore_eos": True}}
    c, r = post(url, "/generate", body)
    if r.status != 200:
        return kind, r.status, False, r.read()[:200].decode(errors="replace")
    for i, _ in enumerate(stream_events(r)):
        if i == 1:
            ac, ar = post(url, "/abort_request", {"rid": rid}, 30)
            ar.read()
            ac.close()
    c.close()
    return kind, 200, True, ""


def metrics(url):
    st, data = get(url, "/metrics")
    out = {}
    for m in re.finditer(rb"^(?:kiln|sglang):(\w+)\{[^}]*\} ([0-9.eE+-]+)$", data, re.M):
        out[m.group(1).decode()] = float(m.group(2))
    return out


def rss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None


def gpu_mb():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        return float(out.stdout.split()[0]) if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:30000")
    ap.add_argument("--duration", type=float, default=1800)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--pid", type=int, help="the server's process id (host memory)")
    ap.add_argument("--sample-every", type=float, default=10)
    ap.add_argument("--vocab", type=int, default=150000)
    ap.add_argument("--long-min", type=int, default=1000)
    ap.add_argument("--long-max", type=int, default=4000)
    ap.add_argument("--max-out", type=int, default=256)
    ap.add_argument("--mem-slack", type=float, default=0.05, help="allowed growth of host / GPU memory")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    lock = threading.Lock()
    counts, fails, errors5xx = {}, [], []
    stop_at = time.time() + a.duration
    seq = [0]

    def worker(wid):
        rng = random.Random(a.seed * 1000 + wid)
        while time.time() < stop_at:
            kind = rng.choices(["full", "sample", "native", "cut", "abort"], [4, 2, 2, 1, 1])[0]
            long = rng.random() < 0.3
            plen = rng.randint(a.long_min, a.long_max) if long else rng.randint(8, 64)
            prompt = [rng.randrange(1000, a.vocab) for _ in range(plen)]
            n = rng.randint(1, a.max_out)
            with lock:
                seq[0] += 1
                rid = f"soak-{wid}-{seq[0]}"
            try:
                k, st, ok, detail = one(a.url, kind, prompt, n, rng, rid)
            except (OSError, http.client.HTTPException, ValueError) as e:
                k, st, ok, detail = kind, 0, kind in ("cut", "abort"), f"{type(e).__name__}: {e}"
            with lock:
                counts[k] = counts.get(k, 0) + 1
                if st >= 500:
                    errors5xx.append(f"{k}: HTTP {st} {detail}")
                elif not ok:
                    fails.append(f"{k}: HTTP {st} {detail}")

    samples = []

    def sampler():
        while time.time() < stop_at:
            m = metrics(a.url)
            samples.append({"t": round(time.time() - (stop_at - a.duration), 1), "slots_used": m.get("slots_used"),
                            "kv_blocks_used": m.get("kv_blocks_used"), "running": m.get("num_running_reqs"),
                            "rss_mb": rss_mb(a.pid) if a.pid else None, "gpu_mb": gpu_mb()})
            print("sample", json.dumps(samples[-1]), flush=True)
            time.sleep(a.sample_every)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(a.concurrency)] + [threading.Thread(target=sampler)]
    [t.start() for t in ts]
    [t.join() for t in ts]

    # Idle: nothing running or queued, then the prefix cache flushed: nothing held.
    idle = False
    for _ in range(600):
        m = metrics(a.url)
        if m.get("num_running_reqs", 1) == 0 and m.get("num_queue_reqs", 1) == 0:
            idle = True
            break
        time.sleep(0.1)
    c, r = post(a.url, "/flush_cache", {}, 30)
    r.read()
    c.close()
    m = metrics(a.url)
    end = {"rss_mb": rss_mb(a.pid) if a.pid else None, "gpu_mb": gpu_mb()}

    def flat(key):
        vals = [s[key] for s in samples if s.get(key) is not None]
        if len(vals) < 3 or end[key] is None:
            return None  # not measured
        base = vals[len(vals) // 3]  # after warm-up (graphs, allocator pools)
        return end[key] <= base * (1 + a.mem_slack)

    rep = {"duration_s": a.duration, "requests": sum(counts.values()), "by_kind": counts,
           "lost_or_wrong": len(fails), "http_5xx": len(errors5xx), "idle": idle,
           "slots_used_idle": m.get("slots_used"), "kv_blocks_used_idle": m.get("kv_blocks_used"),
           "host_mem_flat": flat("rss_mb"), "gpu_mem_flat": flat("gpu_mb"),
           "rss_mb": [samples[len(samples) // 3]["rss_mb"] if samples else None, end["rss_mb"]],
           "gpu_mb": [samples[len(samples) // 3]["gpu_mb"] if samples else None, end["gpu_mb"]]}
    if fails:
        rep["first_failure"] = fails[0]
    if errors5xx:
        rep["first_5xx"] = errors5xx[0]
    print("soak", json.dumps(rep), flush=True)
    ok = (not fails and not errors5xx and idle and m.get("slots_used") == 0 and m.get("kv_blocks_used") == 0
          and rep["host_mem_flat"] is not False and rep["gpu_mem_flat"] is not False)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
