"""Latent Diffusion / Stable Diffusion (Rombach et al. 2022): a KL autoencoder's latents denoised by
a UNet that cross-attends to a text encoder's tokens; text-to-image, img2img and inpainting.

Composition only: the math is `t2i.diffusion`, the networks `t2i.nn`, the encoders `t2i.encoders`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from t2i.diffusion import ConcatInputs, DiscreteDenoiser
from t2i.diffusion.config import SamplingConfig, ScheduleConfig, check_fields
from t2i.diffusion.samplers import randn
from t2i.io.images import image_to_tensor, mask_to_tensor
from t2i.nn.autoencoder import AutoencoderConfig, AutoencoderKL
from t2i.nn.unet import UNet, UNetConfig
from t2i.systems.base import (TextConfig, build_text_encoder, encode_prompts, load_module, load_text_encoder,
                              read_system_json, read_tokenizer, save_module, save_text_encoder, write_system_json)
from t2i.systems.request import GenerationRequest
from t2i.systems.stage import Guidance, StageRun, default_threshold, guided, sample_stage
from t2i.systems.system import SystemBase, register

FORMAT = 1  # version of the t2i system folder layout written by `save`


@dataclass(frozen=True)
class LDMConfig:
    """Everything that defines an LDM system besides its weights and tokenizer."""

    unet: UNetConfig = UNetConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    text: TextConfig = TextConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    prediction: str = "eps"  # eps | v | x0
    sampling: SamplingConfig = SamplingConfig()
    sample_size: int = 512  # default image side in pixels

    def __post_init__(self) -> None:
        lat = self.autoencoder.latent_channels
        if self.unet.out_channels != lat or self.unet.in_channels not in (lat, 2 * lat + 1):
            raise ValueError(f"a UNet with {self.unet.in_channels} -> {self.unet.out_channels} channels does not fit "
                             f"{lat}-channel latents (in: {lat}, or {2 * lat + 1} for inpainting; out: {lat})")

    @property
    def inpainting(self) -> bool:
        """The UNet takes the mask and the masked image's latents as extra input channels."""
        return self.unet.in_channels == 2 * self.autoencoder.latent_channels + 1

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor times the UNet's downsampling."""
        return self.autoencoder.downscale * 2 ** (len(self.unet.block_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {"unet": self.unet.to_dict(), "autoencoder": self.autoencoder.to_dict(), "text": self.text.to_dict(),
                "schedule": self.schedule.to_dict(), "prediction": self.prediction,
                "sampling": self.sampling.to_dict(), "sample_size": self.sample_size}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LDMConfig":
        check_fields(cls, d)
        parts = {"unet": UNetConfig, "autoencoder": AutoencoderConfig, "text": TextConfig,
                 "schedule": ScheduleConfig, "sampling": SamplingConfig}
        return cls(**{k: parts[k].from_dict(v) if k in parts else v for k, v in d.items()})


@register("ldm")
class LDM(SystemBase):
    """A latent text-to-image diffusion system, one stage then the VAE decoder: `generate(prompt, ...)`."""

    def __init__(self, config: LDMConfig, unet: UNet, autoencoder: AutoencoderKL, text_encoder: nn.Module,
                 name: str = "ldm"):
        super().__init__()
        self.config, self.name = config, name
        self.unet, self.autoencoder, self.text_encoder = unet, autoencoder, text_encoder
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
    def capabilities(self) -> frozenset[str]:
        return frozenset(("inpaint",) if self.config.inpainting else ("txt2img", "img2img", "inpaint"))

    def unsupported(self, capability: str) -> str:
        if self.config.inpainting:
            return "this is an inpainting model: give an init image and a mask"
        return super().unsupported(capability)

    # --- conditioning -------------------------------------------------------------------------------

    def encode_text(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """UNet keyword inputs for prompts: {"context"} (+ "context_mask", "pooled")."""
        return encode_prompts(self.config.text, self.text_encoder, prompts)

    def encode_image(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [-1, 1] -> scaled latents, a posterior draw (LDM sec. 3)."""
        return self.autoencoder.scale(self.autoencoder.encode(image).sample(generator))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels (B, 3, H, W) in [0, 1]."""
        return (self.autoencoder.decode(self.autoencoder.unscale(latents)) / 2 + 0.5).clamp(0, 1)

    # --- sampling -----------------------------------------------------------------------------------

    def settings(self, r: GenerationRequest) -> tuple[str, int, float]:
        s = self.config.sampling
        return (s.sampler if r.sampler is None else r.sampler, s.steps if r.steps is None else r.steps,
                s.guidance if r.guidance is None else r.guidance)

    def total_steps(self, r: GenerationRequest) -> int:
        steps = self.settings(r)[1]
        return min(int(steps * r.strength), steps) if r.image is not None else steps

    def run(self, r: GenerationRequest, progress: Callable[[int], None] | None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1]: text-to-image, img2img (`image`, `strength`) or inpainting
        (`image` + `mask`, white = repaint), noise drawn in the order diffusers' pipelines draw it."""
        cfg = self.config
        sampler, steps, guidance = self.settings(r)
        settings = dataclasses.replace(cfg.sampling, sampler=sampler, steps=steps)
        width, height = r.size(cfg.sample_size)
        m = cfg.size_multiple
        if width < m or height < m or width % m or height % m:
            raise ValueError(f"this model makes images whose sides are multiples of {m} px; got {width}x{height}")
        device, dtype = self.device, next(self.unet.parameters()).dtype
        batch, generator = r.batch, torch.Generator().manual_seed(r.seed)
        cond = self.encode_text(batch)
        uncond = self.encode_text([r.negative_prompt] * len(batch)) if guidance > 1 else None
        f = cfg.autoencoder.downscale
        shape = (len(batch), cfg.autoencoder.latent_channels, height // f, width // f)
        pixels = image_to_tensor(r.image, (width, height)).to(device, dtype) if r.image is not None else None
        keep = None if r.mask is None else mask_to_tensor(r.mask.resize((width, height), Image.NEAREST)).to(device, dtype)
        latents = None
        if pixels is not None and (keep is None or not cfg.inpainting or r.strength < 1):
            latents = self.encode_image(pixels, generator).expand(shape)  # one draw, shared by the batch
        noise = randn(shape, torch.empty((), device=device, dtype=dtype), generator)
        extra = None
        if cfg.inpainting:  # the mask and the masked image's latents as extra channels
            masked = self.encode_image(pixels * (keep < 0.5), generator)  # (1, C, h, w)
            extra = {"concat": torch.cat([F.interpolate(keep, size=shape[2:]), masked], 1)}
        net = ConcatInputs(self.unet) if cfg.inpainting else self.unet
        denoiser = guided(DiscreteDenoiser(net, self.schedule, cfg.prediction),
                          Guidance(guidance, uncond, threshold=default_threshold(settings, r.threshold)), extra)
        blend = keep is not None and not cfg.inpainting
        run = StageRun(shape, settings, cond, r.strength if r.image is not None else 1.0,
                       init=None if latents is None or (keep is not None and r.strength == 1) else latents,
                       known=latents, repaint=F.interpolate(keep, size=shape[2:]) if blend else None, noise=noise,
                       progress=progress, device=device, dtype=dtype)
        return self.decode(sample_stage(denoiser, run, generator)).float().cpu()

    # --- the t2i folder -----------------------------------------------------------------------------

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the t2i system folder: system.json, one safetensors file per part (floating tensors cast
        to `dtype` when given; loading casts back to the modules' dtype), the tokenizer (not MiniLM's:
        its weights and vocabulary are read from the installed package at load time)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_module(self.unet, folder / "unet.safetensors", dtype)
        save_module(self.autoencoder, folder / "autoencoder.safetensors", dtype)
        save_text_encoder(self.config.text, self.text_encoder, folder, dtype)
        write_system_json(folder, "ldm", FORMAT, self.name, self.config)
        return folder

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None) -> "LDM":
        """Read a folder written by `save`."""
        folder = Path(folder)
        meta = read_system_json(folder, "ldm", FORMAT)
        config = LDMConfig.from_dict(meta["config"])
        system = cls.build(config, read_tokenizer(config.text, folder), name or meta.get("name", "ldm"))
        load_module(system.unet, folder / "unet.safetensors")
        load_module(system.autoencoder, folder / "autoencoder.safetensors")
        load_text_encoder(config.text, system.text_encoder, folder)
        return system.eval()

