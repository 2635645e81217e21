"""DeepFloyd IF (the public Imagen-style cascade) diffusers folders -> t2i parts.

IF's UNets (stage I and the stage II super-resolution UNet) go through the diffusers UNet key map
(`t2i.io.diffusers_unet`); its T5 text encoder through `t2i.io.t5`. IF's UNets predict eps and a learned
variance (out_channels 6, variance_type "learned_range"); t2i's samplers use the eps half only, so the
variance channels of the output conv are dropped (a per-channel slice: the eps it computes is unchanged).
Its scheduler settings map onto t2i's sampler like Stable Diffusion's (`sampling_from_scheduler`), except
the DDPM scheduler's learned variance (t2i's DDPM uses the fixed posterior variance) and diffusers' dynamic
thresholding, which caps s at sample_max_value (t2i's `dynamic_threshold` does not cap it)."""

from __future__ import annotations

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


def _eps_only(d: dict[str, Any]) -> dict[str, Any]:
    """An IF UNet config with the learned-variance half of its output dropped (out_channels = image channels)."""
    image_channels = d["out_channels"] // 2 if d.get("out_channels", 6) == 6 else d.get("out_channels")
    return {**d, "out_channels": image_channels}


def load_if_unet(folder: str | os.PathLike) -> UNet:
    """A t2i UNet (eps output only) from a DeepFloyd IF `unet/` folder (stage I or II)."""
    def convert(state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
        state = dict(state)
        for key in ("conv_out.weight", "conv_out.bias"):  # (2C, ...) -> the eps half (C, ...)
            state[key] = state[key][:cfg.out_channels]
        return from_diffusers(state, cfg)

    build = lambda d: UNet(unet_config_from_diffusers(_eps_only(d)))  # noqa: E731
    return load_model_folder(folder, _weights_name(Path(folder)), build, convert)


def if_sampling(d: dict[str, Any], *, steps: int = 50, guidance: float = 7.0
                ) -> tuple[ScheduleConfig, str, SamplingConfig, str]:
    """An IF scheduler_config.json -> (schedule, prediction, sampler settings, the t2i threshold spec).
    Refuses what t2i cannot reproduce exactly: DDPM with a learned variance (use DDIM or DPM-Solver, which
    IF's pipelines accept) and thresholding with sample_max_value above 1 (t2i does not cap s)."""
    if d.get("_class_name") == "DDPMScheduler" and d.get("variance_type") in LEARNED_VARIANCE:
        raise ValueError("IF's DDPMScheduler samples with the learned variance, which t2i's DDPM sampler lacks "
                         "(fixed posterior variance): give the pipeline a DDIMScheduler / DPMSolverMultistepScheduler")
    threshold = "none"
    if d.get("thresholding"):
        if float(d.get("sample_max_value", 1.0)) != 1.0:
            raise ValueError("diffusers' dynamic thresholding caps s at sample_max_value; t2i's does not "
                             "(only sample_max_value = 1, i.e. clipping to [-1, 1], is reproduced)")
        threshold = "static"  # s = clamp(quantile, 1, 1) = 1: clip x0 to [-1, 1]
    plain = {k: v for k, v in d.items() if k not in ("thresholding", "variance_type")}
    schedule, prediction, sampling = sampling_from_scheduler(plain, steps=steps, guidance=guidance)
    return schedule, prediction, sampling, threshold
