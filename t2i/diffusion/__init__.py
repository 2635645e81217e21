"""Floor 1: the diffusion math, no networks.

schedules (betas, sigmas, spacings), denoisers (D(x, sigma, cond) -> x0_hat and the wrappers
that make one from a network), samplers (pure functions), guidance (wrappers), losses, and
`sample`, the front door.
"""

from t2i.diffusion.denoisers import ConcatInputs, DiscreteDenoiser, EDMDenoiser, PREDICTIONS
from t2i.diffusion.guidance import (
    ClassifierFreeGuidance,
    DynamicThreshold,
    GradientGuidance,
    StaticThreshold,
    TimestepNet,
    any_of_log_prob,
    classifier_log_prob,
    clip_log_prob,
    dynamic_threshold,
)
from t2i.diffusion.losses import WEIGHTINGS, diffusion_loss, training_draw
from t2i.diffusion.samplers import SAMPLERS, get_sampler
from t2i.diffusion.sampling import SPACINGS, run_sampler, sample, sampling_sigmas
from t2i.diffusion.schedules import DiscreteSchedule, karras_sigmas, snr

__all__ = [
    "ClassifierFreeGuidance", "ConcatInputs", "DiscreteDenoiser", "DiscreteSchedule", "DynamicThreshold",
    "EDMDenoiser", "GradientGuidance", "PREDICTIONS", "SAMPLERS", "SPACINGS", "StaticThreshold", "TimestepNet",
    "WEIGHTINGS", "any_of_log_prob", "classifier_log_prob", "clip_log_prob", "diffusion_loss", "dynamic_threshold",
    "get_sampler", "karras_sigmas", "run_sampler", "sample", "sampling_sigmas", "snr", "training_draw",
]
