"""Image <-> tensor conversions shared by every dataset: centre crop, resize, [-1, 1] scaling."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def center_crop_resize(im: Image.Image, size: int) -> Image.Image:
    """The largest centred square of im, resized to size x size (box filter down, Lanczos up)."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != size:
        im = im.resize((size, size), Image.BOX if side > size else Image.LANCZOS)
    return im


def to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [-1, 1]."""
    a = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)  # (3, H, W)
    return torch.from_numpy(np.ascontiguousarray(a) * np.float32(1 / 127.5) - np.float32(1.0))


def to_pil(x: torch.Tensor) -> Image.Image:
    """Float tensor (3, H, W) in [-1, 1] -> RGB PIL image."""
    a = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    return Image.fromarray(a, "RGB")


def collate(batch: list[tuple[torch.Tensor, str, dict]]) -> tuple[torch.Tensor, list[str], list[dict]]:
    """Batch (image, caption, meta) items into (images (B, 3, H, W), captions, metas)."""
    images, captions, metas = zip(*batch)
    return torch.stack(images), list(captions), list(metas)
