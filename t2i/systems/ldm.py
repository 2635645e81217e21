"""Latent Diffusion / Stable Diffusion (Rombach et al. 2022): a KL autoencoder's latents denoised by
a UNet that cross-attends to a text encoder's tokens; text-to-image, img2img and inpainting.

Composition only: the math is `t2i.diffusion`, the networks `t2i.nn`, the encoders `t2i.encoders`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from t2i.diffusion import ClassifierFreeGuidance, ConcatInputs, DiscreteDenoiser, StaticThreshold, sample
from t2i.diffusion.samplers import randn
from t2i.nn.autoencoder import AutoencoderConfig, AutoencoderKL
from t2i.nn.unet import UNet, UNetConfig
from t2i.systems.base import (SamplingConfig, ScheduleConfig, StepBar, TextConfig, _check_fields, build_text_encoder,
                              encode_prompts, image_to_tensor, labelled_images, load_module, load_text_encoder,
                              mask_blend, mask_to_tensor, read_system_json, read_tokenizer, save_module,
                              save_text_encoder, write_system_json)

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
        _check_fields(cls, d)
        parts = {"unet": UNetConfig, "autoencoder": AutoencoderConfig, "text": TextConfig,
                 "schedule": ScheduleConfig, "sampling": SamplingConfig}
        return cls(**{k: parts[k].from_dict(v) if k in parts else v for k, v in d.items()})


class LDM(nn.Module):
    """A latent text-to-image diffusion system: `generate(prompt, ...)` -> PIL images."""

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

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

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

    def _check(self, prompts: list[str], steps: int, width: int, height: int, strength: float) -> None:
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("the prompt is empty: give the text to draw")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        m = self.config.size_multiple
        if width < m or height < m or width % m or height % m:
            raise ValueError(f"this model makes images whose sides are multiples of {m} px; got {width}x{height}")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")

    @torch.no_grad()
    def sample(self, prompt: str | list[str], *, negative_prompt: str = "", num_images: int = 1, seed: int = 0,
               steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
               width: int | None = None, height: int | None = None, image: Image.Image | None = None,
               mask: Image.Image | None = None, strength: float = 1.0,
               progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1]: text-to-image, img2img (`image`, `strength`) or inpainting
        (`image` + `mask`, white = repaint). B = prompts x num_images, all drawn from one CPU
        generator seeded with `seed`, in the order diffusers' pipelines draw them."""
        cfg = self.config
        settings = dataclasses.replace(cfg.sampling, **{k: v for k, v in
                                                        (("sampler", sampler), ("steps", steps)) if v is not None})
        guidance = cfg.sampling.guidance if guidance is None else guidance
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if mask is not None and image is None:
            raise ValueError("inpainting needs an init image as well as a mask")
        if image is not None:
            width, height = width or image.size[0], height or image.size[1]
        width, height = width or cfg.sample_size, height or cfg.sample_size
        self._check(prompts, settings.steps, width, height, strength)
        if cfg.inpainting and mask is None:
            raise ValueError("this is an inpainting model: give an init image and a mask")
        if mask is not None and mask.size != image.size:
            raise ValueError(f"the mask is {mask.size[0]}x{mask.size[1]} px but the image is "
                             f"{image.size[0]}x{image.size[1]}: they must be the same size")

        device, dtype = self.device, next(self.unet.parameters()).dtype
        batch = [p for p in prompts for _ in range(num_images)]
        generator = torch.Generator().manual_seed(seed)
        cond = self.encode_text(batch)
        uncond = self.encode_text([negative_prompt] * len(batch)) if guidance > 1 else None

        sigmas = settings.sigmas(self.schedule, settings.steps)
        if image is not None:  # diffusers' get_timesteps: skip the first steps - int(steps * strength)
            skip = settings.steps - min(int(settings.steps * strength), settings.steps)
            sigmas = sigmas[skip:]
            if len(sigmas) < 2:
                raise ValueError(f"strength {strength} with {settings.steps} steps leaves no step to run")
        f = cfg.autoencoder.downscale
        shape = (len(batch), cfg.autoencoder.latent_channels, height // f, width // f)

        pixels = image_to_tensor(image, (width, height)).to(device, dtype) if image is not None else None
        keep = None if mask is None else mask_to_tensor(mask.resize((width, height), Image.NEAREST)).to(device, dtype)
        image_latents = None
        if pixels is not None and (keep is None or not cfg.inpainting or strength < 1):
            image_latents = self.encode_image(pixels, generator).expand(shape)  # one draw, shared by the batch
        noise = randn(shape, torch.empty((), device=device, dtype=dtype), generator)
        sigma0 = float(sigmas[0])
        x_T = noise * settings.noise_scale(sigma0) if image_latents is None or (keep is not None and strength == 1) \
            else image_latents + noise * sigma0

        net: Callable = self.unet
        if cfg.inpainting:
            masked = self.encode_image(pixels * (keep < 0.5), generator)  # (1, C, h, w)
            extra = torch.cat([F.interpolate(keep, size=shape[2:]), masked], 1).expand(len(batch), -1, -1, -1)
            net = ConcatInputs(self.unet)
            cond = dict(cond, concat=extra)
            uncond = dict(uncond, concat=extra) if uncond is not None else None
        denoiser: Callable = DiscreteDenoiser(net, self.schedule, cfg.prediction)
        if uncond is not None:
            denoiser = ClassifierFreeGuidance(denoiser, guidance, uncond)
        if settings.clip_sample > 0:
            denoiser = StaticThreshold(denoiser, settings.clip_sample)

        blend = None
        if keep is not None and not cfg.inpainting:
            blend = mask_blend(F.interpolate(keep, size=shape[2:]), image_latents, noise, sigmas)

        def callback(i: int, x: torch.Tensor, x0: torch.Tensor, sigma: float) -> None:
            if blend is not None:
                blend(i, x)
            if progress is not None:
                progress(i)

        options = {"eta": settings.eta} if settings.sampler == "ddim" else {}
        x = sample(denoiser, shape, sampler=settings.sampler, sigmas=sigmas, cond=cond, generator=generator,
                   x_T=x_T, device=device, dtype=dtype, callback=callback, **options)
        latents = x / math.sqrt(1 + float(sigmas[-1]) ** 2)  # the VP sample, as diffusers decodes it
        return self.decode(latents).float().cpu()

    def generate(self, prompt: str | list[str], *, negative_prompt: str = "", num_images: int = 1, seed: int = 0,
                 steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
                 width: int | None = None, height: int | None = None, image: Image.Image | None = None,
                 mask: Image.Image | None = None, strength: float = 1.0, progress: bool = False) -> list[Image.Image]:
        """PIL images; each carries its generation parameters in `.info` (written by `save_png`)."""
        steps = steps or self.config.sampling.steps
        bar = StepBar(min(int(steps * strength), steps) if image is not None else steps)
        try:
            x = self.sample(prompt, negative_prompt=negative_prompt, num_images=num_images, seed=seed, steps=steps,
                            sampler=sampler, guidance=guidance, width=width, height=height, image=image, mask=mask,
                            strength=strength, progress=bar if progress else None)
        finally:
            bar.close()
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        meta = {"negative_prompt": negative_prompt, "seed": str(seed),
                "sampler": sampler or self.config.sampling.sampler,
                "steps": str(steps), "model": self.name,
                "guidance": str(self.config.sampling.guidance if guidance is None else guidance)}
        if image is not None:
            meta.update(mode="inpaint" if mask is not None else "img2img", strength=str(strength))
        return labelled_images(x, prompts, num_images, meta)

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

