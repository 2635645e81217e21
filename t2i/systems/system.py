"""The `System` protocol and the base every system builds on: `generate(request)` (keywords build a
request), what it supports, a registry of systems by name, and the images it returns."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import torch
from PIL import Image
from torch import nn

from t2i.diffusion.config import SamplingConfig
from t2i.io.images import StepBar, labelled_images
from t2i.nn.precision import resolve_bf16
from t2i.systems.request import CAPABILITIES, GenerationRequest


class System(Protocol):
    name: str
    capabilities: frozenset[str]

    def supports(self, capability: str) -> bool: ...

    def generate(self, prompt: "str | list[str] | GenerationRequest", **options: Any) -> list[Image.Image]: ...


REGISTRY: dict[str, type] = {}  # system.json's "system" -> the class that loads that folder


def register(name: str) -> Callable[[type], type]:
    """Class decorator: `@register("ldm")` names a system; `t2i.load`, the CLI and the contract test find it."""

    def add(cls: type) -> type:
        cls.kind = name
        REGISTRY[name] = cls
        return cls

    return add


class SystemBase(nn.Module):
    """What systems share: request handling, the capability check, progress and labelled images.
    A subclass defines `run(request, progress) -> (B, 3, H, W) in [0, 1]`, `total_steps(request)`, the
    `default_sampling` a request's sampler, steps and guidance override, and `inpainting_only` (or its
    own `capabilities`)."""

    kind = ""
    name = ""
    guidance_types: tuple[str, ...] = ("cfg",)
    inpainting_only = False  # a model that takes the mask and the masked image as inputs: inpainting alone

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
        """Images (B, 3, H, W) in [0, 1], B = prompts x num_images, all noise from one CPU generator."""
        progress = options.pop("progress", None)
        request = self.check(GenerationRequest.of(prompt, **options))
        with self.autocast(request):
            return self.run(request, progress)

    def generate(self, prompt: "str | list[str] | GenerationRequest", **options: Any) -> list[Image.Image]:
        """PIL images; each carries its generation parameters in `.info` (written by `save_png`)."""
        request = self.check(GenerationRequest.of(prompt, **options))
        bar = StepBar(self.total_steps(request))
        try:
            with self.autocast(request):
                x = self.run(request, bar if request.progress else None)
        finally:
            bar.close()
        meta = request.metadata(self.name, *self.settings(request))
        meta.update(self.extra_metadata(request))
        return labelled_images(x, list(request.prompts), request.num_images, meta)

    def autocast(self, request: GenerationRequest) -> torch.autocast:
        """bf16 autocast of the networks as the request's precision says (samplers stay in float32)."""
        setting = {"fp32": False, "bf16": True, "auto": "auto"}[request.precision]
        use, _ = resolve_bf16(setting, self.device)
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use)

    def extra_metadata(self, request: GenerationRequest) -> dict[str, str]:
        return {}

    def run(self, request: GenerationRequest, progress: Callable[[int], None] | None) -> torch.Tensor:
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
