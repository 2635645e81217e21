"""Latent Diffusion / Stable Diffusion (Rombach et al. 2022): a KL autoencoder's latents denoised by
a UNet that cross-attends to a text encoder's tokens; text-to-image, img2img and inpainting.

Composition only: the math is `t2i.diffusion`, the networks `t2i.nn`, the encoders `t2i.encoders`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from t2i.diffusion.config import SamplingConfig
from t2i.diffusion.samplers import randn
from t2i.encoders.registry import TextConfig, build_text_encoder
from t2i.nn.autoencoder import AutoencoderConfig, AutoencoderKL
from t2i.nn.unet import UNet, UNetConfig
from t2i.systems.ldm_config import LDMConfig
from t2i.systems.base import (load_parts, load_text_encoder, read_system, save_parts, save_text_encoder,
                              write_system_json)
from t2i.systems.request import GenerationRequest
from t2i.systems.stage import Guidance, StageRun, default_threshold, sample_stage, stage_denoiser, text_conditions
from t2i.systems.system import SystemBase, register

FORMAT = 1  # version of the t2i system folder layout written by `save`


@register("ldm")
class LDM(SystemBase):
    """A latent text-to-image diffusion system, one stage then the VAE decoder: `generate(prompt, ...)`."""

    # one generator for the whole request: the shipped ldm's images (tests/data/ldm_reference) and diffusers'
    # one-generator pipelines stay as they were; its first image is still the single run's (GenerationRequest)
    per_image_noise = False

    def __init__(self, config: LDMConfig, unet: UNet, autoencoder: AutoencoderKL, text_encoder: nn.Module,
                 name: str = "ldm", inpaint_unet: UNet | None = None):
        super().__init__()
        self.config, self.name = config, name
        self.unet, self.autoencoder, self.text_encoder = unet, autoencoder, text_encoder
        self.inpaint_unet = inpaint_unet  # Stable Diffusion's inpainting model beside the text-to-image one
        self.schedule = config.schedule.build()

    @classmethod
    def build(cls, config: LDMConfig, tokenizer: Any, name: str = "ldm") -> "LDM":
        """A freshly initialised system (training starts here)."""
        return cls(config, UNet(config.unet), AutoencoderKL(config.autoencoder),
                   build_text_encoder(config.text, tokenizer), name)

    @classmethod
    def tiny(cls, seed: int = 0) -> "LDM":
        """A few-thousand-parameter system on random weights (16 px images), for contract tests."""
        from t2i.encoders import WordTokenizer

        torch.manual_seed(seed)
        config = LDMConfig(
            unet=UNetConfig(in_channels=4, out_channels=4, block_channels=(32, 64), num_res_blocks=1,
                            attention_levels=(0,), num_heads=4, context_dim=32, norm_groups=8),
            autoencoder=AutoencoderConfig(channels=(32, 64), layers_per_block=1, norm_groups=8),
            text=TextConfig(encoder=dict(width=32, layers=1, heads=4, max_length=12)),
            sampling=SamplingConfig(sampler="ddim", steps=3, guidance=3.0), sample_size=16)
        return cls.build(config, WordTokenizer.for_shapes(), "tiny-ldm")

    @property
    def inpainting_only(self) -> bool:
        return self.config.inpainting

    @property
    def default_sampling(self) -> SamplingConfig:
        return self.config.sampling

    def encode_image(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [-1, 1] -> scaled latents, a posterior draw (LDM sec. 3)."""
        return self.autoencoder.scale(self.autoencoder.encode(image).sample(generator))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels (B, 3, H, W) in [0, 1]."""
        return (self.autoencoder.decode(self.autoencoder.unscale(latents)) / 2 + 0.5).clamp(0, 1)

    def run(self, r: GenerationRequest, progress: Callable[[int], None] | None, generator: torch.Generator,
            network: Callable | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] (txt2img, img2img, inpainting: white = repaint), noise drawn as diffusers'
        pipelines draw it; `network(unet, cond, uncond, (W, H)) -> (net, cond, uncond)` wraps the UNet (ControlNet)."""
        cfg, (settings, guidance) = self.config, self.sampling(r)
        width, height = r.size(cfg.sample_size)
        self.check_size(width, height, cfg.size_multiple)
        device, dtype = self.device, next(self.unet.parameters()).dtype
        cond, uncond = text_conditions(cfg.text, self.text_encoder, r, guidance > 1)
        unet = self.inpaint_unet if r.mask is not None and self.inpaint_unet is not None else self.unet
        inpainting = cfg.inpainting or unet is self.inpaint_unet
        net, cond, uncond = network(unet, cond, uncond, (width, height)) if network else (unet, cond, uncond)
        shape = (len(r.batch), cfg.autoencoder.latent_channels, height // cfg.autoencoder.downscale,
                 width // cfg.autoencoder.downscale)
        pixels, keep = (None if t is None else t.to(device, dtype) for t in (r.pixels((width, height)),
                                                                              r.repaint((width, height))))
        latents = None
        if pixels is not None and (keep is None or not inpainting or r.strength < 1):
            latents = self.encode_image(pixels, generator).expand(shape)  # one draw, shared by the batch
        noise = randn(shape, torch.empty((), device=device, dtype=dtype), generator)
        small = None if keep is None else F.interpolate(keep, size=shape[2:])  # (1, 1, h, w) the mask on latents
        # an inpainting model takes the mask and the masked image's latents as extra channels; others blend
        concat = [small, self.encode_image(pixels * (keep < 0.5), generator)] if inpainting else []
        denoiser = stage_denoiser(net, self.schedule, cfg.prediction,
                                  Guidance(guidance, uncond, threshold=default_threshold(settings, r.threshold)), concat)
        run = StageRun(shape, settings, cond, r.strength if r.image is not None else 1.0,
                       init=None if latents is None or (keep is not None and r.strength == 1) else latents,
                       known=latents, repaint=None if inpainting else small, noise=noise,
                       progress=progress, device=device, dtype=dtype)
        return self.decode(sample_stage(denoiser, run, generator)).float().cpu()

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the t2i folder: system.json, a safetensors file per part (cast to `dtype` when given), the tokenizer."""
        folder = save_parts(Path(folder), self.parts(), dtype)
        save_text_encoder(self.config.text, self.text_encoder, folder, dtype)
        write_system_json(folder, "ldm", FORMAT, self.name, self.config)
        return folder

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None) -> "LDM":
        config, saved_name = read_system(folder := Path(folder), "ldm", FORMAT, LDMConfig)
        system = cls(config, UNet(config.unet), AutoencoderKL(config.autoencoder), load_text_encoder(config.text, folder),
                     name or saved_name, UNet(config.inpainting_twin()) if config.inpaint_unet else None)
        load_parts(folder, system.parts())
        return system.eval()

    def parts(self) -> dict[str, nn.Module]:
        """The modules saved one file each (the text encoder goes its own way)."""
        twin = {} if self.inpaint_unet is None else {"inpaint_unet": self.inpaint_unet}
        return {"unet": self.unet, "autoencoder": self.autoencoder, **twin}
