"""KL autoencoder: shapes, config round trip, Gaussian posterior, scaling, and that its loss trains."""

import math

import pytest
import torch

from t2i.nn.autoencoder import AutoencoderConfig, AutoencoderKL, autoencoder_loss
from t2i.nn.distributions import DiagonalGaussian

TINY = AutoencoderConfig(channels=(16, 32), layers_per_block=1, norm_groups=8, latent_channels=4)


def test_shapes_and_config_round_trip():
    torch.manual_seed(0)
    m = AutoencoderKL(TINY)
    x = torch.randn(2, 3, 16, 12)
    post = m.encode(x)
    assert post.mean.shape == (2, 4, 8, 6) and post.logvar.shape == (2, 4, 8, 6)
    assert m.decode(post.mode()).shape == (2, 3, 16, 12)
    assert TINY.downscale == 2 and AutoencoderConfig().downscale == 8
    assert AutoencoderConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown"):
        AutoencoderConfig.from_dict({**TINY.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="divisible"):
        AutoencoderConfig(channels=(12,), norm_groups=8)


def test_no_attention_no_quant_conv_variant():
    cfg = AutoencoderConfig(channels=(8,), layers_per_block=1, norm_groups=4, mid_attention=False,
                            use_quant_conv=False, use_post_quant_conv=False)
    m = AutoencoderKL(cfg)
    assert not any("attn" in k or "quant" in k for k in m.state_dict())
    assert m.decode(m.encode(torch.randn(1, 3, 4, 4)).sample()).shape == (1, 3, 4, 4)


def test_diagonal_gaussian_matches_closed_forms():
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    d = DiagonalGaussian.from_moments(torch.cat([mean, logvar.clone().index_fill_(0, torch.tensor([0]), 50.0)], 1))
    assert d.logvar.max() == 20.0  # clamped as LDM does
    d = DiagonalGaussian(mean, logvar)
    ref = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    std_normal = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    kl_ref = torch.distributions.kl_divergence(ref, std_normal).sum((1, 2, 3))
    assert torch.allclose(d.kl(), kl_ref, atol=1e-4)
    other = DiagonalGaussian(mean + 1, logvar - 0.5)
    kl2 = torch.distributions.kl_divergence(ref, torch.distributions.Normal(mean + 1, (0.5 * (logvar - 0.5)).exp()))
    assert torch.allclose(d.kl(other), kl2.sum((1, 2, 3)), atol=1e-4)
    x = torch.randn_like(mean)
    assert torch.allclose(d.nll(x), -ref.log_prob(x).sum((1, 2, 3)), atol=1e-4)
    # sampling is reproducible from a CPU generator and has the right moments
    big = DiagonalGaussian(torch.full((1, 1, 200, 200), 2.0), torch.full((1, 1, 200, 200), math.log(0.25)))
    s1 = big.sample(torch.Generator().manual_seed(3))
    assert torch.equal(s1, big.sample(torch.Generator().manual_seed(3)))
    assert abs(s1.mean().item() - 2.0) < 0.01 and abs(s1.std().item() - 0.5) < 0.01


def test_scale_unscale_inverse():
    m = AutoencoderKL(AutoencoderConfig(channels=(8,), layers_per_block=1, norm_groups=4,
                                        scaling_factor=0.5, shift_factor=0.1))
    z = torch.randn(2, 4, 3, 3)
    assert torch.allclose(m.scale(z), (z - 0.1) * 0.5)
    assert torch.allclose(m.unscale(m.scale(z)), z, atol=1e-6)


def test_loss_trains_tiny_autoencoder(one_thread):
    torch.manual_seed(0)
    m = AutoencoderKL(AutoencoderConfig(channels=(8, 16), layers_per_block=1, norm_groups=4))
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    loss0, logs0 = autoencoder_loss(m, x, generator=torch.Generator().manual_seed(0))
    assert set(logs0) >= {"loss", "rec", "kl"} and logs0["kl"] >= 0
    for step in range(40):
        loss, logs = autoencoder_loss(m, x, kl_weight=1e-6, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["rec"] < 0.5 * logs0["rec"]
    # l2 variant and KL weight enter the loss as stated
    l2, logs2 = autoencoder_loss(m, x, kl_weight=0.5, reconstruction="l2", generator=torch.Generator().manual_seed(0))
    assert l2.item() == pytest.approx(logs2["rec"] + 0.5 * logs2["kl"], rel=1e-5)
    with pytest.raises(ValueError, match="reconstruction"):
        autoencoder_loss(m, x, reconstruction="lpips")


def test_init_logvar_starts_the_posterior_narrow():
    """The autoencoder stage's init_logvar sets the posterior's log-variance at initialisation, with or
    without a quant_conv after the encoder (it used to be mixed into the means by quant_conv)."""
    from t2i.nn.autoencoder import AutoencoderConfig, AutoencoderKL
    from t2i.train.stages.autoencoder import start_narrow

    for quant in (True, False):
        ae = AutoencoderKL(AutoencoderConfig(channels=(8, 16), norm_groups=4, use_quant_conv=quant))
        start_narrow(ae, -8.0)
        post = ae.encode(torch.randn(2, 3, 16, 16))
        assert torch.allclose(post.logvar, torch.full_like(post.logvar, -8.0))
