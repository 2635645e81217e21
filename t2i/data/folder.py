"""A folder of captioned images: `metadata.jsonl` (Hugging Face imagefolder: file_name, text) or `.txt` sidecars."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from t2i.data.transforms import center_crop_resize, to_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def _read_metadata(root: Path, meta: Path) -> list[tuple[Path, str]]:
    """(image path, caption) pairs listed in metadata.jsonl, checked line by line."""
    items = []
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta}:{n}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict) or "file_name" not in row or "text" not in row:
            raise ValueError(f"{meta}:{n}: each line needs 'file_name' and 'text'")
        path = root / row["file_name"]
        if not path.is_file():
            raise ValueError(f"{meta}:{n}: image {path} does not exist")
        if not str(row["text"]).strip():
            raise ValueError(f"{meta}:{n}: empty caption for {path.name}")
        items.append((path, str(row["text"])))
    return items


def _read_sidecars(root: Path) -> list[tuple[Path, str]]:
    """(image path, caption) pairs from images with a same-named .txt file beside them."""
    items = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        txt = path.with_suffix(".txt")
        if not txt.is_file():
            raise ValueError(f"{path}: no caption (expected {txt.name} beside it, or a metadata.jsonl)")
        caption = txt.read_text(encoding="utf-8").strip()
        if not caption:
            raise ValueError(f"{txt}: empty caption")
        items.append((path, caption))
    return items


class ImageFolderDataset(Dataset):
    """Captioned images from a folder, centre-cropped and resized to size x size."""

    def __init__(self, root: str | Path, size: int = 64):
        self.root, self.size = Path(root), size
        if not self.root.is_dir():
            raise ValueError(f"{self.root} is not a directory")
        meta = self.root / "metadata.jsonl"
        self.items = _read_metadata(self.root, meta) if meta.is_file() else _read_sidecars(self.root)
        if not self.items:
            raise ValueError(f"{self.root}: no captioned images found")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, dict]:
        path, caption = self.items[i]
        try:
            with Image.open(path) as im:
                im = center_crop_resize(im.convert("RGB"), self.size)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{path}: unreadable image ({e})") from e
        return to_tensor(im), caption, {"index": i, "file": str(path)}
