"""Guidance and thresholding wrappers, and the training loss for every parameterization."""

import math

import pytest
import torch

from t2i.diffusion import (ClassifierFreeGuidance, DiscreteDenoiser, DiscreteSchedule, DynamicThreshold,
                           EDMDenoiser, GradientGuidance, StaticThreshold, diffusion_loss, dynamic_threshold)
from t2i.diffusion.toy import GaussianDenoiser


class CondNet(torch.nn.Module):
    """A tiny network whose output depends on its conditioning tensor."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x, t, context):
        return self.lin(x) + context.mean(dim=1) * (1 + t[:, None] / 1000)


def _denoiser():
    torch.manual_seed(0)
    return DiscreteDenoiser(CondNet(), DiscreteSchedule.named("scaled_linear"), "eps")


def test_cfg_scale_one_is_the_conditional_denoiser():
    den = _denoiser()
    x, sigma = torch.randn(3, 4), torch.tensor([0.5, 3.0, 10.0])
    cond, uncond = {"context": torch.randn(3, 5, 4)}, {"context": torch.zeros(3, 5, 4)}
    with torch.no_grad():
        assert torch.equal(ClassifierFreeGuidance(den, 1.0, uncond)(x, sigma, cond), den(x, sigma, cond))
        # any other scale extrapolates from the unconditional branch, in one batch
        c, u = den(x, sigma, cond), den(x, sigma, uncond)
        torch.testing.assert_close(ClassifierFreeGuidance(den, 7.5, uncond)(x, sigma, cond), u + 7.5 * (c - u))
        torch.testing.assert_close(ClassifierFreeGuidance(den, 0.0, uncond)(x, sigma, cond), u)
    with pytest.raises(ValueError, match="differ in keys"):
        ClassifierFreeGuidance(den, 2.0, {})(x, sigma, cond)


def test_gradient_guidance_adds_scaled_score():
    base = GaussianDenoiser(0.0, 1.0)
    target = torch.tensor([2.0, -1.0])

    def log_prob(x, sigma, cond):  # a Gaussian "classifier" centred on the target
        return -0.5 * ((x - target) ** 2).sum(dim=1)

    x, sigma = torch.randn(2, 2, dtype=torch.float64), torch.tensor([0.5, 2.0], dtype=torch.float64)
    out = GradientGuidance(base, log_prob, scale=3.0)(x, sigma)
    expected = base(x, sigma) + 3.0 * sigma[:, None] ** 2 * (target - x)
    torch.testing.assert_close(out, expected)


def test_dynamic_threshold_matches_paper_definition():
    # Sample 0: |x| percentile above 1 -> clip to [-s, s] and divide by s; sample 1: within [-1, 1] -> unchanged.
    x = torch.stack([torch.linspace(-4.0, 2.0, 101), torch.linspace(-0.5, 0.9, 101)])
    out = dynamic_threshold(x, percentile=0.9)
    s = torch.quantile(x[0].abs(), 0.9).item()
    assert s > 1
    torch.testing.assert_close(out[0], x[0].clamp(-s, s) / s)
    torch.testing.assert_close(out[1], x[1])
    assert out.abs().max() <= 1.0 + 1e-6
    hand = torch.tensor([[0.5, -3.0, 2.0, 1.0]])  # percentile 1.0 -> s = 3
    torch.testing.assert_close(dynamic_threshold(hand, 1.0), torch.tensor([[0.5 / 3, -1.0, 2 / 3, 1 / 3]]))
    den = DynamicThreshold(lambda x, s, c: x * 5, 0.995)
    assert den(torch.randn(2, 8), torch.ones(2)).abs().max() <= 1.0 + 1e-6
    assert StaticThreshold(lambda x, s, c: x * 5)(torch.randn(2, 8), torch.ones(2)).abs().max() <= 1.0


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_uniform_loss_is_the_parameterizations_own_mse(prediction):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 4).double()
    sched = DiscreteSchedule.named("scaled_linear")
    den = DiscreteDenoiser(lambda x, t: net(x), sched, prediction)
    x0, noise = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    t = torch.tensor([0, 10, 100, 400, 800, 999])
    sigma = sched.sigmas[t]
    a = sched.alphas_cumprod[t][:, None]
    x_vp = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = {"eps": noise, "v": a.sqrt() * noise - (1 - a).sqrt() * x0, "x0": x0}[prediction]
    direct = (net(x_vp) - target).pow(2).mean(dim=1)
    ours = diffusion_loss(den, x0, sigma=sigma, noise=noise, reduce=False)
    torch.testing.assert_close(ours, direct)
    # min-SNR-gamma (Hang et al. 2023): the same loss re-weighted by min(snr, 5) / (weight of the target)
    snr = 1 / sigma**2
    own = {"eps": snr, "v": snr + 1, "x0": torch.ones_like(snr)}[prediction]
    msnr = diffusion_loss(den, x0, sigma=sigma, noise=noise, weighting="min_snr", gamma=5.0, reduce=False)
    torch.testing.assert_close(msnr, direct * snr.clamp(max=5.0) / own)


def test_edm_preconditioning_and_loss():
    seen = {}

    def net(x_in, c_noise):
        seen["x_in"], seen["c_noise"] = x_in, c_noise
        return torch.zeros_like(x_in)

    den = EDMDenoiser(net, sigma_data=0.5)
    x, sigma = torch.full((1, 3), 2.0), torch.tensor([1.5])
    out = den(x, sigma)
    c_skip = 0.25 / (1.5**2 + 0.25)
    torch.testing.assert_close(out, x * c_skip)
    torch.testing.assert_close(seen["x_in"], x / math.sqrt(1.5**2 + 0.25))
    torch.testing.assert_close(seen["c_noise"], torch.log(sigma) / 4)
    sig = den.sample_training_sigmas(20000, torch.Generator().manual_seed(0))
    assert abs(sig.log().mean().item() + 1.2) < 0.05 and abs(sig.log().std().item() - 1.2) < 0.05


def test_discrete_training_sigmas_are_schedule_sigmas_uniform_over_timesteps():
    # DDPM training: t ~ U{0, ..., T-1}, sigma = sigma_t exactly (no interpolation between timesteps)
    sched = DiscreteSchedule.named("linear", n=20)
    den = DiscreteDenoiser(lambda x, t: x, sched, "eps")
    n = 40_000
    sig = den.sample_training_sigmas(n, torch.Generator().manual_seed(0))
    assert sig.shape == (n,)
    t = torch.searchsorted(sched.sigmas, sig).clamp(max=sched.num_timesteps - 1)
    assert torch.equal(sched.sigmas[t], sig)  # every draw is one of the schedule's 20 sigmas
    counts = torch.bincount(t, minlength=sched.num_timesteps).double()
    assert len(counts) == 20 and counts.min() > 0  # both ends (t = 0 and t = T-1) are drawn
    expected = n / sched.num_timesteps
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 43.82  # the 99.9% quantile of chi-square with 19 degrees of freedom
    # reproducible from the generator, and the generator is what is used
    assert torch.equal(sig, den.sample_training_sigmas(n, torch.Generator().manual_seed(0)))
    assert not torch.equal(sig, den.sample_training_sigmas(n, torch.Generator().manual_seed(1)))
    # a 1000-step schedule: draws stay inside [sigma_min, sigma_max] and cover (nearly) every timestep
    big = DiscreteDenoiser(lambda x, t: x, DiscreteSchedule.named("scaled_linear"), "eps")
    s = big.sample_training_sigmas(20_000, torch.Generator().manual_seed(2))
    assert big.sigma_min <= s.min() and s.max() <= big.sigma_max
    assert torch.isin(s, big.schedule.sigmas).all() and len(s.unique()) > 990
    # uniform over timesteps, not over sigma: half the draws lie below the median timestep's sigma
    assert abs(float((s < big.schedule.sigmas[500]).double().mean()) - 0.5) < 0.02
