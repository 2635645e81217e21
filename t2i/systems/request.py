"""What a user asks of a system, frozen and checked once: `GenerationRequest`. The CLI, the Python
API, the evaluators and the service build one; a system reads it and never re-checks it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from t2i.diffusion.guidance import parse_threshold
from t2i.diffusion.samplers import SAMPLERS
from t2i.io.images import image_to_tensor, mask_to_tensor

CAPABILITIES = ("txt2img", "img2img", "inpaint", "vary", "control", "caption")
GUIDANCE_TYPES = ("cfg", "clip", "classifier")
PRECISIONS = ("fp32", "bf16", "auto")


def _int(name: str, v: Any, low: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be a whole number, got {v!r}")
    if v < low:
        raise ValueError(f"{name} must be at least {low}, got {v}")


def _finite(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: prompts x num_images images, all noise from one CPU generator seeded with `seed`.
    None means "the system's default" (steps, sampler, guidance, threshold, size)."""

    prompts: tuple[str, ...]
    negative_prompt: str = ""
    num_images: int = 1
    seed: int = 0
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None  # classifier-free or gradient guidance scale
    guidance_type: str = "cfg"  # cfg | clip | classifier
    guide: Any = None  # clip / classifier guidance: a Guide, its folder, or log p(x, sigma, cond) -> (B,)
    threshold: str | None = None  # none | static[:limit] | dynamic[:percentile]; None: the stage's own
    width: int | None = None
    height: int | None = None
    image: Image.Image | None = None  # img2img / inpainting init image
    mask: Image.Image | None = None  # inpainting: white = repaint
    strength: float = 1.0  # img2img: how much of the image is redrawn, (0, 1]
    control: Image.Image | None = None  # a control image (edges, depth, ...)
    precision: str = "fp32"  # fp32 | bf16 | auto: the networks under bf16 autocast (auto: where bf16 is native)
    progress: bool = False  # show a progress bar

    def __post_init__(self) -> None:
        prompts = (self.prompts,) if isinstance(self.prompts, str) else tuple(self.prompts)
        object.__setattr__(self, "prompts", prompts)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("the prompt is empty: give the text to draw")
        if not isinstance(self.negative_prompt, str):
            raise ValueError(f"the negative prompt must be text, got {type(self.negative_prompt).__name__}")
        if isinstance(self.num_images, int) and not isinstance(self.num_images, bool) and self.num_images < 1:
            raise ValueError(f"the number of images must be at least 1, got {self.num_images}")
        _int("num_images", self.num_images, 1)
        _int("seed", self.seed, 0)
        if self.steps is not None:
            _int("steps", self.steps, 1)
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {', '.join(sorted(SAMPLERS))}")
        if self.guidance is not None:
            _finite("guidance", self.guidance)
        if self.guidance_type not in GUIDANCE_TYPES:
            raise ValueError(f"unknown guidance type {self.guidance_type!r}; choose from {', '.join(GUIDANCE_TYPES)}")
        if self.guidance_type == "cfg" and self.guide is not None:
            raise ValueError("guidance_type 'cfg' (classifier-free) takes no guide; give guidance_type "
                             "'clip' or 'classifier' with it")
        if self.threshold is not None:
            parse_threshold(self.threshold)
        for name in ("width", "height"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), 1)
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        _finite("strength", self.strength)
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        self._check_images()

    def _check_images(self) -> None:
        if self.mask is not None and self.image is None:
            raise ValueError("inpainting needs an init image as well as a mask")
        if self.mask is not None and self.mask.size != self.image.size:
            raise ValueError(f"the mask is {self.mask.size[0]}x{self.mask.size[1]} px but the image is "
                             f"{self.image.size[0]}x{self.image.size[1]}: they must be the same size")

    @classmethod
    def of(cls, prompt: "str | list[str] | GenerationRequest", **options: Any) -> "GenerationRequest":
        """A request from generate()'s arguments: a request as is (no options), or a prompt + keywords."""
        if isinstance(prompt, GenerationRequest):
            return dataclasses.replace(prompt, **options) if options else prompt
        return cls(prompts=prompt, **options)

    @property
    def capability(self) -> str:
        """What this request asks of a system: txt2img, img2img, inpaint or control."""
        if self.mask is not None:
            return "inpaint"
        if self.control is not None:
            return "control"
        return "img2img" if self.image is not None else "txt2img"

    @property
    def batch(self) -> list[str]:
        """The prompt of each image: every prompt num_images times in a row."""
        return [p for p in self.prompts for _ in range(self.num_images)]

    def size(self, default: int) -> tuple[int, int]:
        """(width, height): as asked, else the init image's, else default x default."""
        w = self.width if self.width is not None else (self.image.size[0] if self.image is not None else default)
        h = self.height if self.height is not None else (self.image.size[1] if self.image is not None else default)
        return w, h

    def pixels(self, size: tuple[int, int]) -> torch.Tensor | None:
        """The init image at size (W, H) as (1, 3, H, W) in [-1, 1]; None without one."""
        return None if self.image is None else image_to_tensor(self.image, size)

    def repaint(self, size: tuple[int, int]) -> torch.Tensor | None:
        """The mask at size (W, H) (nearest neighbour) as (1, 1, H, W), 1 = repaint; None without one."""
        return None if self.mask is None else mask_to_tensor(self.mask.resize(size, Image.NEAREST))

    def metadata(self, model: str, sampler: str, steps: int, guidance: float) -> dict[str, str]:
        """The generation parameters every image carries in PNG text chunks."""
        meta = {"negative_prompt": self.negative_prompt, "seed": str(self.seed), "sampler": sampler,
                "steps": str(steps), "model": model, "guidance": str(guidance)}
        if self.precision != "fp32":
            meta["precision"] = self.precision
        if self.image is not None:
            meta.update(mode="inpaint" if self.mask is not None else "img2img", strength=str(self.strength))
        return meta
