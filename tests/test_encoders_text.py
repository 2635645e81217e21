"""The word tokenizer covers the ShapesWorld grammar; the text encoder returns (pooled, tokens, mask)."""

from __future__ import annotations

import torch

from t2i.data.shapes import ShapesWorld
from t2i.encoders import TextEncoder, TextEncoderConfig, WordTokenizer


def test_every_shapesworld_caption_is_in_the_vocabulary():
    tok = WordTokenizer.for_shapes()
    ds = ShapesWorld(size=16, seed=3, length=400)
    captions = [c for i in range(len(ds)) for c in ds.scene_and_captions(i)[1]]
    ids, mask = tok.encode(captions, 40)
    assert not (ids == tok.unk_id).any(), "a caption word is missing from the vocabulary"
    assert mask.sum(1).max() < 40  # nothing was cut


def test_encode_layout_unknown_words_and_json_round_trip():
    tok = WordTokenizer.for_shapes()
    ids, mask = tok.encode(["A red circle!", "zebra circle", ""], 6)
    assert ids.shape == (3, 6) and mask.dtype == torch.bool
    assert tok.decode(ids[0]) == "a red circle"
    assert ids[0, 3] == tok.eos_id and (ids[0, 4:] == tok.pad_id).all()
    assert ids[1, 0] == tok.unk_id and ids[1, 1] == tok.ids["circle"]
    assert ids[2, 0] == tok.eos_id and mask[2].sum() == 1  # the empty caption is one <eos>
    long, long_mask = tok.encode(["red " * 20], 6)
    assert long_mask.all() and long[0, -1] == tok.eos_id
    again = WordTokenizer.from_json(tok.to_json())
    assert again.vocab == tok.vocab


def test_text_encoder_shapes_and_padding_does_not_leak():
    torch.manual_seed(0)
    enc = TextEncoder(WordTokenizer.for_shapes(), TextEncoderConfig(width=32, layers=2, heads=2, max_length=12)).eval()
    pooled, tokens, mask = enc(["a red circle", "two blue squares to the left of a green star"])
    assert pooled.shape == (2, 32) and tokens.shape == (2, 12, 32) and mask.shape == (2, 12)
    assert mask[0].sum() == 4
    alone, _, _ = enc(["a red circle"])
    torch.testing.assert_close(alone[0], pooled[0], rtol=1e-5, atol=1e-5)  # the batch-mate does not matter
    other, _, _ = enc(["a blue circle"])
    assert not torch.allclose(other[0], pooled[0])
