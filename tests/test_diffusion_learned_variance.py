"""DDPM with a learned variance (Nichol & Dhariwal 2021, "learned_range": GLIDE, DeepFloyd IF, unCLIP's decoder)
and unCLIP's "fixed_small_log" prior against diffusers' DDPMScheduler and UnCLIPScheduler, step by step on a
fixed fake network (eps or x0 plus a variance value), float64: max abs difference <= 1e-5 per step."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from t2i.diffusion import ClassifierFreeGuidance, DiscreteDenoiser, DiscreteSchedule, DynamicThreshold  # noqa: E402
from t2i.diffusion.denoisers import WithCond, denoise_v  # noqa: E402
from t2i.diffusion.guidance import StaticThreshold, dynamic_threshold  # noqa: E402
from t2i.diffusion.samplers import SAMPLERS  # noqa: E402
from t2i.diffusion.toy import GaussianEpsNet  # noqa: E402

IF_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                 thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5, prediction_type="epsilon")
STEPS = 12


class FakeNet:
    """net(x_vp, t) -> cat([prediction, v]): an exact Gaussian eps (or x0) and a variance value in (-1, 1)."""

    def __init__(self, schedule, prediction="eps", variance=True, scale=1.0):
        self.eps = GaussianEpsNet(schedule, mean=0.3, std=0.6 * scale)
        self.schedule, self.prediction, self.variance = schedule, prediction, variance

    def __call__(self, x_vp, t):
        t = torch.as_tensor(t).reshape(-1).expand(x_vp.shape[0]).to(x_vp)
        eps = self.eps(x_vp, t)
        a = (1 / (1 + self.schedule.t_to_sigma(t) ** 2)).to(x_vp).reshape(-1, *(1,) * (x_vp.ndim - 1))
        out = eps if self.prediction == "eps" else 1.7 * (x_vp - (1 - a).sqrt() * eps) / a.sqrt()
        v = torch.tanh(0.8 * x_vp + t.reshape(out.shape[:1] + (1,) * (x_vp.ndim - 1)) / 700 - 0.4)
        return torch.cat([out, v], dim=1) if self.variance else out


def _float64(scheduler):
    """The scheduler's arithmetic in float64 over its own alphas_cumprod. Its float32 tables put 1.1e-5 into the
    first DDPM step at t = 999 of the cosine schedule, and UnCLIPScheduler's last step (t = 0, beta = betas[0],
    1 - alphas_cumprod[0] rounded apart from it by 1e-3 relative) 5e-4: diffusers' rounding, not the math."""
    ac = scheduler.alphas_cumprod.double()
    scheduler.alphas_cumprod, scheduler.one = ac, scheduler.one.double()
    scheduler.alphas = ac / torch.cat([ac.new_ones(1), ac[:-1]])
    scheduler.betas = 1 - scheduler.alphas
    return scheduler


def _trajectories(scheduler, net, x_T, den, sigmas, step_kwargs):
    theirs, ours, x = [], [], x_T.clone()
    gen = torch.Generator().manual_seed(1)
    ts = scheduler.timesteps
    for i, t in enumerate(ts):
        kw = {k: f(i) for k, f in step_kwargs.items()}
        x = scheduler.step(net(x, t), t, x, generator=gen, **kw).prev_sample
        theirs.append(x)
    SAMPLERS["ddpm"](den, x_T * (1 + sigmas[0] ** 2).sqrt(), sigmas, generator=torch.Generator().manual_seed(1),
                     callback=lambda i, x, x0, s: ours.append(x / (1 + sigmas[i + 1] ** 2).sqrt()))
    return theirs, ours


def _assert_close(theirs, ours):
    assert len(theirs) == len(ours) == STEPS
    errs = [float((a.double() - b).abs().max()) for a, b in zip(theirs, ours)]
    assert max(errs) <= 1e-5, [f"{e:.1e}" for e in errs]  # float64 tables: ~1e-12 in practice
    assert ours[-1].abs().max() < 10


@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_ddpm_learned_range_with_capped_threshold_matches_diffusers(spacing):
    """DDPMScheduler(variance_type="learned_range", thresholding with sample_max_value 1.5): DeepFloyd IF's.
    Not "trailing": its last step (t = 82 -> clean) gets noise of exp(frac log beta + (1 - frac) log 1e-20) in
    diffusers (the clamped zero posterior variance, t > 0), none in t2i (sigma_next = 0)."""
    scheduler = _float64(diffusers.DDPMScheduler(**IF_CONFIG, timestep_spacing=spacing))
    scheduler.set_timesteps(STEPS)
    schedule = DiscreteSchedule(scheduler.alphas_cumprod.double())
    net = FakeNet(schedule, scale=3.0)  # wide data: the threshold's s lands between 1 and the cap
    sigmas = torch.cat([schedule.t_to_sigma(scheduler.timesteps.double()), torch.zeros(1, dtype=torch.float64)])
    den = DynamicThreshold(DiscreteDenoiser(net, schedule, "eps", learned_variance=True), 0.95, cap=1.5)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _assert_close(*_trajectories(scheduler, net, x_T, den, sigmas, {}))
    # the learned variance matters: the fixed one differs
    fixed = DynamicThreshold(DiscreteDenoiser(lambda x, t: net(x, t)[:, :3], schedule, "eps"), 0.95, cap=1.5)
    ours_fixed = SAMPLERS["ddpm"](fixed, x_T * (1 + sigmas[0] ** 2).sqrt(), sigmas,
                                  generator=torch.Generator().manual_seed(1))
    theirs = _trajectories(scheduler, net, x_T, den, sigmas, {})[0][-1]
    assert (ours_fixed - theirs).abs().max() > 1e-3


@pytest.mark.parametrize("variance", ["fixed_small_log", "learned_range"])
def test_unclip_scheduler_matches_ddpm(variance):
    """UnCLIPScheduler as the Karlo pipelines drive it (prev_timestep = the next timestep): the prior's
    x0-prediction over vectors with fixed_small_log and clipping, the decoder's eps with learned_range."""
    prior = variance == "fixed_small_log"
    scheduler = _float64(diffusers.UnCLIPScheduler(variance_type=variance, clip_sample=True,
                                                   prediction_type="sample" if prior else "epsilon",
                                                   clip_sample_range=0.8 if prior else 1.0))
    scheduler.set_timesteps(STEPS)
    schedule = DiscreteSchedule(scheduler.alphas_cumprod.double())
    net = FakeNet(schedule, "x0" if prior else "eps", variance=not prior)
    ts = scheduler.timesteps
    sigmas = torch.cat([schedule.t_to_sigma(ts.double()), torch.zeros(1, dtype=torch.float64)])
    den = StaticThreshold(DiscreteDenoiser(net, schedule, "x0" if prior else "eps", learned_variance=not prior),
                          0.8 if prior else 1.0)
    shape = (2, 16) if prior else (2, 3, 8, 8)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    prev = {"prev_timestep": lambda i: ts[i + 1] if i + 1 < len(ts) else None}
    _assert_close(*_trajectories(scheduler, net, x_T, den, sigmas, prev))


def test_guidance_takes_the_conditional_variance_and_thresholds_keep_it():
    """CFG guides the eps half and passes the conditional branch's v (GLIDE, IF); X0Map and WithCond keep v."""
    schedule = DiscreteSchedule.named("cosine")

    def net(x, t, c):  # the variance half reads the conditioning
        return torch.cat([x * 0.5 + c, torch.tanh(c).expand_as(x)], dim=1)

    den = DiscreteDenoiser(net, schedule, "eps", learned_variance=True)
    x, sigma = torch.randn(2, 3, 4, 4), torch.full((2,), 2.0)
    cond, uncond = {"c": torch.full((2, 1, 1, 1), 0.3)}, {"c": torch.full((2, 1, 1, 1), -0.9)}
    guided = DynamicThreshold(ClassifierFreeGuidance(den, 4.0, uncond), 0.9, cap=1.2)
    x0, v = denoise_v(guided, x, sigma, cond)
    x0_c, v_c = denoise_v(den, x, sigma, cond)
    x0_u, _ = denoise_v(den, x, sigma, uncond)
    torch.testing.assert_close(v, v_c)
    torch.testing.assert_close(x0, dynamic_threshold(x0_u + 4.0 * (x0_c - x0_u), 0.9, 1.2))
    torch.testing.assert_close(guided(x, sigma, cond), x0)
    assert x0.shape == x.shape and den(x, sigma, cond).shape == x.shape
    torch.testing.assert_close(denoise_v(WithCond(den, cond), x, sigma)[1], v_c)
    assert denoise_v(lambda x, s, c=None: x, x, sigma)[1] is None  # a denoiser without a variance


def test_capped_dynamic_threshold_matches_diffusers():
    scheduler = diffusers.DDPMScheduler(**IF_CONFIG)
    x0 = torch.randn(3, 3, 8, 8, dtype=torch.float64) * torch.tensor([0.5, 1.3, 4.0], dtype=torch.float64)[:, None,
                                                                                                           None, None]
    torch.testing.assert_close(dynamic_threshold(x0, 0.95, 1.5), scheduler._threshold_sample(x0))
    assert dynamic_threshold(x0, 0.95, 1.5)[2].abs().max() == 1.0
