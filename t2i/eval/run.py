"""What `t2i eval shapes` does: pick the images (ground truth or a folder), score, print, save JSON."""

from __future__ import annotations

import json
from pathlib import Path

from t2i.eval.shapeseval import evaluate_dir, ground_truth_images, markdown_table, score, write_suite


def run_eval_shapes(real: bool, images: str | None, n_per_prompt: int = 4, size: int = 64,
                    json_path: str | None = None, seed: int = 0, prompts_path: str | None = None) -> dict | None:
    """Score ground-truth renders at `size` px (real) or a folder of images, at 64 px; write JSON when asked."""
    if prompts_path:
        write_suite(prompts_path)
        print(f"wrote the suite's prompts to {prompts_path}")
        if not real and images is None:
            return None
    if real == (images is not None):
        raise ValueError("give exactly one of --real or --images DIR (or --prompts FILE)")
    if n_per_prompt < 1:
        raise ValueError(f"--n-per-prompt must be at least 1, got {n_per_prompt}")
    if size < 16:
        raise ValueError(f"--size must be at least 16, got {size}")
    if real:
        result = score(ground_truth_images(n_per_prompt, size, seed))  # rendered at size, scored at 64 px
    else:
        result = evaluate_dir(images)
    print(markdown_table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result
