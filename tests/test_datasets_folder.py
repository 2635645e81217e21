"""Captioned image folders: metadata.jsonl or .txt sidecars, centre crop / resize, errors that name the file."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data.folder import ImageFolderDataset
from t2i.data.transforms import center_crop_resize, collate


def _image(path, size=(40, 20), left=(255, 0, 0), right=(0, 0, 255)):
    im = Image.new("RGB", size, left)
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))
    im.save(path)


def test_metadata_jsonl(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    _image(tmp_path / "sub" / "b.jpg", size=(30, 30))
    rows = [{"file_name": "a.png", "text": "red and blue"}, {"file_name": "sub/b.jpg", "text": "another"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = ImageFolderDataset(tmp_path, size=16)
    assert len(ds) == 2
    x, caption, meta = ds[0]
    assert caption == "red and blue" and meta["file"].endswith("a.png")
    assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1
    # the 40x20 image is centre-cropped to its middle 20x20: half red, half blue
    assert x[0, 8, 2] > 0.9 and x[2, 8, 13] > 0.9
    images, captions, metas = collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 16, 16) and captions == ["red and blue", "another"]


def test_sidecar_captions(tmp_path):
    _image(tmp_path / "x.png", size=(64, 64))
    (tmp_path / "x.txt").write_text("a split square\n")
    ds = ImageFolderDataset(tmp_path, size=32)
    x, caption, _ = ds[0]
    assert caption == "a split square" and x.shape == (3, 32, 32)


def test_missing_caption_names_the_file(tmp_path):
    _image(tmp_path / "lonely.png")
    with pytest.raises(ValueError, match="lonely.png"):
        ImageFolderDataset(tmp_path)


def test_metadata_errors_name_the_line(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "x"}\n')
    with pytest.raises(ValueError, match="gone.png"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "gone.png"}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:1.*text"):
        ImageFolderDataset(tmp_path)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "broken.txt").write_text("broken")
    ds = ImageFolderDataset(tmp_path)
    with pytest.raises(ValueError, match="broken.png"):
        ds[0]


def test_not_a_directory(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        ImageFolderDataset(tmp_path / "nope")


def test_center_crop_resize_up_and_down():
    im = Image.fromarray(np.arange(12 * 8 * 3, dtype=np.uint8).reshape(8, 12, 3))
    assert center_crop_resize(im, 4).size == (4, 4)
    assert center_crop_resize(im, 32).size == (32, 32)
    assert torch.is_tensor(torch.tensor(np.asarray(center_crop_resize(im, 8))))
