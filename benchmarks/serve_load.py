"""`t2i serve` under load: N clients post POST /v1/images/generations at once; each answer must be images
of the asked size and count, or a 429 (the system's queue is full). Reports latency percentiles of the
answered requests, the 429 count and the server's memory before and after.

    .venv/bin/python benchmarks/serve_load.py                         # tiny random ldm, 32 clients
    .venv/bin/python benchmarks/serve_load.py --real --steps 10       # the shipped ldm at 64 px
    .venv/bin/python benchmarks/serve_load.py --clients 64 --queue-size 16 --json out.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request

from PIL import Image


def rss_mb(pid: int) -> float:
    """The resident memory of a process, MB (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))] if s else float("nan")


def fire(url: str, clients: int, model: str = "ldm", n: int = 2, size: str | None = None, steps: int | None = None,
         key: str | None = None) -> dict:
    """`clients` requests at once (threads released together). Returns the outcome of each and the latencies."""
    body = {"model": model, "prompt": "a red circle to the left of a blue square", "n": n}
    if size:
        body["size"] = size
    if steps:
        body["steps"] = steps
    results: list[dict] = [{} for _ in range(clients)]
    start = threading.Barrier(clients)

    def one(i: int) -> None:
        data = json.dumps({**body, "seed": i}).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        req = urllib.request.Request(url + "/v1/images/generations", data=data, method="POST", headers=headers)
        start.wait()
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except OSError as e:
            results[i] = {"status": None, "error": repr(e), "latency": time.perf_counter() - t}
            return
        out = {"status": status, "latency": time.perf_counter() - t, "body": json.loads(raw)}
        if status == 200:
            images = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in out["body"]["data"]]
            out["sizes"] = [im.size for im in images]
            out["seeds"] = [im.text.get("seed") for im in images]
            del out["body"]
        results[i] = out

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r["latency"] for r in results if r.get("status") == 200]
    return {"results": results, "wall_s": wall, "answered": len(ok),
            "rejected_429": sum(r.get("status") == 429 for r in results),
            "p50_s": percentile(ok, 50), "p90_s": percentile(ok, 90), "p99_s": percentile(ok, 99),
            "max_s": max(ok, default=float("nan")), "mean_s": statistics.fmean(ok) if ok else float("nan")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--n", type=int, default=2, help="images per request")
    p.add_argument("--queue-size", type=int, default=8, help="the server's --queue-size")
    p.add_argument("--real", action="store_true", help="the shipped ldm (default: tiny random weights)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)

    from t2i.serve.process import running_server

    extra = [] if args.real else ["--tiny"]
    with running_server(*extra, "--systems", "ldm", "--queue-size", str(args.queue_size),
                        threads=args.threads) as (url, proc):
        before = rss_mb(proc.pid)
        fire(url, 2, n=1, steps=args.steps)  # warm up
        r = fire(url, args.clients, n=args.n, steps=args.steps)
        after = rss_mb(proc.pid)
        alive = proc.poll() is None
    bad = [x for x in r["results"] if x.get("status") not in (200, 429)]
    print(f"{args.clients} clients x {args.n} images ({'shipped' if args.real else 'tiny'} ldm, queue "
          f"{args.queue_size}): {r['answered']} answered, {r['rejected_429']} x 429, {len(bad)} other; "
          f"latency p50 {r['p50_s']:.2f} s, p90 {r['p90_s']:.2f} s, p99 {r['p99_s']:.2f} s, max {r['max_s']:.2f} s; "
          f"wall {r['wall_s']:.2f} s; server RSS {before:.0f} -> {after:.0f} MB; alive {alive}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: v for k, v in r.items() if k != "results"} | {"rss_before_mb": before, "rss_after_mb": after,
                                                                        "clients": args.clients}, f, indent=1)
    return 0 if alive and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
