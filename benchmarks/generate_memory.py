"""Peak memory of `t2i generate -n N` as N grows: each run in a fresh process (so peaks do not mix),
its peak resident set size (ru_maxrss) after writing every image. Chunked sampling (the default
--batch-size 8) keeps it flat; --batch-size N (one big batch) shows what it was before.

    nice python benchmarks/generate_memory.py [--ns 1,16,256] [--steps 2] [--model ldm] [--compare]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from t2i.cli import main
n, batch, steps, model, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
t0 = time.perf_counter()
code = main(["generate", "a red circle above a blue square", "--system", model, "-n", str(n), "--steps", steps,
             "--batch-size", str(batch), "--out", out + "/img.png", "--no-progress", "--max-images", str(max(n, 1000))])
print(json.dumps({"code": code, "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(n: int, batch: int, steps: int, model: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run([sys.executable, "-c", CHILD, str(n), str(batch), str(steps), model, out],
                           capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", **_env()})
    if r.returncode != 0:
        raise SystemExit(f"n={n}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ns", default="1,16,256", help="comma-separated image counts")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--model", default="ldm", help="a named system (its shipped weights)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--compare", action="store_true", help="also run each n as one big batch (--batch-size n)")
    args = p.parse_args()
    print(f"| n | batch size | peak RSS (MB) | seconds |\n|---:|---:|---:|---:|")
    t0 = time.perf_counter()
    for n in (int(x) for x in args.ns.split(",")):
        for batch in [args.batch_size] + ([n] if args.compare and n > args.batch_size else []):
            r = run(n, batch, args.steps, args.model)
            print(f"| {n} | {batch} | {r['peak_rss_mb']:.0f} | {r['seconds']:.1f} |", flush=True)
    print(f"({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
