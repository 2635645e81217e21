"""The t2i UNet and its parts: attention, timestep embedding, every conditioning path, checkpointing, the encoder
half as a module (ControlNet's copy), additive control residuals and the augmentation-level embedding."""

from __future__ import annotations

import json
import math

import pytest
import torch

from t2i.nn.attention import Attention
from t2i.nn.embeddings import timestep_embedding
from t2i.nn.unet import ControlResiduals, UNet, UNetConfig, UNetEncoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny layers: one thread is faster on a busy machine


def _randomize(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with noise so zero-initialised layers do not hide a path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _tiny(**kw) -> UNetConfig:
    base = dict(
        block_channels=(16, 32),
        num_res_blocks=1,
        attention_levels=(1,),
        num_heads=2,
        context_dim=12,
        norm_groups=8,
    )
    base.update(kw)
    return UNetConfig(**base)


def _reference_attention(q, k, v, keep):  # (B, h, N, d) x3, keep (B|1, 1, N|1, M) bool
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~keep, float("-inf"))
    return s.softmax(-1) @ v


def _heads(t, h):
    b, n, _ = t.shape
    return t.view(b, n, h, -1).transpose(1, 2)


# ---------------------------------------------------------------- attention


def test_self_attention_causal_and_padding_mask_match_reference():
    torch.manual_seed(0)
    a = Attention(16, heads=4, head_dim=8, qkv_bias=True)
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    q, k, v = (_heads(t, 4) for t in a.to_qkv(x).chunk(3, -1))
    keep = mask[:, None, None, :] & torch.ones(6, 6, dtype=torch.bool).tril()
    ref = a.to_out(_reference_attention(q, k, v, keep).transpose(1, 2).reshape(2, 6, 32))
    out = a(x, mask=mask, causal=True)
    assert torch.allclose(out, ref, atol=1e-5)
    # without a mask the fast causal path gives the same as a full-keep mask
    assert torch.allclose(a(x, causal=True), a(x, mask=torch.ones(2, 6, dtype=torch.bool), causal=True), atol=1e-5)


def test_cross_attention_mask_equals_dropping_the_padded_tokens():
    torch.manual_seed(0)
    a = Attention(16, heads=2, head_dim=8, context_dim=10)
    x, ctx = torch.randn(1, 5, 16), torch.randn(1, 7, 10)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    assert torch.allclose(a(x, context=ctx, mask=mask), a(x, context=ctx[:, :4]), atol=1e-5)
    assert not torch.allclose(a(x, context=ctx), a(x, context=ctx[:, :4]), atol=1e-3)
    with pytest.raises(ValueError, match="needs a context"):
        a(x)


def test_fully_masked_row_is_finite():
    a = Attention(8, heads=1, head_dim=8, context_dim=8)
    out = a(torch.randn(2, 3, 8), context=torch.randn(2, 4, 8), mask=torch.zeros(2, 4, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_glide_concat_attention_prepends_context_keys():
    """GLIDE's encoder_kv: keys/values = [context projection; own projection], padding masked."""
    torch.manual_seed(0)
    a = Attention(16, heads=2, head_dim=8, context_dim=10, qkv_bias=True, concat_context=True)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 10)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    q, k, v = (_heads(t, 2) for t in a.to_qkv(x).chunk(3, -1))
    ck, cv = (_heads(t, 2) for t in a.to_context_kv(ctx).chunk(2, -1))
    keep = torch.cat([mask, torch.ones(2, 5, dtype=torch.bool)], 1)[:, None, None, :]
    o = _reference_attention(q, torch.cat([ck, k], 2), torch.cat([cv, v], 2), keep)
    ref = a.to_out(o.transpose(1, 2).reshape(2, 5, 16))
    assert torch.allclose(a(x, context=ctx, mask=mask), ref, atol=1e-5)
    # without context the layer is plain self-attention over its own keys
    ref_self = a.to_out(_reference_attention(q, k, v, torch.ones(1, 1, 1, 5, dtype=torch.bool)).transpose(1, 2).reshape(2, 5, 16))
    assert torch.allclose(a(x), ref_self, atol=1e-5)


# ---------------------------------------------------------------- embeddings


def test_timestep_embedding_matches_diffusers_and_accepts_fractions():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.5, 999.0])
    ref = get_timestep_embedding(t, 32, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert torch.allclose(timestep_embedding(t, 32), ref, atol=1e-6)
    e = timestep_embedding(torch.tensor(2.5), 7)
    assert e.shape == (1, 7) and e[0, -1] == 0  # odd widths are zero-padded
    assert not torch.allclose(timestep_embedding(torch.tensor([1.0]), 8), timestep_embedding(torch.tensor([1.5]), 8))


# ---------------------------------------------------------------- UNet


def test_config_round_trips_through_json_and_rejects_nonsense():
    cfg = _tiny(num_heads=(1, 2), pooled_dim=5, scale_shift=True)
    again = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="exactly one of num_heads and head_dim"):
        _tiny(head_dim=8)
    with pytest.raises(ValueError, match="attention_levels"):
        _tiny(attention_levels=(2,))
    with pytest.raises(ValueError, match="not divisible"):
        _tiny(num_heads=3)
    with pytest.raises(ValueError, match="unknown fields"):
        UNetConfig.from_dict({"channels": 3})
    with pytest.raises(ValueError, match="exclusive"):
        _tiny(pooled_dim=4, num_classes=3)


def test_fresh_model_predicts_zero_and_still_learns():
    """Zero-initialised output conv (ADM): output is 0 at init, yet the output layer gets a gradient."""
    torch.manual_seed(0)
    net = UNet(_tiny())
    x = torch.randn(2, 4, 8, 8)
    out = net(x, torch.tensor([10.0, 20.0]), context=torch.randn(2, 3, 12))
    assert out.shape == x.shape and torch.count_nonzero(out) == 0
    out.square().add(out).sum().backward()
    assert net.conv_out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (12, 6)])
def test_odd_sizes_scalar_timestep_and_extra_input_channels(size):
    torch.manual_seed(0)
    net = _randomize(UNet(_tiny(in_channels=9, out_channels=4, block_channels=(16, 32, 32), attention_levels=(1, 2))))
    x = torch.randn(2, 9, *size)
    ctx = torch.randn(2, 3, 12)
    out = net(x, 3.5, context=ctx)
    assert out.shape == (2, 4, *size) and torch.isfinite(out).all()
    assert torch.allclose(out, net(x, torch.tensor([3.5, 3.5]), context=ctx), atol=1e-6)


def test_timestep_and_context_change_the_output_and_mask_equals_truncation():
    torch.manual_seed(0)
    net = _randomize(UNet(_tiny())).eval()
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 12)
    t = torch.tensor([1.0, 900.0])
    base = net(x, t, context=ctx)
    assert not torch.allclose(base, net(x, t + 0.5, context=ctx), atol=1e-4)
    assert not torch.allclose(base, net(x, t, context=ctx.flip(1)[:, :4]), atol=1e-4)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 2, dtype=torch.bool)
    assert torch.allclose(net(x, t, context=ctx, context_mask=mask), net(x, t, context=ctx[:, :3]), atol=1e-5)
    assert torch.allclose(net(x, t, context=ctx, context_mask=mask.float()), net(x, t, context=ctx[:, :3]), atol=1e-5)
    with pytest.raises(ValueError, match="pass context="):
        net(x, t)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        net(torch.randn(2, 3, 8, 8), t, context=ctx)


def test_pooled_projection_and_class_table_are_added_to_the_time_embedding():
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5.0, 5.0])
    for kw, good, bad in [
        (dict(pooled_dim=6), torch.randn(2, 6), torch.tensor([1, 2])),
        (dict(pooled_dim=6, pooled_mlp=True), torch.randn(2, 6), torch.tensor([1, 2])),
        (dict(num_classes=4), torch.tensor([0, 3]), torch.randn(2, 6)),
    ]:
        net = _randomize(UNet(_tiny(context_dim=None, attention_levels=(), mid_attention=False, **kw))).eval()
        out = net(x, t, pooled=good)
        other = good.flip(0)
        assert not torch.allclose(out, net(x, t, pooled=other), atol=1e-4)
        with pytest.raises(ValueError, match="conditioned on `pooled`"):
            net(x, t)
        if kw.get("num_classes"):
            with pytest.raises(ValueError, match="integer class ids"):
                net(x, t, pooled=bad)
    # the embedding really is additive: pooled whose projection is zero changes nothing
    net = _randomize(UNet(_tiny(context_dim=None, attention_levels=(), pooled_dim=3))).eval()
    with torch.no_grad():
        net.pooled_proj.weight.zero_()
        net.pooled_proj.bias.zero_()
    plain = UNet(_tiny(context_dim=None, attention_levels=()))
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("pooled_proj")})
    assert torch.allclose(net(x, t, pooled=torch.randn(2, 3)), plain.eval()(x, t), atol=1e-6)


def test_scale_shift_resblocks_differ_from_additive_and_have_twice_the_projection():
    torch.manual_seed(0)
    ss, add = UNet(_tiny(scale_shift=True)), UNet(_tiny())
    assert ss.down[0].res.emb_proj.out_features == 2 * add.down[0].res.emb_proj.out_features
    _randomize(ss)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([3.0]), torch.randn(1, 2, 12)
    # zero scale and shift reduce AdaGN to plain GroupNorm: the result no longer depends on t
    with torch.no_grad():
        for m in ss.modules():
            if hasattr(m, "emb_proj"):
                m.emb_proj.weight.zero_()
                m.emb_proj.bias.zero_()
    assert torch.allclose(ss(x, t, context=ctx), ss(x, t * 50, context=ctx), atol=1e-6)


def test_glide_style_adm_attention_uses_context():
    torch.manual_seed(0)
    net = _randomize(UNet(_tiny(attention_block="adm", attention_levels=(0, 1), head_dim=8, num_heads=None, pooled_dim=12)))
    assert net.down[0].attn.attn.to_context_kv.in_features == 12
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]), torch.randn(2, 3, 12)
    pooled = ctx[:, -1]  # GLIDE adds the final token's projection to the time embedding
    a = net(x, t, context=ctx, pooled=pooled)
    b = net(x, t, context=ctx + 1, pooled=pooled)
    assert a.shape == x.shape and not torch.allclose(a, b, atol=1e-4)
    mask = torch.tensor([[1, 1, 0]] * 2, dtype=torch.bool)
    assert torch.allclose(net(x, t, context=ctx, context_mask=mask, pooled=pooled), net(x, t, context=ctx[:, :2], pooled=pooled), atol=1e-5)


def test_unconditional_adm_model_without_context():
    net = _randomize(UNet(_tiny(attention_block="adm", context_dim=None)))
    out = net(torch.randn(1, 4, 8, 8), torch.tensor([4.0]))
    assert out.shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="no context_dim"):
        net(torch.randn(1, 4, 8, 8), torch.tensor([4.0]), context=torch.randn(1, 2, 12))


def test_gradient_checkpointing_gives_same_outputs_and_grads():
    torch.manual_seed(0)
    net = _randomize(UNet(_tiny(attention_levels=(0, 1), dropout=0.0))).train()
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 4.0]), torch.randn(2, 3, 12, requires_grad=True)

    def run(flag):
        net.zero_grad()
        ctx.grad = None
        net.gradient_checkpointing = flag
        out = net(x, t, context=ctx)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}, ctx.grad.clone()

    o1, g1, c1 = run(False)
    o2, g2, c2 = run(True)
    assert torch.allclose(o1, o2, atol=1e-6) and torch.allclose(c1, c2, atol=1e-6)
    assert g1.keys() == g2.keys() and all(torch.allclose(g1[k], g2[k], atol=1e-6) for k in g1)
    assert any(g.abs().sum() > 0 for g in g1.values())


# ---------------------------------------------------------------- encoder half, control residuals, augmentation level


def _residuals(enc_out, seed: int = 5, scale: float = 1.0) -> ControlResiduals:
    g = torch.Generator().manual_seed(seed)
    skips = tuple(torch.randn(s.shape, generator=g) * scale for s in enc_out.skips)
    return ControlResiduals(skips, torch.randn(enc_out.mid.shape, generator=g) * scale)


CONFIGS = {
    "ldm": dict(),
    "pooled": dict(pooled_dim=6, block_channels=(16, 32, 32), attention_levels=(1, 2), num_res_blocks=2),
    "classes_adm": dict(num_classes=5, attention_block="adm", scale_shift=True, head_dim=8, num_heads=None),
    "aug": dict(aug_level_embed=True, in_channels=7),
}


def _cond(cfg: UNetConfig, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    kw = dict(context=torch.randn(batch, 3, cfg.context_dim, generator=g))
    if cfg.pooled_dim:
        kw["pooled"] = torch.randn(batch, cfg.pooled_dim, generator=g)
    if cfg.num_classes:
        kw["pooled"] = torch.arange(batch) % cfg.num_classes
    if cfg.aug_level_embed:
        kw["aug_level"] = torch.tensor([0.0, 250.0])[:batch]
    return kw


# ---------------------------------------------------------------- the encoder module


@pytest.mark.parametrize("name", list(CONFIGS))
def test_standalone_encoder_loads_strictly_and_gives_the_unets_own_skips(name):
    cfg = _tiny(**CONFIGS[name])
    net = _randomize(UNet(cfg)).eval()
    enc = UNetEncoder.from_unet(net).eval()  # strict load of the UNet's encoder weights
    assert enc.state_dict().keys() == net.encoder_state_dict().keys()
    assert set(net.state_dict()) - set(enc.state_dict()) == {
        k for k in net.state_dict() if k.split(".")[0] in ("up", "norm_out", "conv_out")}
    fresh = UNetEncoder(cfg)
    fresh.load_state_dict(net.encoder_state_dict())  # strict, the way ControlNet initialises its copy
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in fresh.state_dict().items())

    # the skips the UNet itself computes, caught on its way through
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in (net.conv_in, *net.down, net.mid)]
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3.0, 500.0])
    with torch.no_grad():
        net(x, t, **_cond(cfg))
        out = enc(x, t, **_cond(cfg))
    for h in hooks:
        h.remove()
    assert len(out.skips) == len(enc.skip_channels) == len(seen) - 1
    assert all(torch.equal(a, b) for a, b in zip(out.skips, seen[:-1]))
    assert torch.equal(out.mid, seen[-1])
    assert tuple(s.shape[1] for s in out.skips) == enc.skip_channels == net.skip_channels
    assert out.emb.shape == (2, cfg.emb_dim)

    # a copy, not a view: training it leaves the UNet alone
    with torch.no_grad():
        enc.conv_in.weight.add_(1.0)
    assert not torch.equal(enc.conv_in.weight, net.conv_in.weight)


def test_hint_is_added_after_the_input_conv():
    cfg = _tiny()
    enc = _randomize(UNetEncoder(cfg)).eval()
    x, t, kw = torch.randn(1, 4, 8, 8), torch.tensor([7.0]), _cond(cfg, 1)
    with torch.no_grad():
        plain = enc(x, t, **kw)
        hint = torch.randn_like(plain.skips[0])
        hinted = enc(x, t, hint=hint, **kw)
        assert all(torch.equal(a, b) for a, b in zip(enc(x, t, hint=torch.zeros_like(hint), **kw).skips, plain.skips))
    assert torch.equal(hinted.skips[0], plain.skips[0] + hint)
    assert not torch.allclose(hinted.mid, plain.mid, atol=1e-4)  # it flows through the down path
    with pytest.raises(ValueError, match=r"hint must be \(1, 16, 8, 8\)"):
        enc(x, t, hint=torch.zeros(1, 16, 4, 4), **kw)


# ---------------------------------------------------------------- control residuals


@pytest.mark.parametrize("name", list(CONFIGS))
def test_zero_residuals_are_bit_identical_and_residuals_add_to_the_skips(name):
    cfg = _tiny(**CONFIGS[name])
    net = _randomize(UNet(cfg)).eval()
    x, t, kw = torch.randn(2, cfg.in_channels, 8, 8), torch.tensor([3.0, 40.0]), _cond(cfg)
    with torch.no_grad():
        base = net(x, t, **kw)
        enc = net.encode(x, t, **kw)
        zeros = ControlResiduals(tuple(torch.zeros_like(s) for s in enc.skips), torch.zeros_like(enc.mid))
        assert torch.equal(net(x, t, control=zeros, **kw), base)
        res = _residuals(enc)
        out = net(x, t, control=res, **kw)
        # the same sum through every accepted form: dataclass, (skips, mid) pair, diffusers' flat order
        assert torch.equal(net(x, t, control=(list(res.skips), res.mid), **kw), out)
        assert torch.equal(net(x, t, control=[*res.skips, res.mid], **kw), out)
        # several controls: the residuals sum before they are passed, with per-control scales
        a, b = _residuals(enc, seed=6), _residuals(enc, seed=7)
        summed = ControlResiduals(tuple(p * 0.5 + q * 2.0 for p, q in zip(a.skips, b.skips)), a.mid * 0.5 + b.mid * 2.0)
        assert torch.equal(net(x, t, control=a.scaled(0.5) + b.scaled(2.0), **kw), net(x, t, control=summed, **kw))
    assert not torch.allclose(out, base, atol=1e-3)
    for i in range(len(res.skips) + 1):  # every residual reaches the output
        bumped = ControlResiduals(zeros.skips[:i] + (res.skips[i],) + zeros.skips[i + 1:], zeros.mid) \
            if i < len(res.skips) else ControlResiduals(zeros.skips, res.mid)
        with torch.no_grad():
            assert not torch.allclose(net(x, t, control=bumped, **kw), base, atol=1e-5), i


def test_residuals_match_diffusers_down_block_and_mid_block_additional_residuals():
    """Two levels, two res blocks each, attention at both (diffusers' 'sd1' layout): parity <= 1e-5."""
    diffusers = pytest.importorskip("diffusers")
    from t2i.io.diffusers_unet import from_diffusers, unet_config_from_diffusers

    torch.manual_seed(0)
    theirs = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
        cross_attention_dim=12, attention_head_dim=2, norm_num_groups=8).eval()
    _randomize(theirs, std=0.15)
    cfg = unet_config_from_diffusers(dict(theirs.config))
    ours = UNet(cfg).eval()
    ours.load_state_dict(from_diffusers(theirs.state_dict(), cfg))  # strict
    g = torch.Generator().manual_seed(1)
    x, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3.0, 710.5]), torch.randn(2, 5, 12, generator=g)
    with torch.no_grad():
        res = _residuals(ours.encode(x, t, context=ctx), scale=0.5)
        ref = theirs(x, t, encoder_hidden_states=ctx, down_block_additional_residuals=res.skips,
                     mid_block_additional_residual=res.mid).sample
        plain = theirs(x, t, encoder_hidden_states=ctx).sample
        out = ours(x, t, context=ctx, control=res)
    assert len(res.skips) == 6  # conv_in, 2 res blocks, downsample, 2 res blocks
    assert (ref - plain).abs().max() > 0.1  # the residuals matter
    assert (out - ref).abs().max() <= 1e-5


def test_bad_residuals_give_clear_errors():
    cfg = _tiny()
    net = _randomize(UNet(cfg)).eval()
    x, t, kw = torch.randn(1, 4, 8, 8), torch.tensor([3.0]), _cond(cfg, 1)
    enc = net.encode(x, t, **kw)
    res = _residuals(enc)
    with pytest.raises(ValueError, match=r"control needs 4 skip residuals .* got 3"):
        net(x, t, control=ControlResiduals(res.skips[:-1], res.mid), **kw)
    with pytest.raises(ValueError, match=r"control needs 4 skip residuals"):
        net(x, t, control=[*res.skips[:-1], res.mid], **kw)
    with pytest.raises(ValueError, match=r"control skip residual 2 is \(1, 16, 8, 8\), its skip is \(1, 16, 4, 4\)"):
        net(x, t, control=ControlResiduals(res.skips[:2] + (torch.zeros(1, 16, 8, 8),) + res.skips[3:], res.mid), **kw)
    with pytest.raises(ValueError, match=r"mid residual is \(1, 16, 4, 4\), the middle output is \(1, 32, 4, 4\)"):
        net(x, t, control=ControlResiduals(res.skips, torch.zeros(1, 16, 4, 4)), **kw)
    with pytest.raises(ValueError, match="control must be ControlResiduals"):
        net(x, t, control=res.mid, **kw)
    with pytest.raises(ValueError, match="cannot add 3 skip residuals to 4"):
        res + ControlResiduals(res.skips[:-1], res.mid)


# ---------------------------------------------------------------- augmentation level


def test_aug_level_embedding_changes_the_output_and_is_required_when_configured():
    cfg = _tiny(aug_level_embed=True)
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = {k: v for k, v in _tiny().to_dict().items() if k != "aug_level_embed"}  # configs saved before the field
    assert UNetConfig.from_dict(old) == _tiny()
    plain_keys = set(UNet(_tiny()).state_dict())
    net = _randomize(UNet(cfg)).eval()
    assert set(net.state_dict()) - plain_keys == {"aug_embed.linear_1.weight", "aug_embed.linear_1.bias",
                                                  "aug_embed.linear_2.weight", "aug_embed.linear_2.bias"}
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([20.0, 20.0]), torch.randn(2, 3, 12)
    with torch.no_grad():
        a = net(x, t, context=ctx, aug_level=torch.tensor([0.0, 0.0]))
        b = net(x, t, context=ctx, aug_level=torch.tensor([0.0, 300.0]))
        assert torch.equal(net(x, t, context=ctx, aug_level=0.0), a)  # a scalar level serves the batch
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1], atol=1e-4)
    with pytest.raises(ValueError, match=r"conditioned on `aug_level`.*pass aug_level="):
        net(x, t, context=ctx)
    with pytest.raises(ValueError, match="aug_level has 3 values for a batch of 2"):
        net(x, t, context=ctx, aug_level=torch.zeros(3))
    with pytest.raises(ValueError, match="no aug_level_embed"):
        UNet(_tiny()).eval()(x, t, context=ctx, aug_level=torch.zeros(2))


def test_aug_level_embedding_matches_diffusers_timestep_class_embedding():
    """diffusers' class_embed_type="timestep" (DeepFloyd IF's stage II noise level) is the same function."""
    diffusers = pytest.importorskip("diffusers")
    from t2i.io.diffusers_unet import from_diffusers, unet_config_from_diffusers

    torch.manual_seed(0)
    kw = dict(sample_size=8, in_channels=7, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
              cross_attention_dim=12, attention_head_dim=2, norm_num_groups=8)
    theirs = _randomize(diffusers.UNet2DConditionModel(class_embed_type="timestep", **kw).eval(), std=0.15)
    state = dict(theirs.state_dict())
    aug = {k.replace("class_embedding.", "aug_embed."): state.pop(k) for k in list(state) if k.startswith("class_emb")}
    plain = unet_config_from_diffusers(dict(theirs.config, class_embed_type=None))
    ours = UNet(UNetConfig.from_dict({**plain.to_dict(), "aug_level_embed": True})).eval()
    ours.load_state_dict({**from_diffusers(state, plain), **aug})  # strict
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 7, 8, 8, generator=g), torch.randn(2, 5, 12, generator=g)
    t, level = torch.tensor([3.0, 710.5]), torch.tensor([250.0, 0.0])
    with torch.no_grad():
        ref = theirs(x, t, encoder_hidden_states=ctx, class_labels=level).sample
        other = theirs(x, t, encoder_hidden_states=ctx, class_labels=level.flip(0)).sample
        out = ours(x, t, context=ctx, aug_level=level)
    assert (ref - other).abs().max() > 0.01  # the level matters
    assert (out - ref).abs().max() <= 1e-5


def test_position_encoding_starts_as_the_unet_without_it_and_then_tells_places_apart():
    """UNetConfig.position_encoding: zero-initialised Fourier features of each pixel's place in every spatial
    transformer; a UNet that gains them (init_from an older system) gives the same output until they learn."""
    from t2i.nn.embeddings import FourierPosition2D
    from t2i.train.stages.diffusion import add_position_encodings

    plain = _randomize(UNet(_tiny())).eval()
    placed = UNet(_tiny(position_encoding=True)).eval()
    own = placed.state_dict()
    state = add_position_encodings(plain.state_dict(), own)
    assert sorted(set(state) - set(plain.state_dict())) == sorted(k for k in own if ".position.proj." in k)
    placed.load_state_dict(state)  # strict: nothing else is new
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([5.0, 700.0]), torch.randn(2, 3, 12)
    with torch.no_grad():
        torch.testing.assert_close(placed(x, t, context=ctx), plain(x, t, context=ctx), rtol=0, atol=0)
        for name, p in placed.named_parameters():
            if ".position." in name:
                p.normal_(0, 0.2)  # the position projections learn something
        assert not torch.allclose(placed(x, t, context=ctx), plain(x, t, context=ctx), atol=1e-4)

    enc = _randomize(FourierPosition2D(6))
    grid = enc(4, 5)  # (20, 6): one row per pixel, every pixel its own code
    assert grid.shape == (20, 6) and torch.cdist(grid, grid).add(torch.eye(20)).min() > 1e-3
    # the same place in [-1, 1] gets the same code at any resolution (pixel centres of 2 and 6 pixels: +-0.5)
    torch.testing.assert_close(enc(1, 2), enc(1, 6)[[1, 4]], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="position_encoding needs attention_block='transformer'"):
        _tiny(position_encoding=True, attention_block="adm")
