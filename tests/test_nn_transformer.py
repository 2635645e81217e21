"""Transformer blocks and the CLIP-style text transformer: masks, causality, pooling, config round trip."""

from dataclasses import replace

import pytest
import torch

from t2i.nn.transformer import (
    Block,
    TextTransformer,
    TextTransformerConfig,
    Transformer,
    TransformerConfig,
    quick_gelu,
)

SMALL = TransformerConfig(width=32, layers=2, heads=4, mlp_dim=40, activation="quick_gelu", causal=True)


def _text(**over):
    torch.manual_seed(0)
    kw = dict(vocab_size=50, max_length=16, transformer=SMALL, eos_token_id=49)
    kw.update(over)
    return TextTransformer(TextTransformerConfig(**kw)).eval()


def test_block_is_pre_ln_residual():
    torch.manual_seed(0)
    cfg = TransformerConfig(width=16, layers=1, heads=2, activation="gelu")
    blk = Block(cfg).eval()
    x = torch.randn(2, 5, 16)
    h = x + blk.attn(blk.ln1(x))
    want = h + blk.mlp.fc2(torch.nn.functional.gelu(blk.mlp.fc1(blk.ln2(h))))
    assert torch.allclose(blk(x), want, atol=1e-6)
    assert torch.allclose(quick_gelu(torch.tensor([1.0])), torch.tensor([1.0]) * torch.sigmoid(torch.tensor(1.702)))


def test_causal_stack_ignores_future_and_noncausal_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 32)
    y = x.clone()
    y[:, 4:] += torch.randn(1, 2, 32)  # not a constant shift: pre-LN blocks normalise that away exactly
    causal = Transformer(SMALL).eval()
    with torch.no_grad():
        a, b = causal(x), causal(y)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6) and not torch.allclose(a[:, 4:], b[:, 4:])
    full = Transformer(TransformerConfig(width=32, layers=2, heads=4)).eval()
    with torch.no_grad():
        assert not torch.allclose(full(x)[:, :4], full(y)[:, :4])


def test_padding_mask_hides_padded_tokens():
    torch.manual_seed(0)
    net = Transformer(TransformerConfig(width=32, layers=2, heads=4)).eval()
    x = torch.randn(2, 7, 32)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[:, 5:] = False
    y = x.clone()
    y[:, 5:] = torch.randn(2, 2, 32) * 10
    with torch.no_grad():
        assert torch.allclose(net(x, mask)[:, :5], net(y, mask)[:, :5], atol=1e-5)
        assert torch.allclose(net(x, mask)[:, :5], net(x[:, :5]), atol=1e-5)


def test_text_transformer_pooling_rules():
    ids = torch.tensor([[1, 5, 7, 49, 49, 49], [1, 9, 49, 3, 2, 49]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    m = _text()
    with torch.no_grad():
        pooled, tokens, out_mask = m(ids, mask)
        assert tokens.shape == (2, 6, 32) and pooled.shape == (2, 32) and torch.equal(out_mask, mask)
        assert torch.equal(pooled, tokens[[0, 1], [3, 2]])  # first EOS (49)
        m.config = replace(m.config, pool="argmax")
        assert torch.equal(m(ids, mask)[0], tokens[[0, 1], [3, 2]])  # highest id, first occurrence
        m.config = replace(m.config, pool="last")
        assert torch.equal(m(ids, mask)[0], tokens[[0, 1], [3, 5]])
        m.config = replace(m.config, pool="mean")
        assert torch.allclose(m(ids, mask)[0][0], tokens[0, :4].mean(0), atol=1e-6)
        _, _, default_mask = m(ids)
        assert default_mask.all()


def test_projection_and_length_check():
    m = _text(proj_dim=8)
    ids = torch.randint(0, 49, (3, 10))
    ids[:, -1] = 49
    with torch.no_grad():
        pooled, tokens, _ = m(ids)
        assert pooled.shape == (3, 8)
        assert torch.allclose(pooled, tokens[:, -1] @ m.proj.weight.T, atol=1e-6)
    with pytest.raises(ValueError, match="max_length"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_configs_round_trip_and_validate():
    cfg = TextTransformerConfig(vocab_size=50, max_length=16, transformer=SMALL, proj_dim=4)
    assert TextTransformerConfig.from_dict(cfg.to_dict()) == cfg
    assert TransformerConfig.from_dict(SMALL.to_dict()) == SMALL
    assert TransformerConfig(width=8, heads=2).hidden == 32
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="activation"):
        TransformerConfig(activation="relu")
    with pytest.raises(ValueError, match="pool"):
        TextTransformerConfig(pool="cls")
    with pytest.raises(ValueError, match="unknown"):
        TextTransformerConfig.from_dict({"vocab": 3})


def test_gradient_checkpointing_same_values_and_grads():
    torch.manual_seed(0)
    net = Transformer(SMALL)
    x = torch.randn(2, 5, 32, requires_grad=True)
    y1 = net(x).square().sum()
    (g1,) = torch.autograd.grad(y1, x)
    net.gradient_checkpointing = True
    y2 = net(x).square().sum()
    (g2,) = torch.autograd.grad(y2, x)
    assert torch.allclose(y1, y2) and torch.allclose(g1, g2, atol=1e-6)


def test_text_transformer_learns_to_separate_prompts(one_thread):
    """A from-scratch text encoder (the encoders floor trains one) can fit a tiny contrastive task."""
    torch.manual_seed(0)
    m = _text(proj_dim=8)
    m.train()
    ids = torch.randint(0, 49, (8, 6))
    ids[:, -1] = 49
    targets = torch.nn.functional.normalize(torch.randn(8, 8), dim=-1)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)

    def loss_fn():
        pooled = torch.nn.functional.normalize(m(ids)[0], dim=-1)
        return torch.nn.functional.cross_entropy(pooled @ targets.T * 10, torch.arange(8))

    first = loss_fn().item()
    for _ in range(40):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
