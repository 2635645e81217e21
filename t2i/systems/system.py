"""The base every system builds on: `generate(request)` (keywords build a request), what it supports,
chunked sampling, and the images it returns (the `System` protocol and registry: t2i.systems.registry)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Iterator

import torch
from PIL import Image
from torch import nn

from t2i.diffusion.config import SamplingConfig
from t2i.diffusion.samplers import Generators
from t2i.io.images import StepBar, tensor_to_images
from t2i.nn.precision import resolve_bf16
from t2i.systems.request import CAPABILITIES, GenerationRequest
from t2i.systems.registry import REGISTRY, System, register  # noqa: F401  (re-exported)
from t2i.systems.stage import PromptWarning, prompt_warnings


class SystemBase(nn.Module):
    """What systems share: request handling, the capability check, progress and labelled images.
    A subclass defines `run(request, progress) -> (B, 3, H, W) in [0, 1]`, `total_steps(request)`, the
    `default_sampling` a request's sampler, steps and guidance override, and `inpainting_only` (or its
    own `capabilities`)."""

    kind = ""
    name = ""
    guidance_types: tuple[str, ...] = ("cfg",)
    inpainting_only = False  # a model that takes the mask and the masked image as inputs: inpainting alone
    # each image draws its noise from its own generator, seeded request.image_seed(i) (GenerationRequest); False:
    # one generator seeded request.seed for the whole request, kept where shipped images must not change
    per_image_noise = True

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(("inpaint",) if self.inpainting_only else ("txt2img", "img2img", "inpaint"))

    def supports(self, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; choose from {', '.join(CAPABILITIES)}")
        return capability in self.capabilities

    def unsupported(self, capability: str) -> str:
        """The one-line error for a request this system cannot serve."""
        if self.inpainting_only:
            return "this is an inpainting model: give an init image and a mask"
        return (f"{self.name or self.kind!r} ({type(self).__name__}) does not support {capability}; it supports "
                f"{', '.join(c for c in CAPABILITIES if c in self.capabilities)}")

    def check(self, request: GenerationRequest) -> GenerationRequest:
        if not self.supports(request.capability):
            raise ValueError(self.unsupported(request.capability))
        if request.guidance_type not in self.guidance_types:
            raise ValueError(f"--guidance-type {request.guidance_type} needs a GLIDE system; {self.name!r} is "
                             f"{type(self).__name__}, which takes classifier-free guidance only")
        return request

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def sample(self, prompt: "str | list[str] | GenerationRequest", **options: Any) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], B = prompts x num_images, noise from CPU generators (`chunks`), as the
        model makes them (what diffusers' pipelines return: inpainting's kept pixels are the decoder's)."""
        progress = options.pop("progress", None)
        request = self.check(GenerationRequest.of(prompt, **options))
        return torch.cat(list(self.chunks(request, progress, keep=False)))

    def generate(self, prompt: "str | list[str] | GenerationRequest", **options: Any) -> list[Image.Image]:
        """PIL images; each carries its generation parameters in `.info` (written by `save_png`)."""
        return list(self.images(GenerationRequest.of(prompt, **options)))

    def images(self, request: GenerationRequest,
               progress: Callable[[int], None] | None = None) -> Iterator[Image.Image]:
        """`generate`'s images one at a time, each as soon as its chunk is made (`t2i generate` writes them
        so: memory stays flat however many are asked); `progress` is called after every sampler step (default:
        a progress bar when the request asks for one). Inpainting keeps the pixels outside the mask exactly."""
        request = self.check(request)
        meta = request.metadata(self.name, *self.settings(request))
        meta.update(self.extra_metadata(request))
        batch, bar = request.batch, StepBar(self.total_steps(request) * len(request.chunks()))
        try:
            i = 0
            for x in self.chunks(request, progress or (bar if request.progress else None)):
                for im in tensor_to_images(x):
                    im.info.update(meta, prompt=batch[i], batch_index=str(i))
                    if self.per_image_noise:  # the seed that makes this image alone
                        im.info["seed"] = str(request.image_seed(i))
                    i += 1
                    yield im
        finally:
            bar.close()

    @torch.no_grad()
    def chunks(self, request: GenerationRequest, progress: Callable[[int], None] | None,
               keep: bool = True) -> Iterator[torch.Tensor]:
        """The request's images (b, 3, H, W) in [0, 1], batch_size at a time. With `per_image_noise` image i draws
        from its own CPU generator seeded request.image_seed(i), so chunks give the images of one big batch, and
        of single runs, with any sampler. Otherwise all noise comes from one generator seeded request.seed that
        each chunk goes on drawing from: with a deterministic sampler (ddim, euler, heun, dpmpp_2m) a txt2img
        chunk's images are those of one big batch; ancestral samplers and img2img / inpainting draw per chunk,
        so there the images of n > batch_size differ from one big batch (same seed, same images). With `keep`,
        inpainting keeps the pixels outside the mask exactly (`keep_unmasked`). Non-finite results raise."""
        for text in prompt_warnings(self, request):
            warnings.warn(text, PromptWarning, stacklevel=3)
        shared = torch.Generator().manual_seed(request.seed)
        start = 0
        for part in request.chunks():
            n = len(part.batch)
            generator = ([torch.Generator().manual_seed(request.image_seed(start + j)) for j in range(n)]
                         if self.per_image_noise else shared)
            start += n
            with self.autocast(part):
                x = self.run(part, progress, generator)
            if not bool(torch.isfinite(x).all()):
                raise ValueError("sampling produced non-finite values (NaN or inf): lower the guidance scale, or use "
                                 "another sampler or more steps")
            yield part.keep_unmasked(x) if keep else x

    def autocast(self, request: GenerationRequest) -> torch.autocast:
        """bf16 autocast of the networks as the request's precision says (samplers stay in float32)."""
        setting = {"fp32": False, "bf16": True, "auto": "auto"}[request.precision]
        use, _ = resolve_bf16(setting, self.device)
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use)

    def extra_metadata(self, request: GenerationRequest) -> dict[str, str]:
        return {}

    def run(self, request: GenerationRequest, progress: Callable[[int], None] | None,
            generator: Generators) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] of one chunk of a request, noise drawn from `generator`: one per image
        (`per_image_noise`), else one for the chunk (`t2i.diffusion.samplers.randn` draws from either)."""
        raise NotImplementedError

    def total_steps(self, r: GenerationRequest) -> int:
        """The progress bar's length: the first stage's steps (fewer in img2img, by strength)."""
        steps = self.sampling(r)[0].steps
        return min(int(steps * r.strength), steps) if r.image is not None else steps

    @property
    def default_sampling(self) -> SamplingConfig:
        raise NotImplementedError

    def sampling(self, r: GenerationRequest) -> tuple[SamplingConfig, float]:
        """The sampling settings of a request (its sampler and steps over the defaults) and guidance scale."""
        s = self.default_sampling
        return (dataclasses.replace(s, sampler=r.sampler or s.sampler, steps=r.steps or s.steps),
                s.guidance if r.guidance is None else r.guidance)

    def settings(self, r: GenerationRequest) -> tuple[str, int, float]:
        """(sampler, steps, guidance) for the metadata."""
        s, scale = self.sampling(r)
        return s.sampler, s.steps, scale

    @staticmethod
    def check_size(width: int, height: int, multiple: int) -> None:
        if width < multiple or height < multiple or width % multiple or height % multiple:
            raise ValueError(f"this model makes images whose sides are multiples of {multiple} px; "
                             f"got {width}x{height}")
