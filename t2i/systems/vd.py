"""Versatile Diffusion (Xu et al. 2023): one multi-flow network over image latents, CLIP's text and image tokens
the contexts. text -> image is the (image, text) flow, a variation the (image, image) flow over the image's own
tokens (sec. 4), dual guidance mixes both contexts' attention by `mix` (sec. 3.3, DualTransformer2DModel); the
text flows (caption, vary_text) are t2i.systems.vd_text's.

Composition only: the network is t2i.nn.multiflow, the math t2i.diffusion, sampling the stage's."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from t2i.diffusion.samplers import Generators
from t2i.encoders.clip import CLIPModel
from t2i.encoders.tokenizer import WordTokenizer
from t2i.nn.autoencoder import AutoencoderKL
from t2i.nn.multiflow import Flow, MultiFlowUNet, token_context
from t2i.nn.text_vae import TextVAE
from t2i.systems.base import (image_to_tensor, load_clip, load_parts, read_system, save_clip, save_parts, tensor_to_images,
                              write_system_json)
from t2i.systems.request import GenerationRequest
from t2i.systems.stage import Guidance, StageRun, sample_stage, stage_denoiser
from t2i.systems.system import SystemBase, register
from t2i.systems.vd_config import VDConfig, tiny_config
from t2i.systems.vd_text import TextFlows

MIN_SIDE = 8  # smaller input images are refused


@register("vd")
class VersatileDiffusion(TextFlows, SystemBase):
    """`generate(prompt)`, `vary(image, n)`, `mix(prompt, image, mix)`, `caption(image, n)`, `vary_text(caption, n)`:
    flows of one MultiFlowUNet."""

    def __init__(self, config: VDConfig, clip: CLIPModel, name: str = "vd"):
        super().__init__()
        self.config, self.clip, self.name = config, clip, name
        self.net, self.autoencoder = MultiFlowUNet(config.net), AutoencoderKL(config.autoencoder)
        if len(clip.tokenizer) != config.text_vae.vocab_size:
            raise ValueError(f"the text VAE reads {config.text_vae.vocab_size} ids; the tokenizer has "
                             f"{len(clip.tokenizer)}")
        self.text_vae = TextVAE(config.text_vae)
        self.schedule = config.schedule.build()

    @classmethod
    def tiny(cls, seed: int = 0) -> "VersatileDiffusion":
        """A tiny random system (`tiny_config`, 16 px), for contract tests."""
        torch.manual_seed(seed)
        return cls(tiny_config(), CLIPModel(tiny_config().clip, WordTokenizer.for_shapes()), "tiny-vd")

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(("txt2img", "vary", "caption", "mix"))

    @property
    def default_sampling(self):
        return self.config.sampling

    def text_context(self, captions: list[str]) -> torch.Tensor:
        """CLIP's projected text tokens (B, L, E), scaled as VD scales them (the text context)."""
        pooled, tokens, _ = self.clip.text(captions)
        return token_context(self.clip.text_projection(tokens), self.clip.text_projection(pooled)) * self.config.context_scale

    def image_context(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP's projected image tokens (B, 1 + N, E) of pixels in [-1, 1] (the image context)."""
        side = self.config.clip.image.image_size
        pixels = torch.nn.functional.interpolate(pixels, size=(side, side), mode="bilinear", antialias=True)
        pooled, tokens = self.clip.image(pixels.to(self.device))
        return token_context(self.clip.image.proj(tokens), pooled) * self.config.context_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels (B, 3, H, W) in [0, 1]."""
        return (self.autoencoder.decode(self.autoencoder.unscale(latents)) / 2 + 0.5).clamp(0, 1).float().cpu()

    def draw(self, flow: Flow, contexts: tuple[torch.Tensor, torch.Tensor], r: GenerationRequest,
             generator: Generators, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] of one image-data flow: contexts (cond, uncond) (B, L, E), the request's
        size, sampler, steps and guidance."""
        cfg, (settings, scale) = self.config, self.sampling(r)
        width, height = r.size(cfg.sample_size)
        self.check_size(width, height, cfg.size_multiple)
        cond, uncond = contexts
        down = cfg.autoencoder.downscale
        shape = (cond.shape[0], cfg.autoencoder.latent_channels, height // down, width // down)
        guidance = Guidance(scale, {"context": uncond} if scale != 1 else None)
        den = stage_denoiser(self.net.flow(flow), self.schedule, cfg.prediction, guidance, [])
        run = StageRun(shape, settings, {"context": cond}, progress=progress, device=self.device,
                       dtype=next(self.net.parameters()).dtype)
        return self.decode(sample_stage(den, run, generator))

    def run(self, r: GenerationRequest, progress: Callable[[int], None] | None,
            generator: Generators) -> torch.Tensor:
        """text -> image (the (image, text) flow), or with r.mix VD's dual guidance over the prompt and r.image."""
        text = self.text_context(r.batch), self.text_context([r.negative_prompt] * len(r.batch))
        if r.mix is None:
            return self.draw(Flow("image", "text"), text, r, generator, progress)
        both = tuple(torch.cat(c, 1) for c in zip(text, self.image_contexts(r.image, len(r.batch))))  # (B, L_t+L_i, E)
        return self.draw(Flow.dual("image", r.mix, text[0].shape[1]), both, r, generator, progress)

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        """A PIL image as (1, 3, H, W) in [-1, 1]; a non-image or a tiny one is a one-line error."""
        if not isinstance(image, Image.Image):
            raise ValueError(f"expected a PIL image, got {type(image).__name__}")
        if min(image.size) < MIN_SIDE:
            raise ValueError(f"the image is {image.size[0]}x{image.size[1]} px; VD needs at least {MIN_SIDE} px a side")
        return image_to_tensor(image)

    def image_contexts(self, image: Image.Image, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The image's context and the negative's (a flat gray image's, as VD's variation pipeline), n rows each."""
        pixels = self._pixels(image)
        both = self.image_context(torch.cat([pixels, torch.zeros_like(pixels)]))  # gray = 0 in [-1, 1]
        return both[:1].expand(n, -1, -1), both[1:].expand(n, -1, -1)

    @torch.no_grad()
    def vary(self, image: Image.Image, n: int = 4, *, seed: int = 0, steps: int | None = None,
             guidance: float | None = None) -> list[Image.Image]:
        """n variations of an image: the (image, image) flow over its CLIP image tokens (VD sec. 4)."""
        if n < 1:
            raise ValueError(f"vary needs n >= 1 (got {n})")
        r = GenerationRequest(("(variation)",) * n, seed=seed, steps=steps, guidance=guidance)  # sampling settings
        x = self.draw(Flow("image", "image"), self.image_contexts(image, n), r, torch.Generator().manual_seed(seed))
        return tensor_to_images(x)

    def mix(self, prompt: str, image: Image.Image, mix: float = 0.5, n: int = 1, *, seed: int = 0,
            steps: int | None = None, guidance: float | None = None) -> list[Image.Image]:
        """Dual guidance: text and image contexts at once, the text's attention weighted mix (0: the image's flow,
        1: the prompt's; VD sec. 3.3); `generate(prompt, image=image, mix=mix)`."""
        return self.generate(prompt, image=image, mix=mix, num_images=n, seed=seed, steps=steps, guidance=guidance)

    def parts(self) -> dict[str, torch.nn.Module]:
        return {"net": self.net, "autoencoder": self.autoencoder, "clip": self.clip, "text_vae": self.text_vae}

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        folder = save_parts(Path(folder), self.parts(), dtype)
        save_clip(self.clip, folder)
        write_system_json(folder, "vd", 1, self.name, self.config)
        return folder

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None) -> "VersatileDiffusion":
        folder = Path(folder)
        config, saved = read_system(folder, "vd", 1, VDConfig)
        system = cls(config, load_clip(config.clip, folder), name or saved)
        load_parts(folder, system.parts())
        return system.eval()
