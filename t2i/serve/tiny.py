"""For tests only (`t2i serve --tiny`): every asked system built from `cls.tiny()` (random weights, 16-32 px,
milliseconds per image), and `tiny-vary`, a stand-in for a system that makes variations until one ships
(unCLIP, Versatile Diffusion). Nothing here is registered: the system registry and its contract test do not
see it."""

from __future__ import annotations

from typing import Any

from PIL import Image

from t2i.systems import SYSTEMS, GenerationRequest

VARY_DOUBLE = "tiny-vary"


class VaryDouble:
    """A tiny system that also supports `vary`: a variation is the image redrawn at strength 0.6 (SDEdit) —
    the interface of `system.vary(image, ...)`, not unCLIP's method. Everything else is the wrapped system's."""

    def __init__(self, system: Any):
        self.inner, self.name = system, VARY_DOUBLE

    def supports(self, capability: str) -> bool:
        return capability == "vary" or self.inner.supports(capability)

    def generate(self, prompt: Any, **options: Any) -> list[Image.Image]:
        return self.inner.generate(prompt, **options)

    def total_steps(self, request: GenerationRequest) -> int:
        return self.inner.total_steps(request)

    def vary(self, image: Image.Image, *, num_images: int = 1, seed: int = 0, steps: int | None = None,
             width: int | None = None, height: int | None = None) -> list[Image.Image]:
        size = (width, height) if width is not None else image.size
        request = GenerationRequest(prompts=("a variation",), image=image.convert("RGB").resize(size),
                                    strength=0.6, num_images=num_images, seed=seed, steps=steps)
        images = self.inner.generate(request)
        for im in images:
            im.info.update(mode="vary", model=self.name)
        return images


def tiny_systems(names: list[str]) -> dict[str, Any]:
    """name -> a tiny random system ("tiny-vary": the tiny LDM wrapped in VaryDouble)."""
    import torch

    def noisy(system):  # fresh weights zero some output layers: noise everywhere so the seed shows
        with torch.no_grad():
            for p in system.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        return system.eval()

    out: dict[str, Any] = {}
    for name in names:
        gen = torch.Generator().manual_seed(0)
        if name == VARY_DOUBLE:
            out[name] = VaryDouble(noisy(SYSTEMS["ldm"].tiny(seed=1)))
        elif name in SYSTEMS:
            out[name] = noisy(SYSTEMS[name].tiny())
        else:
            raise ValueError(f"--tiny: unknown system {name!r}; choose from {', '.join(sorted(SYSTEMS))} or "
                             f"{VARY_DOUBLE}")
    return out
