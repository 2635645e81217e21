"""The Optimus-style text VAE: shapes, a config that refuses a non-causal decoder, and a tiny one that learns to
reconstruct a few ShapesWorld captions exactly from their posterior means (greedy decoding)."""

import pytest
import torch

from t2i.encoders.tokenizer import WordTokenizer
from t2i.nn.text_vae import TextVAE, TextVAEConfig
from t2i.nn.transformer import TransformerConfig

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["a red circle", "two blue squares", "a green triangle above a yellow star", "a large purple cross"]


def _tiny(tok):
    return TextVAEConfig(vocab_size=len(tok), max_length=10, latent_dim=8,
                         encoder=TransformerConfig(width=32, layers=1, heads=2),
                         decoder=TransformerConfig(width=32, layers=1, heads=2, causal=True))


def test_shapes_and_config_checks():
    tok = WordTokenizer.for_shapes()
    vae = TextVAE(_tiny(tok))
    ids, mask = tok.encode(CAPTIONS, 10)
    post = vae.encode(ids, mask)
    assert post.mean.shape == (4, 8) and vae.logits(post.mean, ids).shape == (4, 10, len(tok))
    assert vae.generate(post.mean).shape == (4, 10)
    assert TextVAEConfig.from_dict(_tiny(tok).to_dict()) == _tiny(tok)
    with pytest.raises(ValueError, match="decoder is causal"):
        TextVAEConfig(decoder=TransformerConfig(width=32, layers=1, heads=2))


def test_learns_to_reconstruct_captions():
    torch.manual_seed(0)
    tok = WordTokenizer.for_shapes()
    vae = TextVAE(_tiny(tok))
    ids, mask = tok.encode(CAPTIONS, 10)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss, stats = vae.loss(ids, mask, beta=1e-3, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    out = vae.generate(vae.encode(ids, mask).mean)
    assert [tok.decode(o) for o in out] == [" ".join(c.split()) for c in CAPTIONS], stats
