"""A text-conditioned pixel stage (GLIDE's base, upsampler and inpainting models; Imagen's stages): a UNet
with its own text encoder, fed the previous stage's image (noise-augmented) and / or the mask and masked
image as extra input channels. `PixelStage.sample` composes the shared stage parts for one stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from t2i.config import Config
from t2i.diffusion.conditioning import inpaint_condition, upsampled_lowres
from t2i.diffusion.config import SamplingConfig, ScheduleConfig
from t2i.diffusion.guidance import LogProb
from t2i.diffusion.samplers import Generators, randn
from t2i.encoders.registry import TextConfig, build_text_encoder
from t2i.nn.unet import UNet, UNetConfig
from t2i.systems.base import load_parts, load_text_encoder, save_parts, save_text_encoder
from t2i.systems.request import GenerationRequest
from t2i.systems.stage import (Guidance, StageRun, aug_level_input, augmented_lowres, default_threshold, sample_stage,
                               stage_denoiser, text_conditions)


@dataclass(frozen=True)
class PixelStageConfig(Config):
    """A text-conditioned pixel stage: its UNet, its own text encoder, schedule and sampling defaults, and the
    image conditioning it takes (the previous stage's image, the mask and masked image)."""

    unet: UNetConfig = UNetConfig(in_channels=3, out_channels=3, block_channels=(64, 128, 256),
                                  attention_levels=(1, 2), attention_block="adm", num_heads=None, head_dim=64,
                                  context_dim=128, pooled_dim=128, scale_shift=True)
    text: TextConfig = TextConfig(kind="word", encoder={"width": 128}, pooled=True)
    schedule: ScheduleConfig = ScheduleConfig(name="cosine")
    prediction: str = "eps"  # eps | v | x0
    sampling: SamplingConfig = SamplingConfig(sampler="ddim", steps=50, guidance=3.0, spacing="linspace", offset=0)
    sample_size: int = 64  # image side in pixels
    lowres_size: int = 0  # > 0: a super-resolution stage fed the previous stage's image of this size
    lowres_noise: float = 0.0  # its noise augmentation at sampling time, a fraction of the timesteps
    inpaint: bool = False  # the UNet takes the mask and the masked image as 4 extra input channels
    full_mask_txt2img: bool = False  # inpaint, trained on all-ones masks too (`full_masks`): with no mask it is
    # given one that repaints everything, so the one network also generates from text alone
    upsample_first: bool = False  # DeepFloyd IF: x_T drawn, then the low-res image enlarged and augmented (sampling)
    learned_variance: bool = False  # the UNet also outputs DDPM's variance value (Improved DDPM; GLIDE, IF)

    def __post_init__(self) -> None:
        want, out = 3 + 3 * bool(self.lowres_size) + 4 * self.inpaint, 3 * (1 + self.learned_variance)
        if self.unet.out_channels != out or self.unet.in_channels != want:
            raise ValueError(f"a UNet with {self.unet.in_channels} -> {self.unet.out_channels} channels does not "
                             f"fit this stage: in_channels must be {want} (3 + 3 low-res + 4 inpainting, as set), "
                             f"out_channels {out} (3, twice with learned_variance)")
        if self.full_mask_txt2img and not self.inpaint:
            raise ValueError("full_mask_txt2img is for an inpainting UNet (inpaint = true)")
        if not 0 <= self.lowres_noise < 1 or self.lowres_size >= self.sample_size:
            raise ValueError("lowres_noise must be in [0, 1) and lowres_size smaller than sample_size")


@dataclass
class StagePlan:
    """What one stage samples: settings, guidance, size (H, W), strength, whether the init image is used
    (img2img; the kept region of inpainting), and the previous stage's image."""

    settings: SamplingConfig
    scale: float
    log_prob: LogProb | None
    size: tuple[int, int]
    strength: float = 1.0
    image: bool = False
    lowres: torch.Tensor | None = None


class PixelStage(nn.Module):
    """A pixel UNet and its text encoder; `sample` draws one stage's images (B, 3, H, W) in [-1, 1]."""

    def __init__(self, config: PixelStageConfig, unet: UNet, text_encoder: nn.Module):
        super().__init__()
        self.config, self.unet, self.text_encoder = config, unet, text_encoder
        self.schedule = config.schedule.build()

    @classmethod
    def build(cls, config: PixelStageConfig, tokenizer: Any) -> "PixelStage":
        return cls(config, UNet(config.unet), build_text_encoder(config.text, tokenizer))

    @classmethod
    def load(cls, config: PixelStageConfig, folder: Path) -> "PixelStage":
        """Read the folder `save` wrote: unet.safetensors, the text encoder and its tokenizer."""
        stage = cls(config, UNet(config.unet), load_text_encoder(config.text, folder))
        load_parts(folder, {"unet": stage.unet})
        return stage

    def save(self, folder: Path, dtype: torch.dtype | None = None) -> None:
        save_parts(folder, {"unet": self.unet}, dtype)
        save_text_encoder(self.config.text, self.text_encoder, folder, dtype)

    def lowres(self, x: torch.Tensor, size: tuple[int, int], level: float, generator: Generators) -> torch.Tensor:
        """The previous stage's image as this stage's extra channels: noise-augmented at `level` and enlarged
        (Ho et al. 2022, sec. 4.3), or with `upsample_first` enlarged then augmented (DeepFloyd IF)."""
        if not self.config.upsample_first:
            return augmented_lowres(x, size, self.schedule, level, generator)
        sigma = self.schedule.t_to_sigma(torch.full((x.shape[0],), level * (self.schedule.num_timesteps - 1)))
        return upsampled_lowres(x, size, sigma, randn((*x.shape[:2], *size), x, generator))

    def sample(self, r: GenerationRequest, plan: StagePlan, generator: Generators,
               progress: Callable[[int], None] | None) -> torch.Tensor:
        c, (h, w), weight = self.config, plan.size, next(self.unet.parameters())
        shape = (len(r.batch), 3, h, w)
        cond, uncond = text_conditions(c.text, self.text_encoder, r, plan.log_prob is None and plan.scale != 1.0)
        pixels = r.pixels((w, h)).to(weight).expand(shape) if plan.image else None
        repaint = None if r.mask is None else r.repaint((w, h)).to(weight)
        level = c.lowres_noise if r.aug_level is None else r.aug_level
        noise = randn(shape, weight, generator) if c.upsample_first else None  # IF draws x_T first
        concat = [] if plan.lowres is None else [self.lowres(plan.lowres.to(weight), (h, w), level, generator)]
        extra = {} if plan.lowres is None else aug_level_input(self.unet, self.schedule, level, shape[0])
        if c.inpaint:  # no mask (full_mask_txt2img): repaint everything, the image wholly erased
            whole = torch.ones((shape[0], 1, h, w), device=weight.device, dtype=weight.dtype)
            concat.append(inpaint_condition(torch.zeros(shape).to(weight) if pixels is None else pixels,
                                            whole if repaint is None else repaint.expand(len(r.batch), -1, -1, -1)))
        guidance = Guidance(plan.scale, uncond, plan.log_prob, default_threshold(plan.settings, r.threshold))
        fresh = pixels is None or (r.mask is not None and plan.strength == 1)
        run = StageRun(shape, plan.settings, cond, plan.strength, init=None if fresh else pixels, known=pixels,
                       repaint=repaint, noise=noise, progress=progress, device=weight.device, dtype=weight.dtype)
        den = stage_denoiser(self.unet, self.schedule, c.prediction, guidance, concat, extra, c.learned_variance)
        return sample_stage(den, run, generator)
