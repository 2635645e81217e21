"""ShapesEval detector accuracy on ShapesWorld renders: clean at 32/64/128 px, and mildly blurred or noisy at 64 px.

An image is right when the detected (colour, shape) multiset equals the scene's; an object is
right when its (colour, shape) is found. Usage: python benchmarks/detector_accuracy.py [--n 500]
"""

from __future__ import annotations

import argparse
import time
import numpy as np
from PIL import Image, ImageFilter

from t2i.eval.detector import render_accuracy


def blur(sigma: float):
    return lambda im, i: im.filter(ImageFilter.GaussianBlur(sigma))


def noise(std: float):
    def f(im, i):
        a = np.asarray(im, np.float32) + np.random.default_rng(i).normal(0, std, (im.height, im.width, 3))
        return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
    return f


def accuracy(size: int, n: int, seed: int, corrupt=None) -> tuple[float, float, float]:
    """(image accuracy, object accuracy, images per second) at `size`, detected at that size."""
    t = time.perf_counter()
    img, obj = render_accuracy(size, n, seed, corrupt)
    return img, obj, n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=12345)
    args = p.parse_args()
    cases = [("clean", 32, None), ("clean", 64, None), ("clean", 128, None),
             ("gaussian blur sigma 0.5 px", 64, blur(0.5)), ("gaussian blur sigma 0.8 px", 64, blur(0.8)),
             ("gaussian noise std 5/255", 64, noise(5)), ("gaussian noise std 10/255", 64, noise(10))]
    print("| renders | side (px) | images right | objects right | images / s |")
    print("|---|---:|---:|---:|---:|")
    for name, size, corrupt in cases:
        img, obj, speed = accuracy(size, args.n, args.seed, corrupt)
        print(f"| {name} | {size} | {img:.3f} | {obj:.3f} | {speed:.0f} |")


if __name__ == "__main__":
    main()
