"""ShapesEval of a model against sampler steps: one row per (sampler, steps), every category, and
the seconds the generation took. Usage:
    python benchmarks/shapeseval_steps.py [--model ldm] [--samplers ddim dpmpp_2m] [--steps 10 20 50]
        [--n-per-prompt 2] [--guidance G]
"""

from __future__ import annotations

import argparse
import time

from t2i.api import model_generator
from t2i.eval.run import ModelSettings
from t2i.eval.shapeseval import evaluate
from t2i.eval.suite import CATEGORIES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ldm")
    p.add_argument("--samplers", nargs="+", default=["ddim", "dpmpp_2m"])
    p.add_argument("--steps", nargs="+", type=int, default=[10, 20, 50])
    p.add_argument("--n-per-prompt", type=int, default=2)
    p.add_argument("--guidance", type=float, default=None)
    args = p.parse_args()
    print(f"| sampler | steps | {' | '.join(CATEGORIES)} | overall | seconds |")
    print(f"|---|---:|{'---:|' * len(CATEGORIES)}---:|---:|")
    for sampler in args.samplers:
        for steps in args.steps:
            t = time.perf_counter()
            gen = model_generator(args.model, ModelSettings(steps=steps, sampler=sampler, guidance=args.guidance))
            r = evaluate(gen, n_per_prompt=args.n_per_prompt, progress=False)
            cats = " | ".join(f"{r['categories'][c]:.3f}" for c in CATEGORIES)
            print(f"| {sampler} | {steps} | {cats} | {r['overall']:.3f} | {time.perf_counter() - t:.0f} |", flush=True)


if __name__ == "__main__":
    main()
