"""ShapesWorld throughput: dataset items (scene + captions + render + tensor) per second, one process.

Usage: python benchmarks/shapes_render.py [--n 500]
"""

from __future__ import annotations

import argparse
import time

import torch

from t2i.data import ShapesWorld
from t2i.data.render import render


def rate(fn, n: int, repeats: int = 3) -> float:
    """Best-of-repeats calls per second of fn(i) over i in range(n)."""
    best = float("inf")
    for r in range(repeats):
        t = time.perf_counter()
        for i in range(n):
            fn(r * n + i)
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| side (px) | dataset items / s | renders / s |")
    print("|---:|---:|---:|")
    for size in (32, 64, 128):
        ds = ShapesWorld(size=size, seed=0)
        scenes = [ds.scene(i) for i in range(3 * args.n)]
        items = rate(lambda i: ds[i], args.n)
        renders = rate(lambda i: render(scenes[i], size), args.n)
        print(f"| {size} | {items:.0f} | {renders:.0f} |")


if __name__ == "__main__":
    main()
