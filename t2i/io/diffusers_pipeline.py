"""diffusers Stable Diffusion pipeline folders <-> t2i LDM systems.

A folder holds model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/. The
parts go through their own key maps (diffusers_unet, diffusers_vae, clip_text); this module
turns the scheduler config into t2i sampler settings that reproduce diffusers' timesteps,
sigmas and initial noise exactly, and assembles the parts into one LDM.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from t2i.diffusion.config import SamplingConfig, ScheduleConfig
from t2i.encoders.clip_tokenizer import CLIPTokenizer
from t2i.encoders.registry import TokenizedTextEncoder
from t2i.io.clip_text import load_transformers_clip, save_transformers_clip
from t2i.io.diffusers_unet import load_diffusers_unet, save_diffusers_unet
from t2i.io.diffusers_vae import load_diffusers_vae, save_diffusers_vae
from t2i.nn.autoencoder import AutoencoderKL
from t2i.nn.transformer import TextTransformer
from t2i.nn.unet import UNet
from t2i.systems.ldm import LDM, LDMConfig, TextConfig

PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

# diffusers scheduler class -> the t2i sampler that computes the same steps
SCHEDULER_SAMPLERS = {
    "DDIMScheduler": "ddim",
    "DDPMScheduler": "ddpm",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_a",
    "HeunDiscreteScheduler": "heun",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
}
SAMPLER_SCHEDULERS = {v: k for k, v in SCHEDULER_SAMPLERS.items()}
FALLBACK_SAMPLER = "dpmpp_2m"  # for schedulers t2i has no exact equivalent of (PNDM, LMS, UniPC, ...)
_BETAS = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_K_DIFFUSION = ("euler", "euler_a", "heun")  # diffusers' sigma schedulers: x_T = noise * sigma_0 unless "leading"


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "model_index.json").is_file()


# --- scheduler config <-> sampler settings -------------------------------------------------------


def sampling_from_scheduler(d: dict[str, Any], *, steps: int = 50,
                            guidance: float = 7.5) -> tuple[ScheduleConfig, str, SamplingConfig]:
    """A diffusers scheduler_config.json -> (training schedule, prediction type, sampler settings)."""
    cls = d.get("_class_name", "")
    if d.get("trained_betas") is not None:
        raise ValueError("scheduler: explicit trained_betas are not supported (only named beta schedules)")
    if d.get("rescale_betas_zero_snr") or d.get("thresholding"):
        raise ValueError("scheduler: rescale_betas_zero_snr and dynamic thresholding are not supported")
    beta = d.get("beta_schedule", "linear")
    if beta not in _BETAS:
        raise ValueError(f"scheduler: unsupported beta_schedule {beta!r}; t2i knows {sorted(_BETAS)}")
    pred = d.get("prediction_type", "epsilon")
    if pred not in _PREDICTIONS:
        raise ValueError(f"scheduler: unsupported prediction_type {pred!r}; t2i knows {sorted(_PREDICTIONS)}")
    schedule = ScheduleConfig(_BETAS[beta], int(d.get("num_train_timesteps", 1000)),
                              float(d.get("beta_start", 0.0001)), float(d.get("beta_end", 0.02)))
    sampler = SCHEDULER_SAMPLERS.get(cls)
    if sampler is None:
        warnings.warn(f"t2i has no exact equivalent of {cls or 'this scheduler'}; sampling with {FALLBACK_SAMPLER}",
                      stacklevel=2)
        sampler = FALLBACK_SAMPLER
    spacing = d.get("timestep_spacing", "leading")
    settings = dict(sampler=sampler, steps=steps, guidance=guidance, spacing=spacing,
                    offset=int(d.get("steps_offset", 0)), karras=bool(d.get("use_karras_sigmas", False)))
    if sampler in ("ddim", "ddpm", "dpmpp_2m"):  # integer timesteps
        settings["round_timesteps"] = True
    if sampler == "dpmpp_2m":
        settings["extra_step"] = True
        if (d.get("algorithm_type", "dpmsolver++"), d.get("solver_order", 2), d.get("final_sigmas_type", "zero")) \
                != ("dpmsolver++", 2, "zero") or settings["karras"]:
            warnings.warn("t2i's dpmpp_2m matches DPMSolverMultistepScheduler with algorithm_type='dpmsolver++', "
                          "solver_order=2, final_sigmas_type='zero' and no Karras sigmas; this one is approximated",
                          stacklevel=2)
    if sampler == "ddim":
        settings["final_sigma"] = "zero" if d.get("set_alpha_to_one", True) else "min"
        settings["model_eps"] = True  # DDIMScheduler's direction term keeps the unclipped eps
        if spacing != "leading":
            warnings.warn("diffusers' DDIM steps to t - T // n; with non-leading spacing t2i's DDIM is close, "
                          "not identical", stacklevel=2)
    if sampler in ("ddim", "ddpm") and d.get("clip_sample", True):
        settings["clip_sample"] = float(d.get("clip_sample_range", 1.0))
    if sampler in _K_DIFFUSION and spacing in ("linspace", "trailing"):
        settings["init_noise"] = "sigma"  # diffusers' init_noise_sigma = max(sigmas) for these spacings
    return schedule, _PREDICTIONS[pred], SamplingConfig(**settings)


def scheduler_from_sampling(schedule: ScheduleConfig, prediction: str, s: SamplingConfig) -> dict[str, Any]:
    """t2i sampler settings -> a diffusers scheduler_config.json (the class that runs the same sampler)."""
    beta = {v: k for k, v in _BETAS.items()}[schedule.name]
    d: dict[str, Any] = {
        "_class_name": SAMPLER_SCHEDULERS[s.sampler],
        "num_train_timesteps": schedule.timesteps,
        "beta_start": schedule.beta_start,
        "beta_end": schedule.beta_end,
        "beta_schedule": beta,
        "prediction_type": {v: k for k, v in _PREDICTIONS.items()}[prediction],
        "timestep_spacing": s.spacing,
        "steps_offset": s.offset,
        "trained_betas": None,
    }
    if s.sampler in ("ddim", "ddpm"):
        d.update(clip_sample=s.clip_sample > 0, clip_sample_range=s.clip_sample or 1.0)
    if s.sampler == "ddim":
        d["set_alpha_to_one"] = s.final_sigma == "zero"
    if s.sampler in ("euler", "heun", "dpmpp_2m", "euler_a") and s.karras:
        d["use_karras_sigmas"] = True
    if s.sampler == "dpmpp_2m":
        d.update(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")
    return d


# --- whole pipelines ------------------------------------------------------------------------------


def load_diffusers_pipeline(folder: str | os.PathLike, name: str | None = None) -> LDM:
    """A diffusers Stable Diffusion folder (txt2img, img2img or inpainting) -> a t2i LDM system."""
    folder = Path(folder)
    kind = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    if kind not in PIPELINES:
        raise ValueError(f"{folder}: a {kind} folder; t2i loads {', '.join(PIPELINES)}")
    return load_sd_parts(folder, name)


def load_sd_parts(folder: Path, name: str | None = None) -> LDM:
    """The Stable Diffusion parts of a diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) as
    one LDM, whatever pipeline class the folder names (a ControlNet pipeline's base, too)."""
    missing = [p for p in PARTS if not (folder / p).is_dir()]
    if missing:
        raise ValueError(f"{folder}: the diffusers folder lacks {', '.join(missing)}/")
    return assemble_sd(load_diffusers_unet(folder / "unet"), load_diffusers_vae(folder / "vae"),
                       load_transformers_clip(folder / "text_encoder"), CLIPTokenizer.from_folder(folder / "tokenizer"),
                       json.loads((folder / "scheduler" / "scheduler_config.json").read_text()),
                       json.loads((folder / "text_encoder" / "config.json").read_text()),
                       json.loads((folder / "unet" / "config.json").read_text()), name or folder.name)


def assemble_sd(unet: UNet, vae: AutoencoderKL, text: TextTransformer, tokenizer: CLIPTokenizer,
                scheduler: dict[str, Any], text_config: dict[str, Any], unet_config: dict[str, Any],
                name: str) -> LDM:
    """Stable Diffusion's parts as one LDM: CLIP tokens attended in full (no padding mask), sampler
    settings from the diffusers scheduler config, default size from the UNet config's sample_size."""
    schedule, prediction, sampling = sampling_from_scheduler(scheduler)
    config = LDMConfig(
        unet=unet.config, autoencoder=vae.config,
        text=TextConfig(kind="clip", encoder=text.config.to_dict(), context_mask=False,
                        attention_mask=bool(text_config.get("use_attention_mask", False))),
        schedule=schedule, prediction=prediction, sampling=sampling,
        sample_size=int(unet_config.get("sample_size", 64)) * vae.config.downscale,
    )
    return LDM(config, unet, vae, TokenizedTextEncoder(tokenizer, text, config.text.attention_mask), name).eval()


def save_diffusers_pipeline(system: LDM, folder: str | os.PathLike) -> Path:
    """Write a t2i LDM system (with a CLIP text encoder) as a folder diffusers' pipelines load."""
    cfg = system.config
    if cfg.text.kind != "clip":
        raise ValueError(f"a '{cfg.text.kind}' text encoder has no diffusers equivalent; only CLIP-text systems "
                         "convert to a diffusers folder")
    if cfg.text.context_mask or cfg.text.pooled:
        raise ValueError("diffusers' Stable Diffusion UNet attends to every token and takes no pooled text: "
                         "this system (context_mask / pooled) cannot be written as one")
    folder = Path(folder)
    latent = cfg.sample_size // cfg.autoencoder.downscale
    save_diffusers_unet(system.unet, folder / "unet", sample_size=latent)
    save_diffusers_vae(system.autoencoder, folder / "vae")
    save_transformers_clip(system.text_encoder.transformer, folder / "text_encoder")
    if cfg.text.attention_mask:
        path = folder / "text_encoder" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "use_attention_mask": True}, indent=2))
    system.text_encoder.tokenizer.save(folder / "tokenizer")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    scheduler = scheduler_from_sampling(cfg.schedule, cfg.prediction, cfg.sampling)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {
        "_class_name": PIPELINES[2] if cfg.inpainting else PIPELINES[0],
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection" if cfg.text.encoder.get("proj_dim")
                         else "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
