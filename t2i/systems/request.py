"""What a user asks of a system, frozen and checked once: `GenerationRequest`. The CLI, the Python
API, the evaluators and the service build one; a system reads it and never re-checks it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from t2i.io.images import image_to_tensor, keep_outside, mask_to_tensor
from t2i.systems.checks import (CONTROL_TYPES, GUIDANCE_TYPES, MAX_SEED, PRECISIONS, RequestLimits,  # noqa: F401
                                check_request)

CAPABILITIES = ("txt2img", "img2img", "inpaint", "vary", "control", "caption", "mix")

SEED_STRIDE = 0x9E3779B97F4A7C15  # image i's seed is seed + i * SEED_STRIDE: 2**64 / golden ratio, a Weyl sequence


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: prompts x num_images images, noise from CPU generators seeded from `seed`.
    None means "the system's default" (steps, sampler, guidance, threshold, size).

    Seeds: image i of the batch (`batch` order: each prompt num_images times in a row) draws all its noise, every
    stage's, from its own generator seeded `image_seed(i)` = seed + i * SEED_STRIDE (mod 2**64; image 0 keeps `seed`),
    as diffusers does given a list of generators. So image i is the image a request for its prompt alone with that
    seed makes, whatever the batch or batch_size, and its PNG carries that seed. The stride (the 64-bit golden
    ratio of a Weyl sequence) keeps the images of nearby seeds apart: with seed + i, ShapesEval's prompt i + 1
    (seed + i + 1) would start from prompt i's second image's noise. Systems with `per_image_noise = False` (the LDM and ControlNet,
    whose shipped images stay as they were made) draw the whole batch from one generator seeded `seed`, as
    diffusers does given one generator: the first image is the single run's, the others need the whole request
    (their PNGs carry `seed` and `batch_index`)."""

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
    aug_level: float | None = None  # super-resolution stages: the low-res image's noise level in [0, 1]; None: theirs
    width: int | None = None
    height: int | None = None
    image: Image.Image | None = None  # img2img / inpainting init image
    mask: Image.Image | None = None  # inpainting: white = repaint
    strength: float = 1.0  # img2img: how much of the image is redrawn, (0, 1]
    control: Any = None  # a control image (edges, depth, ...) or a list of them: several controls at once
    control_type: Any = None  # each control's kind (CONTROL_TYPES), one per image; None: the system's only kind
    control_scale: Any = 1.0  # each control's strength: one number for all, or one per image
    precision: str = "fp32"  # fp32 | bf16 | auto: the networks under bf16 autocast (auto: where bf16 is native)
    progress: bool = False  # show a progress bar
    feather: float = 0.0  # inpainting: px over which the repainted region fades into the kept one (inside the mask)
    mix: float | None = None  # dual guidance (Versatile Diffusion): prompt and image contexts, the prompt's weight
    batch_size: int = 8  # images sampled at once: larger batches run in chunks of this many, so memory stays flat
    limits: RequestLimits = RequestLimits()

    def __post_init__(self) -> None:
        check_request(self)

    @classmethod
    def of(cls, prompt: "str | list[str] | GenerationRequest", **options: Any) -> "GenerationRequest":
        """A request from generate()'s arguments: a request as is (no options), or a prompt + keywords."""
        if isinstance(prompt, GenerationRequest):
            return dataclasses.replace(prompt, **options) if options else prompt
        return cls(prompts=prompt, **options)

    @property
    def capability(self) -> str:
        """What this request asks of a system: txt2img, img2img, inpaint, control or mix."""
        if self.mix is not None:
            return "mix"
        if self.mask is not None:
            return "inpaint"
        if self.control is not None:
            return "control"
        return "img2img" if self.image is not None else "txt2img"

    @property
    def controls(self) -> tuple[tuple[Image.Image, str | None, float], ...]:
        """(image, control type, scale) of each control; () without one."""
        return tuple(zip(self.control, self.control_type, self.control_scale)) if self.control is not None else ()

    @property
    def batch(self) -> list[str]:
        """The prompt of each image: every prompt num_images times in a row."""
        return [p for p in self.prompts for _ in range(self.num_images)]

    def image_seed(self, i: int) -> int:
        """The seed of image i of the batch under per-image noise: seed + i * SEED_STRIDE, wrapping at 2**64."""
        return (self.seed + i * SEED_STRIDE) % (MAX_SEED + 1)

    def chunks(self) -> list["GenerationRequest"]:
        """The request as runs of at most batch_size images (one prompt per image, in batch order)."""
        batch = self.batch
        if len(batch) <= self.batch_size:
            return [self]
        return [dataclasses.replace(self, prompts=tuple(batch[i:i + self.batch_size]), num_images=1)
                for i in range(0, len(batch), self.batch_size)]

    def size(self, default: int) -> tuple[int, int]:
        """(width, height): as asked, else the init image's (not a mixed context image's), else default x default."""
        own = self.image is not None and self.mix is None
        w = self.width if self.width is not None else (self.image.size[0] if own else default)
        h = self.height if self.height is not None else (self.image.size[1] if own else default)
        return w, h

    def pixels(self, size: tuple[int, int]) -> torch.Tensor | None:
        """The init image at size (W, H) as (1, 3, H, W) in [-1, 1]; None without one."""
        return None if self.image is None else image_to_tensor(self.image, size)

    def repaint(self, size: tuple[int, int]) -> torch.Tensor | None:
        """The mask at size (W, H) (nearest neighbour) as (1, 1, H, W), 1 = repaint; None without one."""
        return None if self.mask is None else mask_to_tensor(self.mask.resize(size, Image.NEAREST))

    def keep_unmasked(self, x: torch.Tensor) -> torch.Tensor:
        """Inpainting: images x (B, 3, H, W) in [0, 1] with the init image's pixels pasted back outside the
        mask (exactly), fading in over `feather` px inside its edge; other requests' images as they are."""
        if self.mask is None:
            return x
        size = (x.shape[-1], x.shape[-2])
        return keep_outside(x, (self.pixels(size) + 1) / 2, self.repaint(size), self.feather)

    def metadata(self, model: str, sampler: str, steps: int, guidance: float) -> dict[str, str]:
        """The generation parameters every image carries in PNG text chunks."""
        meta = {"negative_prompt": self.negative_prompt, "seed": str(self.seed), "sampler": sampler,
                "steps": str(steps), "model": model, "guidance": str(guidance)}
        if self.precision != "fp32":
            meta["precision"] = self.precision
        meta.update({k: str(v) for k in ("threshold", "aug_level") if (v := getattr(self, k)) is not None})
        if self.mix is not None:
            meta.update(mode="mix", mix=f"{self.mix:g}")
        elif self.image is not None:
            meta.update(mode="inpaint" if self.mask is not None else "img2img", strength=str(self.strength))
        if self.control is not None:
            meta.update(control_type=",".join(str(t) for t in self.control_type),
                        control_scale=",".join(f"{s:g}" for s in self.control_scale))
        return meta
