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


@dataclass(frozen=True)
class ShapesJob:
    """What `t2i eval shapes` scores and writes: exactly one source (ground-truth renders at `size` px,
    a folder of images, or a model sampled with `settings`), unless only the suite's prompts are asked."""

    real: bool = False
    images: str | None = None
    model: str | None = None
    n_per_prompt: int = 4
    size: int = 64
    seed: int = 0
    json_path: str | None = None
    prompts_path: str | None = None

    def __post_init__(self) -> None:
        if self.real + (self.images is not None) + (self.model is not None) != (0 if self.prompts_only else 1):
            raise ValueError("give exactly one of --real, --images DIR or --model NAME|PATH (or --prompts FILE)")
        if self.n_per_prompt < 1:
            raise ValueError(f"--n-per-prompt must be at least 1, got {self.n_per_prompt}")
        if self.size < 16:
            raise ValueError(f"--size must be at least 16, got {self.size}")

    @property
    def prompts_only(self) -> bool:
        return bool(self.prompts_path) and not self.real and self.images is None and self.model is None


def run_eval_shapes(job: ShapesJob, settings: ModelSettings = ModelSettings(),
                    make_generator: MakeGenerator | None = None) -> dict | None:
    """Score ground-truth renders at `size` px (real), a folder of images or a model's samples, at 64 px;
    write JSON when asked. A model is sampled by make_generator(model, settings) (`t2i.api.model_generator`:
    loading systems is the floor above this one)."""
    if job.prompts_path:
        write_suite(job.prompts_path)
        print(f"wrote the suite's prompts to {job.prompts_path}")
        if job.prompts_only:
            return None
    if job.real:
        result = score(ground_truth_images(job.n_per_prompt, job.size, job.seed))  # rendered at size, scored at 64 px
    elif job.model is not None:
        if make_generator is None:
            raise ValueError("--model needs make_generator (t2i.api.model_generator) to load and sample it")
        result = evaluate(make_generator(job.model, settings), n_per_prompt=job.n_per_prompt, seed=job.seed)
        result["model"] = {"name": job.model, "steps": settings.steps, "sampler": settings.sampler,
                           "guidance": settings.guidance, "n_per_prompt": job.n_per_prompt, "seed": job.seed}
    else:
        result = evaluate_dir(job.images)
    print(markdown_table(result))
    if job.json_path:
        Path(job.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result
