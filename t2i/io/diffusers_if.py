"""DeepFloyd IF (the public Imagen-style cascade) diffusers folders -> t2i parts.

IF's UNets (stage I and the stage II super-resolution UNet) go through the diffusers UNet key map
(`t2i.io.diffusers_unet`); its T5 text encoder through `t2i.io.t5`. IF's UNets predict eps and a learned
variance (out_channels 6, variance_type "learned_range"): kept for t2i's DDPM (`learned_variance`, Nichol &
Dhariwal 2021), or dropped for the other samplers (a per-channel slice: the eps it computes is unchanged).
Its scheduler settings map onto t2i's sampler like Stable Diffusion's (`sampling_from_scheduler`); diffusers'
dynamic thresholding becomes t2i's, its s capped at sample_max_value."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from t2i.diffusion.config import SamplingConfig, ScheduleConfig
from t2i.io.diffusers_pipeline import sampling_from_scheduler
from t2i.io.diffusers_unet import _weights_name, from_diffusers, unet_config_from_diffusers
from t2i.io.weights import load_model_folder
from t2i.nn.unet import UNet

LEARNED_VARIANCE = ("learned", "learned_range")


def learned_variance(d: dict[str, Any]) -> bool:
    """Whether a scheduler_config.json samples with the UNet's learned variance (IF's DDPMScheduler)."""
    return d.get("variance_type") in LEARNED_VARIANCE


def _eps_only(d: dict[str, Any]) -> dict[str, Any]:
    """An IF UNet config with the learned-variance half of its output dropped (out_channels = image channels)."""
    image_channels = d["out_channels"] // 2 if d.get("out_channels", 6) == 6 else d.get("out_channels")
    return {**d, "out_channels": image_channels}


def load_if_unet(folder: str | os.PathLike, learned_variance: bool = False) -> UNet:
    """A t2i UNet from a DeepFloyd IF `unet/` folder (stage I or II): eps only, or with `learned_variance`
    eps then the variance value (6 channels, for `DiscreteDenoiser(learned_variance=True)`)."""
    def convert(state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
        state = dict(state)
        for key in ("conv_out.weight", "conv_out.bias"):  # (2C, ...) -> the eps half (C, ...) unless kept
            state[key] = state[key][:cfg.out_channels]
        return from_diffusers(state, cfg)

    build = lambda d: UNet(unet_config_from_diffusers(d if learned_variance else _eps_only(d)))  # noqa: E731
    return load_model_folder(folder, _weights_name(Path(folder)), build, convert)


def if_sampling(d: dict[str, Any], *, steps: int = 50, guidance: float = 7.0
                ) -> tuple[ScheduleConfig, str, SamplingConfig, str]:
    """An IF scheduler_config.json -> (schedule, prediction, sampler settings, the t2i threshold spec, also the
    settings' own). diffusers' thresholding is dynamic at dynamic_thresholding_ratio with s capped at
    sample_max_value ("static" clipping when that is 1); DDPM with a learned variance is t2i's ddpm over a UNet
    loaded with it (`learned_variance(d)`)."""
    threshold = "none"
    if d.get("thresholding"):
        cap = float(d.get("sample_max_value", 1.0))
        threshold = "static" if cap == 1.0 else f"dynamic:{float(d.get('dynamic_thresholding_ratio', 0.995))}:{cap}"
    plain = {k: v for k, v in d.items() if k not in ("thresholding", "variance_type")}
    schedule, prediction, sampling = sampling_from_scheduler(plain, steps=steps, guidance=guidance)
    if threshold != "none":
        sampling = dataclasses.replace(sampling, threshold=threshold)
    return schedule, prediction, sampling, threshold


def _stage(folder: Path, text, steps: int, guidance: float, **image) -> tuple:
    """(PixelStageConfig, UNet) of one IF pipeline folder: its UNet (the variance kept when its scheduler samples
    with it) and its scheduler's settings and thresholding as the stage's own."""
    from t2i.systems.pixel_stage import PixelStageConfig

    d = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    schedule, prediction, sampling, _ = if_sampling(d, steps=steps, guidance=guidance)
    unet = load_if_unet(folder / "unet", learned_variance(d))
    size = int(json.loads((folder / "unet" / "config.json").read_text()).get("sample_size", 64))
    config = PixelStageConfig(unet=unet.config, text=text, schedule=schedule, prediction=prediction, sampling=sampling,
                              sample_size=size, learned_variance=learned_variance(d), **image)
    return config, unet


def convert_if(stage_one_folder: str | os.PathLike, stage_two_folder: str | os.PathLike | None = None,
               noise_level: int = 250, steps: tuple[int, int] = (100, 50), guidance: tuple[float, float] = (7.0, 4.0),
               name: str = "deepfloyd-if"):
    """DeepFloyd IF diffusers folders (IFPipeline, optionally IFSuperResolutionPipeline) -> a t2i Imagen: stage
    I's T5 (text_encoder/ with the fast tokenizer's tokenizer.json; 77 tokens, padding states kept, no mask) read by
    both stages, each stage its own scheduler's sampler and thresholding, stage II enlarging first and augmenting
    at `noise_level` (IF's default 250); `steps` and `guidance` per stage default to the pipelines' own."""
    from t2i.encoders.registry import TextConfig, build_text_encoder
    from t2i.systems.imagen import Imagen, ImagenConfig

    one = Path(stage_one_folder)
    if not (one / "text_encoder" / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{one / 'text_encoder'}: no tokenizer.json; save IF's T5 fast tokenizer there "
                                "(T5TokenizerFast.from_pretrained(folder / 'tokenizer').save_pretrained(...))")
    text = TextConfig(kind="t5", encoder={"folder": str(one / "text_encoder"), "max_length": 77}, context_mask=False)
    base, base_unet = _stage(one, text, steps[0], guidance[0])
    stages, unets = [base], [base_unet]
    if stage_two_folder is not None:
        two = Path(stage_two_folder)
        noising = json.loads((two / "image_noising_scheduler" / "scheduler_config.json").read_text())
        if noising.get("beta_schedule") != json.loads((two / "scheduler" / "scheduler_config.json").read_text()
                                                      ).get("beta_schedule"):
            raise ValueError(f"{two}: the image noising scheduler's schedule differs from the stage's; t2i augments "
                             "the low-res image on the stage's own schedule")
        sr, sr_unet = _stage(two, text, steps[1], guidance[1], lowres_size=base.sample_size, upsample_first=True,
                             lowres_noise=noise_level / (int(noising.get("num_train_timesteps", 1000)) - 1))
        stages, unets = stages + [sr], unets + [sr_unet]
    config = ImagenConfig(*stages, threshold="")  # each stage thresholds as its scheduler does
    return Imagen(config, build_text_encoder(text), unets, name).eval()
