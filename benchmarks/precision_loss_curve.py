"""Does the default training precision learn like fp32? The shapes_ldm loss over the first steps, side by side.

Three runs of the same recipe from the same initial weights and data order: fp32 eager (seed 0), the recipe's
default settings (bf16 autocast where the CPU does bf16 natively, float32 attention, fused AdamW; seed 0), and
the default again with another training seed (noise draws, caption dropout), whose distance from the first
default run is the run-to-run noise. Prints the loss mean over each window of steps for every run, and the
mean absolute gap default-vs-fp32 next to the gap between the two seeds.

    .venv/bin/python benchmarks/precision_loss_curve.py                         # 1000 steps x 64 (~75 min here)
    .venv/bin/python benchmarks/precision_loss_curve.py --steps 1000 --batch 16 # the same curve, 4x cheaper
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import LDM, PLAIN  # noqa: E402  the shapes_ldm overrides that run on a clean clone

RUNS = {  # name -> (overrides, what it is)
    "fp32": (PLAIN + ["train.seed=0"], "fp32 eager, seed 0"),
    "default": (["train.seed=0"], "recipe default (bf16 auto, float32 attention, fused AdamW), seed 0"),
    "default_seed1": (["train.seed=1"], "recipe default, seed 1 (run-to-run noise)"),
}


def train(name: str, steps: int, batch: int, out: Path) -> list[float]:
    """Train one run for `steps` steps; its per-step losses from metrics.jsonl."""
    from t2i.train import Trainer, load_recipe

    overrides = LDM + RUNS[name][0] + [f"train.steps={steps}", f"train.batch_size={batch}", "train.warmup_steps=200"]
    recipe = load_recipe("shapes_ldm", overrides)
    run_dir = out / name
    Trainer(recipe, run_dir, progress=False, log=lambda m: None).run()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def window_means(losses: list[float], window: int) -> list[float]:
    """Mean loss of each consecutive window of steps (a last partial window is dropped)."""
    n = len(losses) // window
    return [float(np.mean(losses[i * window:(i + 1) * window])) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--out", default="runs/precision_loss_curve", help="where the three runs are written")
    p.add_argument("--json", help="also write the window means as JSON to this file")
    args = p.parse_args(argv)
    from t2i.nn.precision import cpu_description

    out = Path(args.out)
    curves = {}
    for name in RUNS:
        curves[name] = window_means(train(name, args.steps, args.batch, out), args.window)
        print(f"# {name} done", file=sys.stderr, flush=True)
    print(f"\ntorch CPU: {cpu_description()}, {os.cpu_count()} cores; shapes_ldm from scratch, {args.steps} steps x "
          f"{args.batch}, loss mean per {args.window}-step window\n")
    print("| steps | " + " | ".join(curves) + " | default - fp32 | seed1 - seed0 |")
    print("|---|" + "---:|" * (len(curves) + 2))
    for i in range(len(curves["fp32"])):
        a, b, c = curves["fp32"][i], curves["default"][i], curves["default_seed1"][i]
        print(f"| {i * args.window + 1}-{(i + 1) * args.window} | {a:.5f} | {b:.5f} | {c:.5f} | {b - a:+.5f} | {c - b:+.5f} |")
    gap = np.abs(np.subtract(curves["default"], curves["fp32"]))[1:].mean()  # the first window is warm-up
    noise = np.abs(np.subtract(curves["default_seed1"], curves["default"]))[1:].mean()
    print(f"\nmean |default - fp32| after the first window: {gap:.5f}; mean |seed 1 - seed 0|: {noise:.5f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "batch": args.batch, "window": args.window,
                                               "curves": curves, "gap": gap, "noise": noise}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
