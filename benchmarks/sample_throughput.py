"""Sampling throughput of `t2i generate` with the shipped LDM (DPM-Solver++ 20 steps, batch 16), fp32
against the machine's fast precision, side by side in one run, and how far the images move.

Arms alternate (fp32, fast, fp32, fast, ...) so that load on the machine falls on both alike; the
table gives the median images/s, the ratio, and the max / mean pixel difference (in 1/255) between
the arms' images for the same seed.

    .venv/bin/python benchmarks/sample_throughput.py               # 3 rounds
    .venv/bin/python benchmarks/sample_throughput.py --rounds 1 --batch 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

PROMPT = "a red circle to the left of a blue square"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ldm")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    import t2i
    from t2i.nn.precision import cpu_description

    system = t2i.load(args.model)
    arms = {"fp32": "fp32", "auto": "auto"}
    times: dict[str, list[float]] = {a: [] for a in arms}
    images: dict[str, list] = {}
    system.generate(PROMPT, num_images=2, steps=2, seed=0)  # warm-up
    for r in range(args.rounds):
        for arm, precision in arms.items():
            t0 = time.perf_counter()
            images[arm] = system.generate(PROMPT, num_images=args.batch, steps=args.steps, seed=0,
                                          precision=precision, batch_size=args.batch)  # one batch, not chunks
            times[arm].append(time.perf_counter() - t0)
            print(f"# round {r} {arm}: {args.batch / times[arm][-1]:.2f} images/s", file=sys.stderr, flush=True)
    a = np.stack([np.asarray(im, dtype=np.float64) for im in images["fp32"]])
    b = np.stack([np.asarray(im, dtype=np.float64) for im in images["auto"]])
    diff = np.abs(a - b)
    rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
    print(f"\ntorch {torch.__version__}, CPU: {cpu_description()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
          f"threads; {args.model}, DPM-Solver++ {args.steps} steps, batch {args.batch}, {args.rounds} rounds\n")
    print("| precision | images/s | vs fp32 | max diff (1/255) | mean diff (1/255) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| fp32 (before) | {rate['fp32']:.2f} | 1.00x | 0 | 0 |")
    print(f"| auto | {rate['auto']:.2f} | {rate['auto'] / rate['fp32']:.2f}x | {diff.max():.0f} | {diff.mean():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
