"""Which caption words does a text-to-image model use? Its denoising loss with the true caption vs the caption
with one kind of word replaced.

Ground-truth ShapesWorld scenes of ShapesEval's grid-position prompts ("a yellow triangle in the top left") are
encoded and noised at a few timesteps; the model's loss (MSE to its training target) is measured with the true
caption, with the position replaced by each of the eight other grid positions, with the colour replaced by
other colours, and with the empty caption. A model that reads a kind of word has a lower loss with the true
words than with the replaced ones, most at high noise where the layout is decided; "true best" is the fraction
of images whose true caption has the lowest loss of the nine positions (1/9 when positions are ignored).

    .venv/bin/python benchmarks/caption_word_probe.py ldm
    .venv/bin/python benchmarks/caption_word_probe.py runs/shapes_ldm_binding/checkpoints/step_00000750
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

POSITIONS = ["in the top left", "at the top", "in the top right", "on the left", "in the center", "on the right",
             "in the bottom left", "at the bottom", "in the bottom right"]


def replace_word(caption: str, words: list[str], shift: int) -> str:
    """The caption with its word of `words` replaced by the one `shift` places further in the list."""
    word = next(w for w in words if f" {w}" in f" {caption}")
    return caption.replace(word, words[(words.index(word) + shift) % len(words)], 1)


def probe(model: str, per_prompt: int, timesteps: list[int], seed: int = 0) -> list[dict]:
    """One row per timestep: mean loss with the true, position-replaced, colour-replaced and empty captions."""
    import t2i
    from t2i.data.render import render
    from t2i.data.scene import COLOR_NAMES
    from t2i.encoders.registry import encode_prompts
    from t2i.eval.suite import build_suite, spec_scene

    system = t2i.load(model).float()
    if not hasattr(system, "autoencoder"):
        raise SystemExit(f"{model}: a latent text-to-image system (ldm) or its training run is probed here")
    specs = [s for s in build_suite() if s.category == "position" and any(p in s.prompt for p in POSITIONS)]
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    images, captions = [], []
    for spec in specs:
        for _ in range(per_prompt):
            pixels = np.asarray(render(spec_scene(spec, rng), 64), dtype=np.float32) / 127.5 - 1
            images.append(torch.from_numpy(pixels).permute(2, 0, 1))
            captions.append(spec.prompt)
    colors = list(COLOR_NAMES)
    rows = []
    with torch.no_grad():
        z0 = system.encode_image(torch.stack(images), gen)
        for t in timesteps:
            a = system.schedule.alphas_cumprod[t].float()
            eps = torch.randn(z0.shape, generator=gen)
            xt = a.sqrt() * z0 + (1 - a).sqrt() * eps
            target = {"v": a.sqrt() * eps - (1 - a).sqrt() * z0, "eps": eps, "x0": z0}[system.config.prediction]

            def loss(caps: list[str]) -> torch.Tensor:
                cond = encode_prompts(system.config.text, system.text_encoder, caps)
                out = system.unet(xt, torch.full((len(caps),), t), **cond)
                return ((out - target) ** 2).mean(dim=(1, 2, 3))

            true = loss(captions)
            moved = torch.stack([loss([replace_word(c, POSITIONS, k) for c in captions]) for k in range(1, 9)])
            recolored = torch.stack([loss([replace_word(c, colors, k) for c in captions]) for k in (1, 3, 5)])
            rows.append({"t": t, "true": true.mean().item(), "position": moved.mean().item(),
                         "colour": recolored.mean().item(), "empty": loss([""] * len(captions)).mean().item(),
                         "true_best": (true < moved.min(0).values).float().mean().item()})
            print(f"# t = {t} done", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a named system (ldm), a t2i folder, or a training run / checkpoint folder")
    p.add_argument("--per-prompt", type=int, default=4, help="ground-truth scenes per position prompt")
    p.add_argument("--timesteps", default="999,900,800,650,500,300")
    args = p.parse_args(argv)
    rows = probe(args.model, args.per_prompt, [int(t) for t in args.timesteps.split(",")])
    print(f"\n{args.model}: loss with the true caption and with one kind of word replaced\n")
    print("| t | true | position replaced | colour replaced | empty caption | true best of 9 positions |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['t']} | {r['true']:.4f} | {r['position']:.4f} | {r['colour']:.4f} | {r['empty']:.4f} | "
              f"{r['true_best']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
