"""A cascade from configs alone: a list of stages run in order, each sampled by `sample_stage`, each
fed the previous stage's output (unCLIP: vector prior -> decoder -> SR; Imagen: base -> SR). A stage's
sample shape is its config's: (C, H, W) for images, (D,) for a prior over vectors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from t2i.config import Config
from t2i.diffusion.config import SamplingConfig, ScheduleConfig
from t2i.diffusion.samplers import Generators
from t2i.encoders.registry import TextConfig, build_text_encoder
from t2i.nn.transformer import VectorPrior, VectorPriorConfig
from t2i.nn.unet import UNet, UNetConfig
from t2i.systems.base import (load_parts, load_text_encoder, read_system, save_parts, save_text_encoder,
                              write_system_json)
from t2i.systems.request import GenerationRequest
from t2i.systems.stage import (Guidance, StageRun, aug_level_input, augmented_lowres, default_threshold, sample_stage,
                               stage_denoiser, text_conditions)
from t2i.systems.system import SystemBase, register

NETWORKS = {"unet": (UNetConfig, UNet), "prior": (VectorPriorConfig, VectorPrior)}
PREVIOUS = ("none", "embedding", "lowres")  # how the previous stage's output enters a stage


@dataclass(frozen=True)
class StageConfig(Config):
    """One stage: its network, sample shape, schedule, prediction, sampling and conditioning source."""

    network: str = "unet"  # unet | prior
    net: dict = field(default_factory=dict)  # the network's config fields
    shape: tuple[int, ...] = (3, 64, 64)  # (C, H, W) or (D,)
    schedule: ScheduleConfig = ScheduleConfig(name="cosine")
    prediction: str = "eps"
    sampling: SamplingConfig = SamplingConfig(sampler="ddim", steps=20, guidance=3.0, spacing="linspace", offset=0)
    previous: str = "none"  # none | embedding (the previous vector as `pooled`) | lowres (noise-augmented channels)
    lowres_noise: float = 0.0  # lowres: the augmentation level, a fraction of the timesteps

    def __post_init__(self) -> None:
        if self.network not in NETWORKS or self.previous not in PREVIOUS:
            raise ValueError(f"network must be one of {sorted(NETWORKS)} and previous one of {PREVIOUS}")
        object.__setattr__(self, "shape", tuple(self.shape))


@dataclass(frozen=True)
class CascadeConfig(Config):
    text: TextConfig = TextConfig(pooled=False)
    stages: tuple[StageConfig, ...] = ()


@register("cascade")
class Cascade(SystemBase):
    """N stages and one text encoder; text-to-image only."""

    def __init__(self, config: CascadeConfig, text_encoder: nn.Module, name: str = "cascade"):
        super().__init__()
        self.config, self.text_encoder, self.name = config, text_encoder, name
        self.nets = nn.ModuleList(NETWORKS[s.network][1](NETWORKS[s.network][0].from_dict(s.net)) for s in config.stages)
        self.schedules = [s.schedule.build() for s in config.stages]

    @classmethod
    def tiny(cls, seed: int = 0) -> "Cascade":
        """A vector prior (D = 16) -> 16 px (the vector as `pooled`) -> 32 px (noise-augmented low-res)."""
        from t2i.encoders import WordTokenizer

        torch.manual_seed(seed)
        sampling = SamplingConfig(sampler="ddim", steps=3, guidance=3.0, spacing="linspace", offset=0)
        unet = dict(out_channels=3, block_channels=(16, 32), num_res_blocks=1, attention_levels=(1,), num_heads=2,
                    context_dim=32, pooled_dim=16, norm_groups=8)
        stages = (StageConfig("prior", {"dim": 16, "context_dim": 32, "transformer": {"width": 32, "layers": 1,
                                                                                         "heads": 2}}, (16,),
                              sampling=sampling),
                  StageConfig("unet", dict(unet, in_channels=3), (3, 16, 16), sampling=sampling, previous="embedding"),
                  StageConfig("unet", dict(unet, in_channels=6, pooled_dim=None), (3, 32, 32), sampling=sampling,
                              previous="lowres", lowres_noise=0.1))
        config = CascadeConfig(TextConfig(encoder=dict(width=32, layers=1, heads=4, max_length=12)), stages)
        return cls(config, build_text_encoder(config.text, WordTokenizer.for_shapes()), "tiny-cascade")

    @property
    def stages(self) -> tuple[StageConfig, ...]:
        return self.config.stages

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(("txt2img",))

    @property
    def default_sampling(self) -> SamplingConfig:
        return self.config.stages[-1].sampling

    def total_steps(self, r: GenerationRequest) -> int:
        return len(self.config.stages) * self.settings(r)[1]

    def run(self, r: GenerationRequest, progress: Callable[[int], None] | None,
            generator: Generators) -> torch.Tensor:
        asked, scale = self.sampling(r)
        cond, uncond = text_conditions(self.config.text, self.text_encoder, r, scale != 1)
        x = None
        for stage, net, schedule in zip(self.config.stages, self.nets, self.schedules):
            concat, extra = [], {"pooled": x} if stage.previous == "embedding" else None
            if stage.previous == "lowres":  # noise augmentation at the stage's level (Ho et al. 2022, sec. 4.3)
                level = stage.lowres_noise if r.aug_level is None else r.aug_level
                concat = [augmented_lowres(x, stage.shape[1:], schedule, level, generator)]
                extra = aug_level_input(net, schedule, level, x.shape[0])
            settings = dataclasses.replace(stage.sampling, sampler=asked.sampler, steps=asked.steps)
            guidance = Guidance(scale, uncond, threshold=default_threshold(settings, r.threshold))
            den = stage_denoiser(net, schedule, stage.prediction, guidance, concat, extra)
            x = sample_stage(den, StageRun((len(r.batch), *stage.shape), settings, cond, progress=progress), generator)
        return (x / 2 + 0.5).clamp(0, 1).float().cpu()

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        folder = save_parts(Path(folder), {"stages": self.nets}, dtype)
        save_text_encoder(self.config.text, self.text_encoder, folder, dtype)
        write_system_json(folder, "cascade", 1, self.name, self.config)
        return folder

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None) -> "Cascade":
        folder = Path(folder)
        config, saved_name = read_system(folder, "cascade", 1, CascadeConfig)
        system = cls(config, load_text_encoder(config.text, folder), name or saved_name)
        load_parts(folder, {"stages": system.nets})
        return system.eval()
