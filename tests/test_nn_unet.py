"""The t2i UNet and its parts: attention, timestep embedding, every conditioning path, checkpointing."""

from __future__ import annotations

import json
import math

import pytest
import torch

from t2i.nn.attention import Attention
from t2i.nn.embeddings import timestep_embedding
from t2i.nn.unet import UNet, UNetConfig

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


def test_control_residuals_add_to_skips_and_middle():
    torch.manual_seed(0)
    net = _randomize(UNet(_tiny())).eval()
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([3.0]), torch.randn(1, 2, 12)
    skips = [net.conv_in(x)]
    emb = net._embed(t, 1, None, x.device)
    h = skips[0]
    for b in net.down:
        h = b(h, emb, ctx, None)
        skips.append(h)
    zeros = [torch.zeros_like(s) for s in skips] + [torch.zeros_like(h)]
    base = net(x, t, context=ctx)
    assert torch.allclose(net(x, t, context=ctx, control=zeros), base)
    for i in range(len(zeros)):
        bumped = list(zeros)
        bumped[i] = torch.ones_like(bumped[i])
        assert not torch.allclose(net(x, t, context=ctx, control=bumped), base, atol=1e-4), i
    with pytest.raises(ValueError, match="control needs"):
        net(x, t, context=ctx, control=zeros[:-1])


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
