"""The unCLIP prior (Ramesh et al. 2022, sec. 2.2): a tiny random diffusers PriorTransformer, converted, gives
the same clean-embedding prediction; bad layouts are refused in one line."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import PriorTransformer  # noqa: E402

from t2i.io.diffusers_prior import from_diffusers, load_diffusers_prior, prior_config_from_diffusers  # noqa: E402
from t2i.nn.prior import Prior, PriorConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=12, num_embeddings=7,
            additional_embeddings=4)


def _random(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # diffusers zero-inits the query, positions and clip stats: fill every tensor
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.mark.parametrize("variant", [{}, dict(norm_in_type="layer", embedding_proj_norm_type="layer")])
def test_prior_matches_diffusers(variant, tmp_path):
    torch.manual_seed(0)
    theirs = _random(PriorTransformer(**TINY, **variant))
    theirs.save_pretrained(tmp_path / "prior")
    ours = load_diffusers_prior(tmp_path / "prior").eval()
    b, n = 3, TINY["num_embeddings"]
    x, text, tokens = torch.randn(b, 12), torch.randn(b, 12), torch.randn(b, n, 12)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 4:] = False  # a padded caption
    t = torch.tensor([999, 500, 3])
    with torch.no_grad():
        want = theirs(x, t, proj_embedding=text, encoder_hidden_states=tokens, attention_mask=mask).predicted_image_embedding
        got = ours(x, t, context=tokens, context_mask=mask, pooled=text)
        assert (got - want).abs().max() <= 1e-5
        assert torch.allclose(ours.denormalize(x), theirs.post_process_latents(x), atol=1e-6)


def test_refusals_are_one_line():
    with pytest.raises(ValueError, match="learned final query"):
        prior_config_from_diffusers(dict(TINY, added_emb_type=None))
    with pytest.raises(ValueError, match="decoder-only"):
        PriorConfig(transformer=dict(width=16, layers=1, heads=2, causal=False))
    state = _random(PriorTransformer(**TINY)).state_dict()
    state.pop("proj_in.weight")
    with pytest.raises(ValueError, match="missing tensors.*proj_in.weight"):
        from_diffusers(state, prior_config_from_diffusers(TINY))


def test_the_text_reaches_the_prediction():
    torch.manual_seed(0)
    net = _random(Prior(PriorConfig(dim=8, token_dim=16, text_dim=8, max_tokens=5,
                                    transformer=dict(width=16, layers=1, heads=2, causal=True))))
    x, t, tokens, text = torch.randn(2, 8), torch.tensor([10, 20]), torch.randn(2, 5, 16), torch.randn(2, 8)
    with torch.no_grad():
        base = net(x, t, context=tokens, pooled=text)
        assert base.shape == (2, 8)
        assert (net(x, t, context=tokens, pooled=text + 1) - base).abs().max() > 1e-3
        assert (net(x, t, context=tokens[:, :3], pooled=text) - base).abs().max() > 1e-3  # fewer tokens fit
