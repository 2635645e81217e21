"""GLIDE's guidance comparison (Nichol et al. 2022: classifier-free vs CLIP guidance, and
classifier guidance) on ShapesEval at matched sampling cost. For a GLIDE folder with guide_clip/ and
guide_classifier/ (`t2i convert RUN FOLDER/guide_<type>`), sweep each type's guidance scale and print a
markdown row per (type, scale): ShapesEval per category and overall, the Fréchet distance of ShapesWorld
features to real renders (t2i.eval.features), and the cost of an image: UNet and guide evaluations and seconds.

Cost: classifier-free guidance runs the UNet on the conditional and the unconditional input, 2 evaluations
per step; CLIP / classifier guidance runs it once plus one guide forward and backward per step. With
--match unet (the default) the gradient types get twice the steps, so every row spends the same UNet
evaluations per image; --match steps gives every type the same sampler steps. Usage:
    python benchmarks/glide_guidance.py --model t2i/weights/glide [--types cfg clip classifier]
        [--cfg-scales 1 2 3 5] [--clip-scales ...] [--classifier-scales ...] [--steps 25] [--match unet|steps]
        [--n-per-prompt 2] [--limit N] [--reference 2000] [--plot FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from t2i.api import load, load_guide
from t2i.eval.features import frechet_distance, image_features, shapesworld_reference
from t2i.eval.shapeseval import score
from t2i.eval.suite import CATEGORIES, build_suite
from t2i.systems.guides import guide_folder

DEFAULT_SCALES = {"cfg": [1.0, 2.0, 3.0, 5.0], "clip": [0.0, 10.0, 30.0, 100.0], "classifier": [1.0, 3.0, 10.0, 30.0]}


class Counter:
    """Inputs a module's forward saw, summed over calls (a batch of 2B counts 2B evaluations)."""

    def __init__(self, modules):
        self.n = 0
        self.hooks = [m.register_forward_pre_hook(self) for m in modules]

    def __call__(self, module, args) -> None:
        self.n += args[0].shape[0]

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def guide_network(guide) -> torch.nn.Module:
    """The module a guide runs on the noised image once per step (CLIP: its image tower)."""
    return guide.net.image if guide.kind == "clip" else guide.net


def run_row(system, guidance_type: str, guide, scale: float, steps: int, suite, indices: list[int],
            n_per_prompt: int, seed: int, reference: torch.Tensor) -> dict:
    """Generate n_per_prompt images of each chosen prompt (seed + prompt index), score and time them."""
    unets = Counter([stage.unet for stage in system.stages])
    guides = Counter([guide_network(guide)] if guide is not None else [])
    images, start = {}, time.perf_counter()
    try:
        for i in indices:
            images[i] = system.generate([suite[i].prompt] * n_per_prompt, seed=seed + i, steps=steps, guidance=scale,
                                        guidance_type=guidance_type, guide=guide)
    finally:
        unets.remove()
        guides.remove()
    seconds = time.perf_counter() - start
    n = len(indices) * n_per_prompt
    result = score(images, suite, progress=False)
    flat = [im for i in indices for im in images[i]]
    return {"type": guidance_type, "scale": scale, "steps": steps, "overall": result["overall"],
            "categories": result["categories"], "fd": frechet_distance(image_features(flat), reference),
            "unet_evals": unets.n / n, "guide_evals": guides.n / n, "seconds": seconds / n, "images": n}


def markdown(rows: list[dict]) -> str:
    cats = [c for c in CATEGORIES if any(c in r["categories"] for r in rows)]
    lines = [f"| guidance | scale | steps | {' | '.join(cats)} | overall | FD | UNet evals / image | "
             "guide evals / image | s / image |",
             f"|---|---:|---:|{'---:|' * len(cats)}---:|---:|---:|---:|---:|"]
    for r in rows:
        scores = " | ".join(f"{r['categories'][c]:.3f}" if c in r["categories"] else "" for c in cats)
        lines.append(f"| {r['type']} | {r['scale']:g} | {r['steps']} | {scores} | {r['overall']:.3f} | "
                     f"{r['fd']:.2f} | {r['unet_evals']:.0f} | {r['guide_evals']:.0f} | {r['seconds']:.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """ShapesEval overall and FD against the guidance scale, one line per type (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path} (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind in dict.fromkeys(r["type"] for r in rows):
        mine = [r for r in rows if r["type"] == kind]
        for ax, key in zip(axes, ("overall", "fd")):
            ax.plot([r["scale"] for r in mine], [r[key] for r in mine], marker="o", label=kind)
    for ax, label in zip(axes, ("ShapesEval overall (higher is better)", "Fréchet distance (lower is better)")):
        ax.set_xlabel("guidance scale")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="glide", help="a GLIDE system folder (or the named system) with its guides")
    p.add_argument("--types", nargs="+", choices=tuple(DEFAULT_SCALES), default=None,
                   help="guidance types (default: cfg and every guide the folder holds)")
    for kind, scales in DEFAULT_SCALES.items():
        p.add_argument(f"--{kind}-scales", nargs="+", type=float, default=scales, metavar="W")
        if kind != "cfg":
            p.add_argument(f"--{kind}-guide", metavar="PATH", help=f"the {kind} guide (default: MODEL/guide_{kind})")
    p.add_argument("--steps", type=int, default=None, help="classifier-free guidance steps (default: the model's)")
    p.add_argument("--match", choices=("unet", "steps"), default="unet",
                   help="unet: gradient guidance gets 2x the steps (equal UNet evaluations); steps: equal steps")
    p.add_argument("--n-per-prompt", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, metavar="N", help="the first N prompts of each category")
    p.add_argument("--reference", type=int, default=2000, metavar="N", help="real ShapesWorld renders for the FD")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--plot", default="out/glide_guidance.png", metavar="FILE")
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    args = p.parse_args(argv)

    system = load(args.model, device=args.device)
    if "clip" not in getattr(system, "guidance_types", ()):
        raise SystemExit(f"{args.model}: not a GLIDE system (it takes classifier-free guidance only)")
    guides = {}
    for kind in [k for k in ("clip", "classifier") if args.types is None or k in args.types]:
        path = getattr(args, f"{kind}_guide") or (guide_folder(system.folder, kind) if system.folder else None)
        if path is None or not Path(path).exists():
            if args.types is not None:
                raise SystemExit(f"no {kind} guide: {path or 'the model is no folder'}; give --{kind}-guide PATH")
            print(f"no {kind} guide ({path}): skipping {kind} guidance")
            continue
        guides[kind] = load_guide(path, kind).to(args.device)
    types = args.types or ["cfg", *guides]

    suite = build_suite()
    indices = [i for c in CATEGORIES for i in [j for j, s in enumerate(suite) if s.category == c][:args.limit]]
    reference = image_features(shapesworld_reference(args.reference))
    steps = args.steps or system.config.base.sampling.steps
    rows = []
    for kind in types:
        kind_steps = steps * 2 if kind != "cfg" and args.match == "unet" else steps
        for scale in getattr(args, f"{kind}_scales"):
            rows.append(run_row(system, kind, guides.get(kind), scale, kind_steps, suite, indices, args.n_per_prompt,
                                args.seed, reference))
            print(f"{kind} {scale:g}: overall {rows[-1]['overall']:.3f}, FD {rows[-1]['fd']:.2f}", flush=True)
    print(f"\nShapesEval ({len(indices)} prompts x {args.n_per_prompt} images), FD to {args.reference} real "
          f"renders, model {args.model}\n")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == "__main__":
    main()
