"""Regenerate tests/data/ldm_reference/*.png: the shipped `ldm`'s images on fixed prompts, seeds and
settings, which tests/test_shipped_ldm_pixels.py compares against (max difference <= 1/255).

Before replacing t2i/weights/ldm, run `python scripts/regen_ldm_reference.py --check` on the OLD
weights (it must report no difference), then replace the weights and run it without --check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "ldm_reference"


def init_image() -> Image.Image:
    """A fixed 64x64 scene: a red square and a blue circle on grey."""
    im = Image.new("RGB", (64, 64), (128, 128, 128))
    d = ImageDraw.Draw(im)
    d.rectangle([8, 8, 28, 28], fill=(220, 30, 30))
    d.ellipse([36, 34, 58, 56], fill=(30, 40, 220))
    return im


def left_half_mask() -> Image.Image:
    m = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(m).rectangle([0, 0, 31, 63], fill=255)  # white = repaint
    return m


def cases() -> dict[str, dict]:
    """name -> generate() keywords (each a small batch of 64 px images)."""
    return {
        "txt2img_dpmpp10": dict(prompt=["a red circle", "a blue square above a green triangle"], num_images=1,
                                seed=3, steps=10, sampler="dpmpp_2m"),
        "txt2img_ddim": dict(prompt="a yellow triangle", num_images=2, seed=7, steps=8, sampler="ddim",
                             negative_prompt="a red circle"),
        "img2img": dict(prompt="a green square", num_images=1, seed=11, steps=10, image=init_image(), strength=0.6),
        "inpaint": dict(prompt="a purple circle", num_images=2, seed=5, steps=10, image=init_image(),
                        mask=left_half_mask()),
    }


def render(system, kwargs: dict) -> np.ndarray:
    """The images of one case side by side: (H, W * B, 3) uint8."""
    return np.concatenate([np.asarray(im.convert("RGB")) for im in system.generate(**kwargs)], axis=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true", help="compare with the saved references instead of writing")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    import t2i

    system = t2i.load("ldm")
    worst = 0
    for name, kwargs in cases().items():
        a = render(system, kwargs)
        path = OUT / f"{name}.png"
        if args.check:
            ref = np.asarray(Image.open(path).convert("RGB"))
            diff = int(np.abs(a.astype(int) - ref.astype(int)).max())
            worst = max(worst, diff)
            print(f"{name}: max difference {diff}/255")
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(path, optimize=True)
            print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 1 if args.check and worst > 1 else 0


if __name__ == "__main__":
    sys.exit(main())
