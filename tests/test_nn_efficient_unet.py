"""Imagen's Efficient UNet as options of the one UNet: res blocks per level, skips scaled by 1/sqrt(2),
resampling before the convolutions (down) and after them (up); each changes what it should and nothing else.
The augmentation-level embedding and per-level res blocks map to diffusers (class_embed_type="timestep")."""

from __future__ import annotations

import json
import math

import pytest
import torch

from t2i.nn.resblock import Downsample, ResBlock, Upsample
from t2i.nn.unet import UNet, UNetConfig, UNetEncoder

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize(model: torch.nn.Module, std: float = 0.15, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _cfg(**kw) -> UNetConfig:
    base = dict(in_channels=3, out_channels=3, block_channels=(16, 32, 32), num_res_blocks=(1, 1, 2),
                attention_levels=(2,), num_heads=2, context_dim=12, pooled_dim=8, norm_groups=8)
    return UNetConfig(**{**base, **kw})


def _inputs(batch: int = 2, size: int = 16):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(batch, 3, size, size, generator=g), torch.tensor([5.0, 600.0])[:batch],
            dict(context=torch.randn(batch, 4, 12, generator=g), pooled=torch.randn(batch, 8, generator=g)))


def test_config_options_round_trip_and_reject_nonsense():
    cfg = _cfg(skip_scale=2 ** -0.5, resample_first=True)
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.res_blocks_at(2) == 2 and UNetConfig(num_res_blocks=3).res_blocks_at(1) == 3
    with pytest.raises(ValueError, match="num_res_blocks per level needs 3 entries, got 2"):
        _cfg(num_res_blocks=(1, 2))
    with pytest.raises(ValueError, match="one res block per level"):
        _cfg(num_res_blocks=(1, 0, 1))
    with pytest.raises(ValueError, match="skip_scale must be > 0"):
        _cfg(skip_scale=0.0)


def test_res_blocks_per_level_down_and_up():
    for resample_first, extra_up in ((False, 1), (True, 0)):
        net = UNet(_cfg(num_res_blocks=(1, 2, 3), resample_first=resample_first))
        down = [sum(isinstance(m, ResBlock) for m in b.modules()) for b in net.down]
        assert sum(down) == 6 and len(net.up) == 6 + 3 * extra_up
        assert len(net.skip_channels) == len(net.up)  # every up block takes one skip


def test_skip_scale_multiplies_the_skips_and_changes_nothing_else():
    x, t, cond = _inputs()
    plain = _randomize(UNet(_cfg())).eval()
    scaled = UNet(_cfg(skip_scale=2 ** -0.5)).eval()
    assert list(scaled.state_dict()) == list(plain.state_dict())  # the same tensors
    scaled.load_state_dict(plain.state_dict())
    split = []

    def scale_skip(block, args):  # the up block's input is cat([h, skip]): scale the skip's channels by hand
        h = args[0]
        c = split.pop(0)
        return (torch.cat([h[:, :-c], h[:, -c:] * 2 ** -0.5], dim=1), *args[1:])

    hooks = [b.register_forward_pre_hook(scale_skip) for b in plain.up]
    with torch.no_grad():
        split[:] = list(reversed(plain.skip_channels))
        ref = plain(x, t, **cond)
        for h in hooks:
            h.remove()
        out, unscaled = scaled(x, t, **cond), plain(x, t, **cond)
    assert torch.allclose(out, ref, atol=1e-6) and not torch.allclose(out, unscaled, atol=1e-3)


def _trace(net: UNet, x, t, cond) -> list[tuple[str, int]]:
    """(layer kind, input height) of every res block and resampling layer, in the order they run."""
    seen, hooks = [], []
    for m in net.modules():
        if isinstance(m, (ResBlock, Downsample, Upsample)):
            hooks.append(m.register_forward_pre_hook(lambda mod, a: seen.append((type(mod).__name__, a[0].shape[-1]))))
    with torch.no_grad():
        out = net(x, t, **cond)
    for h in hooks:
        h.remove()
    assert out.shape == (x.shape[0], 3, *x.shape[-2:])
    return seen


def test_resample_first_moves_the_resampling_around_the_convolutions():
    x, t, cond = _inputs(size=16)
    r, d, u = "ResBlock", "Downsample", "Upsample"
    assert _trace(UNet(_cfg()), x, t, cond) == [  # ADM: convolve, then downsample; upsample after a level's last block
        (r, 16), (d, 16), (r, 8), (d, 8), (r, 4), (r, 4), (r, 4), (r, 4),  # down + middle
        (r, 4), (r, 4), (r, 4), (u, 4), (r, 8), (r, 8), (u, 8), (r, 16), (r, 16)]
    assert _trace(UNet(_cfg(resample_first=True)), x, t, cond) == [  # Imagen: downsample first, upsample last
        (d, 16), (r, 8), (d, 8), (r, 4), (d, 4), (r, 2), (r, 2), (r, 2), (r, 2),
        (r, 2), (r, 2), (u, 2), (r, 4), (u, 4), (r, 8), (u, 8)]


def test_efficient_unet_skips_encoder_copy_and_odd_sizes():
    cfg = _cfg(resample_first=True, skip_scale=2 ** -0.5, aug_level_embed=True, in_channels=6)
    net = _randomize(UNet(cfg)).eval()
    g = torch.Generator().manual_seed(0)
    x, t, cond = torch.randn(2, 6, 12, 12, generator=g), torch.tensor([1.0, 900.0]), _inputs()[2]
    enc = UNetEncoder.from_unet(net).eval()
    with torch.no_grad():
        skips = enc(x, t, aug_level=torch.tensor([0.0, 100.0]), **cond).skips
        assert [s.shape[1] for s in skips] == list(net.skip_channels) == [16, 32, 32, 32]
        assert [s.shape[-1] for s in skips] == [6, 3, 2, 2]  # no full-resolution skip: the res blocks' outputs
        out = net(x, t, aug_level=torch.tensor([0.0, 100.0]), **cond)
        other = net(x, t, aug_level=torch.tensor([0.0, 700.0]), **cond)
    assert out.shape == (2, 3, 12, 12) and torch.isfinite(out).all()
    assert torch.equal(out[0], other[0]) and not torch.allclose(out[1], other[1], atol=1e-4)
    assert math.isclose(cfg.skip_scale, 1 / math.sqrt(2))


def test_per_level_blocks_and_aug_level_map_to_diffusers_both_ways():
    diffusers = pytest.importorskip("diffusers")
    from t2i.io.diffusers_unet import from_diffusers, to_diffusers, unet_config_from_diffusers, \
        unet_config_to_diffusers

    torch.manual_seed(0)
    kw = dict(sample_size=8, in_channels=7, out_channels=4, block_out_channels=(16, 32), layers_per_block=(1, 2),
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
              cross_attention_dim=12, attention_head_dim=2, norm_num_groups=8, class_embed_type="timestep")
    theirs = _randomize(diffusers.UNet2DConditionModel(**kw).eval())
    cfg = unet_config_from_diffusers(dict(theirs.config))
    assert cfg.aug_level_embed and cfg.num_res_blocks == (1, 2) and cfg.pooled_dim is None
    ours = UNet(cfg).eval()
    ours.load_state_dict(from_diffusers(theirs.state_dict(), cfg))  # strict
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 7, 8, 8, generator=g), torch.randn(2, 5, 12, generator=g)
    t, level = torch.tensor([3.0, 710.5]), torch.tensor([250.0, 0.0])
    with torch.no_grad():
        ref = theirs(x, t, encoder_hidden_states=ctx, class_labels=level).sample
        out = ours(x, t, context=ctx, aug_level=level)
    assert (out - ref).abs().max() <= 1e-5
    back_cfg = unet_config_to_diffusers(cfg)
    assert back_cfg["class_embed_type"] == "timestep" and back_cfg["layers_per_block"] == [1, 2]
    back = diffusers.UNet2DConditionModel(**{k: v for k, v in back_cfg.items() if k != "_class_name"}).eval()
    back.load_state_dict(to_diffusers(ours.state_dict(), cfg))  # strict
    with torch.no_grad():
        assert (back(x, t, encoder_hidden_states=ctx, class_labels=level).sample - ref).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="no Efficient UNet layout"):
        unet_config_to_diffusers(UNetConfig.from_dict({**cfg.to_dict(), "resample_first": True}))
