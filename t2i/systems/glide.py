"""GLIDE (Nichol et al. 2022): a 64 px ADM UNet conditioned on a jointly trained text transformer (final
token as `pooled`, tokens joined to attention: attention_block = "adm"), an optional upsampler fed the
noise-augmented base image, or an inpainting model fed the mask and masked image: pixel stages
(`t2i.systems.pixel_stage`). Guidance is classifier-free, or the gradient of a noisy CLIP or classifier
(`t2i.systems.guides`) kept in guide_clip/ and guide_classifier/. Composition only."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from t2i.config import Config
from t2i.diffusion.config import SamplingConfig
from t2i.diffusion.samplers import Generators
from t2i.encoders.registry import TextConfig
from t2i.nn.unet import UNetConfig
from t2i.systems.base import read_system, write_system_json
from t2i.systems.guide_folders import copy_guides, guide_log_prob, resolve_guide
from t2i.systems.guides import Guide
from t2i.systems.pixel_stage import PixelStage, PixelStageConfig, StagePlan
from t2i.systems.request import GUIDANCE_TYPES, GenerationRequest
from t2i.systems.system import SystemBase, register

FORMAT = 1  # version of the t2i GLIDE folder layout written by `save`
PARTS = ("base", "upsampler")  # the stages' subfolders
GLIDEStage, GLIDEStageConfig = PixelStage, PixelStageConfig  # a GLIDE stage is a text-conditioned pixel stage


@dataclass(frozen=True)
class GLIDEConfig(Config):
    """A base stage and an optional upsampler whose low-res input is the base image."""

    base: GLIDEStageConfig = GLIDEStageConfig()
    upsampler: GLIDEStageConfig | None = None

    def __post_init__(self) -> None:
        if self.base.lowres_size:
            raise ValueError("the base stage takes no low-res image (lowres_size = 0)")
        up = self.upsampler
        if up is not None and (up.lowres_size != self.base.sample_size or up.sample_size % up.lowres_size):
            raise ValueError(f"the upsampler must take the base's {self.base.sample_size} px images (lowres_size) "
                             f"and enlarge them by an integer factor (sample_size)")

    @property
    def factor(self) -> int:
        """How much the upsampler enlarges the base image (1 without one)."""
        return 1 if self.upsampler is None else self.upsampler.sample_size // self.upsampler.lowres_size

    @property
    def stages(self) -> list[GLIDEStageConfig]:
        return [self.base] + ([self.upsampler] if self.upsampler is not None else [])


@register("glide")
class GLIDE(SystemBase):
    """GLIDE: `generate(prompt, ...)` -> PIL images from the base stage, enlarged by the upsampler if any."""

    guidance_types = GUIDANCE_TYPES  # what `guidance_type` accepts (systems without it: classifier-free only)

    def __init__(self, config: GLIDEConfig, base: GLIDEStage, upsampler: GLIDEStage | None = None, name="glide"):
        super().__init__()
        self.config, self.name, self.base, self.upsampler = config, name, base, upsampler
        self.folder: Path | None = None  # the folder `load` read, where guide_clip/ and guide_classifier/ are found

    @classmethod
    def build(cls, config: GLIDEConfig, tokenizer: Any, upsampler_tokenizer: Any = None,
              name: str = "glide") -> "GLIDE":
        """A freshly initialised system (the upsampler's drawn first); its tokenizer defaults to the base's."""
        up = None if config.upsampler is None else PixelStage.build(config.upsampler, upsampler_tokenizer or tokenizer)
        return cls(config, PixelStage.build(config.base, tokenizer), up, name)

    @property
    def stages(self) -> list[GLIDEStage]:
        return [self.base] + ([self.upsampler] if self.upsampler is not None else [])

    @classmethod
    def tiny(cls, seed: int = 0) -> "GLIDE":
        """A tiny random base (16 px) + 2x upsampler, for contract tests."""
        from t2i.encoders import WordTokenizer

        torch.manual_seed(seed)
        unet = dict(out_channels=3, block_channels=(16, 32), num_res_blocks=1, attention_levels=(1,),
                    attention_block="adm", num_heads=2, head_dim=None, context_dim=32, pooled_dim=32, norm_groups=8)
        stage = dict(text=TextConfig(encoder=dict(width=32, layers=1, heads=4, max_length=12), pooled=True),
                     sampling=SamplingConfig(sampler="ddim", steps=3, guidance=3.0, spacing="linspace", offset=0))
        config = GLIDEConfig(GLIDEStageConfig(unet=UNetConfig(in_channels=3, **unet), sample_size=16, **stage),
                             GLIDEStageConfig(unet=UNetConfig(in_channels=6, **unet), sample_size=32, lowres_size=16,
                                              lowres_noise=0.1, **stage))
        return cls.build(config, WordTokenizer.for_shapes(), name="tiny-glide")

    @property
    def inpainting_only(self) -> bool:
        return self.config.base.inpaint and not self.config.base.full_mask_txt2img

    @property
    def default_sampling(self) -> SamplingConfig:
        return self.config.base.sampling

    def check(self, request: GenerationRequest) -> GenerationRequest:
        """The capability check, and the request's guide resolved (`resolve_guide`)."""
        guide = resolve_guide(request.guidance_type, request.guide, self.folder, self.device)
        return super().check(dataclasses.replace(request, guide=guide) if guide is not request.guide else request)

    def total_steps(self, r: GenerationRequest) -> int:
        return super().total_steps(r) + sum(c.sampling.steps for c in self.config.stages[1:])

    def extra_metadata(self, r: GenerationRequest) -> dict[str, str]:
        return {"guidance_type": r.guidance_type, **({"guide": r.guide.name} if isinstance(r.guide, Guide) else {})}

    def run(self, r: GenerationRequest, progress: Callable[[int], None] | None,
            generator: Generators) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1]; width / height are the final size. The request's steps, sampler,
        guidance and guide apply to the base stage; later stages sample with their own settings, each fed
        the previous stage's image. With a mask, the kept region is blended in at every stage."""
        cfg, (settings, scale) = self.config, self.sampling(r)
        width, height = r.size(cfg.stages[-1].sample_size)
        self.check_size(width, height, cfg.factor * 2 ** (len(cfg.base.unet.block_channels) - 1))
        size = (height // cfg.factor, width // cfg.factor)
        plan = StagePlan(settings, scale, guide_log_prob(r.guide, r.batch, size), size,
                         r.strength if r.image is not None else 1.0, r.image is not None)
        x = self.base.sample(r, plan, generator, progress)
        for stage in self.stages[1:]:  # its own settings, the whole image size, the previous image
            s = stage.config.sampling
            plan = StagePlan(s, s.guidance, None, (height, width), 1.0, r.mask is not None, x)
            x = stage.sample(r, plan, generator, progress)
        return (x / 2 + 0.5).clamp(0, 1).float().cpu()

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the t2i folder (system.json, base/ and upsampler/ each with unet, text encoder, tokenizer),
        floats cast to `dtype` when given, and the guides of the folder this system was loaded from."""
        folder = Path(folder)
        for part, stage in zip(PARTS, self.stages):
            stage.save(folder / part, dtype)
        write_system_json(folder, "glide", FORMAT, self.name, self.config)
        copy_guides(self.folder, folder, dtype)
        return folder

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None) -> "GLIDE":
        folder = Path(folder)
        config, saved_name = read_system(folder, "glide", FORMAT, GLIDEConfig)
        stages = [PixelStage.load(c, folder / part) for part, c in zip(PARTS, config.stages)]
        system = cls(config, *stages, name=name or saved_name).eval()
        system.folder = folder
        return system
