"""What `t2i eval shapes` does: pick the images (ground truth, a folder or a model), score, print, save JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from t2i.eval.shapeseval import evaluate, evaluate_dir, ground_truth_images, markdown_table, score, write_suite


@dataclass(frozen=True)
class ModelSettings:
    """How a model is sampled for ShapesEval (None: the model's own default)."""

    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 | auto (GenerationRequest.precision)

    def __post_init__(self) -> None:
        self.request()  # the request checks the sampler, steps, guidance and precision (one-line ValueErrors)

    def request(self, prompts: tuple[str, ...] = ("a red circle",), seed: int = 0):
        """A `GenerationRequest` with these settings; evaluators replace its prompts, seed and images."""
        from t2i.systems.request import GenerationRequest

        return GenerationRequest(prompts=prompts, seed=seed, steps=self.steps, sampler=self.sampler,
                                 guidance=self.guidance, precision=self.precision)


GenerateFn = Callable[[list[str], int], list]  # (prompts, seed) -> PIL images
MakeGenerator = Callable[[str, ModelSettings], GenerateFn]


def run_eval_shapes(*, real: bool = False, images: str | None = None, model: str | None = None,
                    settings: ModelSettings = ModelSettings(), make_generator: MakeGenerator | None = None,
                    n_per_prompt: int = 4, size: int = 64, json_path: str | None = None, seed: int = 0,
                    prompts_path: str | None = None) -> dict | None:
    """Score ground-truth renders at `size` px (real), a folder of images or a model's samples, at 64 px;
    write JSON when asked. A model is sampled by make_generator(model, settings) (`t2i.api.model_generator`:
    loading systems is the floor above this one)."""
    if prompts_path:
        write_suite(prompts_path)
        print(f"wrote the suite's prompts to {prompts_path}")
        if not real and images is None and model is None:
            return None
    if real + (images is not None) + (model is not None) != 1:
        raise ValueError("give exactly one of --real, --images DIR or --model NAME|PATH (or --prompts FILE)")
    if n_per_prompt < 1:
        raise ValueError(f"--n-per-prompt must be at least 1, got {n_per_prompt}")
    if size < 16:
        raise ValueError(f"--size must be at least 16, got {size}")
    if real:
        result = score(ground_truth_images(n_per_prompt, size, seed))  # rendered at size, scored at 64 px
    elif model is not None:
        if make_generator is None:
            raise ValueError("--model needs make_generator (t2i.api.model_generator) to load and sample it")
        result = evaluate(make_generator(model, settings), n_per_prompt=n_per_prompt, seed=seed)
        result["model"] = {"name": model, "steps": settings.steps, "sampler": settings.sampler,
                           "guidance": settings.guidance, "n_per_prompt": n_per_prompt, "seed": seed}
    else:
        result = evaluate_dir(images)
    print(markdown_table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result
