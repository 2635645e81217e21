"""The stage: a denoiser over a network, its schedule and prediction kind, the conditioning it is
given, and `sample_stage`, the one function that samples a stage. Every system and the trainer's
sample grids call it; a cascade calls it once per stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from torch import nn

from t2i.diffusion.conditioning import lowres_condition
from t2i.diffusion.config import SamplingConfig
from t2i.diffusion.denoisers import ConcatInputs, Cond, Denoiser, DiscreteDenoiser, WithCond
from t2i.diffusion.guidance import ClassifierFreeGuidance, GradientGuidance, LogProb, thresholded
from t2i.diffusion.samplers import Generators, randn
from t2i.diffusion.sampling import img2img_sigmas, initial_sample, mask_blend, run_sampler, to_vp
from t2i.diffusion.schedules import DiscreteSchedule
from t2i.encoders.registry import TextConfig, encode_prompts
from t2i.encoders.registry import prompt_warnings as encoder_warnings
from t2i.systems.request import GenerationRequest


@dataclass(frozen=True)
class Guidance:
    """How a stage's denoiser is steered: classifier-free (uncond given) or by a gradient (log_prob given)."""

    scale: float = 1.0
    uncond: Cond | None = None  # the negative prompt's conditioning
    log_prob: LogProb | None = None  # gradient guidance: log p(y | x_t) (CLIP, a noisy classifier)
    threshold: str = "none"  # none | static[:limit] | dynamic[:percentile]


def guided(denoiser: Denoiser, guidance: Guidance, extra: Cond | None = None) -> Denoiser:
    """The wrapper stack of a stage: prompt-independent conditioning (`extra`, e.g. concat channels),
    then gradient or classifier-free guidance, then thresholding. Each wrapper forwards the schedule."""
    if extra:
        denoiser = WithCond(denoiser, extra)
    if guidance.log_prob is not None:
        denoiser = GradientGuidance(denoiser, guidance.log_prob, guidance.scale)
    elif guidance.uncond is not None:
        denoiser = ClassifierFreeGuidance(denoiser, guidance.scale, guidance.uncond)
    return thresholded(denoiser, guidance.threshold)


def stage_denoiser(net: nn.Module, schedule: DiscreteSchedule, prediction: str, guidance: Guidance,
                   concat: list[torch.Tensor], extra: Cond | None = None, learned_variance: bool = False) -> Denoiser:
    """A stage's network as a guided denoiser; `concat` (low-res image, mask + masked image) enters as
    extra input channels, `extra` (e.g. a prior's vector as `pooled`) as prompt-independent inputs; with
    `learned_variance` the network also outputs the variance value DDPM samples with (GLIDE, IF, unCLIP)."""
    extra = {**(extra or {}), **({"concat": torch.cat(concat, dim=1)} if concat else {})}
    net = ConcatInputs(net) if concat else net
    return guided(DiscreteDenoiser(net, schedule, prediction, learned_variance), guidance, extra)


def augmented_lowres(x: torch.Tensor, size: tuple[int, int], schedule: DiscreteSchedule, level: float,
                     generator: Generators) -> torch.Tensor:
    """The previous stage's image (B, C, h, w) enlarged to size and noise-augmented at `level`, a fraction
    of the timesteps (Ho et al. 2022, sec. 4.3): the channels a super-resolution stage takes."""
    sigma = schedule.t_to_sigma(torch.full((x.shape[0],), level * (schedule.num_timesteps - 1)))
    return lowres_condition(x, size, sigma, randn(x.shape, x, generator))


def aug_level_input(net: nn.Module, schedule: DiscreteSchedule, level: float, batch: int) -> Cond:
    """{"aug_level": (B,) in timestep units} for a network that embeds its low-res input's augmentation level
    (UNetConfig.aug_level_embed; Imagen, Saharia et al. 2022, sec. 2.5), else {}."""
    if not getattr(getattr(net, "config", None), "aug_level_embed", False):
        return {}
    return {"aug_level": torch.full((batch,), level * (schedule.num_timesteps - 1))}


def text_conditions(text: TextConfig, encoder: nn.Module, r: GenerationRequest,
                    negative: bool) -> tuple[Cond, Cond | None]:
    """The network inputs of the request's prompts, and of its negative prompt when `negative`."""
    cond = encode_prompts(text, encoder, r.batch)
    return cond, encode_prompts(text, encoder, [r.negative_prompt] * len(r.batch)) if negative else None


class PromptWarning(UserWarning):
    """A prompt is cut by the text encoder's context or has words its tokenizer does not know."""


def prompt_warnings(system: nn.Module, r: GenerationRequest) -> list[str]:
    """One line per problem of the request's prompts (and negative prompt) with any of the system's text
    encoders (each module with a `prompt_fit`), without repeats."""
    texts = [("prompt", p) for p in r.prompts] + ([("negative prompt", r.negative_prompt)] if r.negative_prompt else [])
    found = []
    for module in system.modules():
        if hasattr(module, "prompt_fit"):
            found += [w for what, text in texts for w in encoder_warnings(module, text, what)]
    return list(dict.fromkeys(found))


def default_threshold(settings: SamplingConfig, asked: str | None) -> str:
    """The thresholding a request asks, else the stage's own, its clip_sample (static) or none."""
    if asked is not None or settings.threshold:
        return asked if asked is not None else settings.threshold
    return f"static:{settings.clip_sample}" if settings.clip_sample > 0 else "none"


@dataclass
class StageRun:
    """One stage's sampling besides its denoiser: the sample shape (B, C, H, W) or (B, D), the sampler
    settings, and optionally an init sample (img2img at strength), a known sample + repaint mask
    (inpainting by blending), the initial unit noise (drawn here when None) and a progress callback."""

    shape: tuple[int, ...]
    settings: SamplingConfig
    cond: Cond | None = None
    strength: float = 1.0
    init: torch.Tensor | None = None  # a clean sample to start from, noised to the first sigma
    known: torch.Tensor | None = None  # a clean sample whose region repaint = 0 is kept (RePaint's blend)
    repaint: torch.Tensor | None = None  # (1|B, 1, H, W): 1 = sample, 0 = keep `known`
    noise: torch.Tensor | None = None
    progress: Callable[[int], None] | None = None
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32


def sample_stage(denoiser: Denoiser, run: StageRun, generator: Generators) -> torch.Tensor:
    """Sample one stage; returns the final sample in VP form (what a decoder or the next stage takes).
    The schedule comes from the denoiser (every wrapper forwards it); all noise from `generator`, one for
    the batch or one per image (`randn`)."""
    s = run.settings
    sigmas = img2img_sigmas(s.sigmas(denoiser.schedule, s.steps), s.steps, run.strength)
    like = torch.empty((), device=run.device, dtype=run.dtype)
    noise = run.noise if run.noise is not None else randn(run.shape, like, generator)
    sigma0 = float(sigmas[0])
    x_T = initial_sample(noise, sigma0, s.noise_scale(sigma0), run.init)
    blend = None if run.repaint is None else mask_blend(run.repaint, run.known, noise, sigmas)

    def callback(i: int, x: torch.Tensor, x0: torch.Tensor, sigma: float) -> None:
        if blend is not None:
            blend(i, x)
        if run.progress is not None:
            run.progress(i)

    options = {"eta": s.eta, "model_eps": s.model_eps} if s.sampler == "ddim" else {}
    x = run_sampler(denoiser, x_T.to(device=noise.device, dtype=noise.dtype), sigmas, sampler=s.sampler,
                    cond=run.cond, generator=generator, callback=callback, **options)
    return to_vp(x, float(sigmas[-1]))
