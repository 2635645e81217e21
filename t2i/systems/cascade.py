"""A cascade from configs alone: a list of stages run in order, each sampled by `sample_stage`, each
fed the previous stage's output (unCLIP: vector prior -> decoder -> SR; Imagen: base -> SR). A stage's
sample shape is its config's: (C, H, W) for images, (D,) for a prior over vectors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from t2i.diffusion import ConcatInputs, DiscreteDenoiser
from t2i.diffusion.conditioning import lowres_condition
from t2i.diffusion.config import SamplingConfig, ScheduleConfig, check_fields
from t2i.diffusion.samplers import randn
from t2i.nn.transformer import VectorPrior, VectorPriorConfig
from t2i.nn.unet import UNet, UNetConfig
from t2i.systems.base import (TextConfig, build_text_encoder, encode_prompts, load_module, read_system_json,
                              read_tokenizer, save_module, save_text_encoder, write_system_json)
from t2i.systems.request import GenerationRequest
from t2i.systems.stage import Guidance, StageRun, default_threshold, guided, sample_stage
from t2i.systems.system import SystemBase, register

NETWORKS = {"unet": (UNetConfig, UNet), "prior": (VectorPriorConfig, VectorPrior)}
PREVIOUS = ("none", "embedding", "lowres")  # how the previous stage's output enters a stage


@dataclass(frozen=True)
class StageConfig:
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

    def to_dict(self) -> dict[str, Any]:
        return {f.name: v.to_dict() if hasattr(v := getattr(self, f.name), "to_dict") else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StageConfig":
        check_fields(cls, d)
        parts = {"schedule": ScheduleConfig, "sampling": SamplingConfig}
        return cls(**{k: parts[k].from_dict(v) if k in parts else v for k, v in d.items()})


@dataclass(frozen=True)
class CascadeConfig:
    text: TextConfig = TextConfig(pooled=False)
    stages: tuple[StageConfig, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text.to_dict(), "stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CascadeConfig":
        check_fields(cls, d)
        return cls(TextConfig.from_dict(d["text"]), tuple(StageConfig.from_dict(s) for s in d["stages"]))


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

    def settings(self, r: GenerationRequest) -> tuple[str, int, float]:
        s = self.config.stages[-1].sampling
        return (s.sampler if r.sampler is None else r.sampler, s.steps if r.steps is None else r.steps,
                s.guidance if r.guidance is None else r.guidance)

    def total_steps(self, r: GenerationRequest) -> int:
        return len(self.config.stages) * self.settings(r)[1]

    def run(self, r: GenerationRequest, progress: Callable[[int], None] | None) -> torch.Tensor:
        sampler, steps, scale = self.settings(r)
        batch, generator = r.batch, torch.Generator().manual_seed(r.seed)
        cond = encode_prompts(self.config.text, self.text_encoder, batch)
        uncond = encode_prompts(self.config.text, self.text_encoder, [r.negative_prompt] * len(batch))
        x = None
        for stage, net, schedule in zip(self.config.stages, self.nets, self.schedules):
            extra = None
            if stage.previous == "embedding":
                extra = {"pooled": x}
            elif stage.previous == "lowres":  # noise augmentation at the stage's level (Ho et al. 2022, sec. 4.3)
                sigma = schedule.t_to_sigma(torch.full((len(batch),), stage.lowres_noise * (schedule.num_timesteps - 1)))
                extra = {"concat": lowres_condition(x, stage.shape[1:], sigma, randn(x.shape, x, generator))}
                net = ConcatInputs(net)
            settings = dataclasses.replace(stage.sampling, sampler=sampler, steps=steps)
            den = guided(DiscreteDenoiser(net, schedule, stage.prediction),
                         Guidance(scale, uncond if scale != 1 else None, threshold=default_threshold(settings, r.threshold)),
                         extra)
            x = sample_stage(den, StageRun((len(batch), *stage.shape), settings, cond, progress=progress), generator)
        return (x / 2 + 0.5).clamp(0, 1).float().cpu()

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_module(self.nets, folder / "stages.safetensors", dtype)
        save_text_encoder(self.config.text, self.text_encoder, folder, dtype)
        write_system_json(folder, "cascade", 1, self.name, self.config)
        return folder

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None) -> "Cascade":
        folder = Path(folder)
        meta = read_system_json(folder, "cascade", 1)
        config = CascadeConfig.from_dict(meta["config"])
        system = cls(config, build_text_encoder(config.text, read_tokenizer(config.text, folder)),
                     name or meta.get("name", "cascade"))
        load_module(system.nets, folder / "stages.safetensors")
        if config.text.kind != "minilm":
            load_module(system.text_encoder.transformer, folder / "text_encoder.safetensors")
        return system.eval()
