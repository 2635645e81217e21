"""ShapesEval scoring: run a generator (or read a folder) over the suite, detect, score per category.

Plug a system in with ``evaluate(generate_fn, n_per_prompt=4)`` where
``generate_fn(prompts: list[str], seed: int) -> list[PIL.Image]``. A folder of generated images is
read with ``evaluate_dir(path)``: files named ``{prompt_index:04d}_{k}.png`` (k = 0..N-1; .jpg
and .webp too), any size, resized to 64 px. ``ground_truth_images`` renders the ceiling.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from t2i.data.render import render
from t2i.eval.detector import EVAL_SIZE, detect
from t2i.eval.suite import CATEGORIES, SUITE_VERSION, Spec, build_suite, passes, spec_scene

GenerateFn = Callable[[list[str], int], list[Image.Image]]
IMAGE_NAME = re.compile(r"^(\d{4})_(\d+)\.(png|jpg|jpeg|webp)$", re.IGNORECASE)


def score_image(spec: Spec, image: Image.Image, size: int = EVAL_SIZE) -> bool:
    """Does one image pass one prompt?"""
    background, objects = detect(image, size)
    return passes(spec, background, objects)


def score(images: dict[int, list[Image.Image]], suite: tuple[Spec, ...] | None = None,
          size: int = EVAL_SIZE, progress: bool = True) -> dict:
    """Result dict for images[prompt_index] = images of that prompt: overall and per-category scores."""
    suite = suite or build_suite()
    passed: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
    per_prompt = []
    for idx in tqdm(sorted(images), desc="ShapesEval", disable=not progress):
        spec = suite[idx]
        ok = [score_image(spec, im, size) for im in images[idx]]
        passed[spec.category] += ok
        per_prompt.append({"index": idx, "category": spec.category, "prompt": spec.prompt,
                           "passed": int(sum(ok)), "images": len(ok)})
    cats = {c: float(np.mean(v)) for c, v in passed.items() if v}
    return {"suite": SUITE_VERSION, "overall": float(np.mean(list(cats.values()))) if cats else 0.0,
            "categories": cats, "images": sum(len(v) for v in passed.values()), "prompts": per_prompt}


def evaluate(generate_fn: GenerateFn, n_per_prompt: int = 4, size: int = EVAL_SIZE, seed: int = 0,
             progress: bool = True) -> dict:
    """Score a text-to-image generator on the whole suite; prompt i is generated with seed + i."""
    suite = build_suite()
    images = {}
    for i, spec in enumerate(tqdm(suite, desc="generating", disable=not progress)):
        out = list(generate_fn([spec.prompt] * n_per_prompt, seed + i))
        if len(out) != n_per_prompt:
            raise ValueError(f"generate_fn returned {len(out)} images for {n_per_prompt} prompts")
        images[i] = out
    return score(images, suite, size, progress)


def ground_truth_images(n_per_prompt: int = 4, size: int = EVAL_SIZE, seed: int = 0) -> dict[int, list[Image.Image]]:
    """Renders of scenes that satisfy each prompt exactly: the ceiling of the benchmark."""
    out = {}
    for i, spec in enumerate(build_suite()):
        rngs = [np.random.default_rng([seed, i, k]) for k in range(n_per_prompt)]
        out[i] = [render(spec_scene(spec, rng), size) for rng in rngs]
    return out


def load_dir(path: str | Path) -> dict[int, list[Image.Image]]:
    """Images named {prompt_index:04d}_{k}.png from a folder; every suite prompt must be there."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    n = len(build_suite())
    images: dict[int, list[Image.Image]] = {}
    for f in sorted(path.iterdir()):
        m = IMAGE_NAME.match(f.name)
        if not m:
            continue
        idx = int(m.group(1))
        if idx >= n:
            raise ValueError(f"{f}: prompt index {idx} is past the suite's {n} prompts")
        try:
            with Image.open(f) as im:
                images.setdefault(idx, []).append(im.convert("RGB"))
        except OSError as e:
            raise ValueError(f"{f}: unreadable image ({e})") from e
    missing = [i for i in range(n) if i not in images]
    if missing:
        shown = ", ".join(f"{i:04d}" for i in missing[:5])
        raise ValueError(f"{path}: no images for {len(missing)} of {n} prompts (first: {shown}); "
                         "name files {prompt_index:04d}_{k}.png")
    return images


def evaluate_dir(path: str | Path, size: int = EVAL_SIZE, progress: bool = True) -> dict:
    """Score a folder of generated images named by prompt index."""
    return score(load_dir(path), size=size, progress=progress)


def markdown_table(result: dict) -> str:
    """The per-category scores and the overall score as a markdown table."""
    counts: dict[str, int] = {}
    for p in result.get("prompts", []):
        counts[p["category"]] = counts.get(p["category"], 0) + p["images"]
    lines = [f"ShapesEval ({result.get('suite', SUITE_VERSION)})", "", "| category | score | images |",
             "|---|---:|---:|"]
    for name, value in result["categories"].items():
        lines.append(f"| {name} | {value:.3f} | {counts.get(name, '')} |")
    lines.append(f"| **overall** | **{result['overall']:.3f}** | {result.get('images', '')} |")
    return "\n".join(lines)


def write_suite(path: str | Path) -> None:
    """Write the suite (index, category, prompt, spec) as JSON lines, for people and other tools."""
    import json

    with open(path, "w") as f:
        for i, spec in enumerate(build_suite()):
            f.write(json.dumps({"index": i, **spec.to_dict()}) + "\n")
