"""Images in and out, once: PIL <-> tensors, masks, labelled images (generation parameters in `.info`),
grids, PNGs with their metadata as text chunks, and the sampling progress bar.

A leaf: it imports nothing from t2i, so every floor may use it (tests/test_floors.py checks both)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image, PngImagePlugin


def image_to_tensor(image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """PIL image -> (1, 3, H, W) in [-1, 1], resized (Lanczos) to size=(width, height) when given."""
    image = image.convert("RGB")
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), Image.LANCZOS)
    a = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(a).permute(2, 0, 1)[None] * 2.0 - 1.0


def mask_to_tensor(mask: Image.Image) -> torch.Tensor:
    """PIL mask -> (1, 1, H, W) of 0 (keep) and 1 (repaint): grayscale, binarized at 0.5."""
    a = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0  # (H, W)
    return (torch.from_numpy(a) >= 0.5).float()[None, None]


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> RGB PIL images."""
    a = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(im, "RGB") for im in a]


class StepBar:
    """A sampler progress callback: a tqdm bar of `total` steps, opened at the first step (so only
    after the inputs were checked)."""

    def __init__(self, total: int):
        self.total, self.bar = total, None

    def __call__(self, i: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc="sampling", unit="step")
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def labelled_images(x: "torch.Tensor | list[Image.Image]", prompts: list[str], num_images: int,
                    meta: Mapping[str, str]) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] (or B PIL images), B = prompts x num_images -> PIL images whose `.info` holds the
    generation parameters `meta`, the prompt and the batch index (written as PNG text chunks by `save_png`)."""
    images = tensor_to_images(x) if isinstance(x, torch.Tensor) else x
    for i, im in enumerate(images):
        im.info.update(meta, prompt=prompts[i // num_images], batch_index=str(i))
    return images


def keep_outside(x: torch.Tensor, original: torch.Tensor, repaint: torch.Tensor, feather: float = 0.0) -> torch.Tensor:
    """Paste `original` (1|B, 3, H, W) back into images x (B, 3, H, W), both in [0, 1], wherever repaint
    (1|B, 1, H, W) is 0, so those pixels are the original's exactly; with `feather` px the new pixels fade in
    over that distance inside the repainted region (a box blur of the kept region, zero outside the mask)."""
    alpha = repaint.to(x.dtype)
    r = int(round(feather))
    if r > 0:
        kept = torch.nn.functional.avg_pool2d(1 - alpha, 2 * r + 1, stride=1, padding=r, count_include_pad=False)
        alpha = alpha * (1 - kept)  # 0 outside the mask, rising to 1 a feather's width inside it
    return alpha * x + (1 - alpha) * original.to(x.dtype)


def image_grid(images: "list[Image.Image] | torch.Tensor", columns: int = 0) -> Image.Image:
    """Equal-size images -> one grid, `columns` wide (default: about square). A tensor (N, 3, H, W) is
    read as images in [-1, 1] (training sample grids)."""
    if isinstance(images, torch.Tensor):
        images = tensor_to_images((images + 1) / 2)
    w, h = images[0].size
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, ((i % columns) * w, (i // columns) * h))
    return grid


def png_bytes(image: Image.Image, metadata: Mapping[str, Any]) -> bytes:
    """A PNG file's bytes carrying `metadata` as text chunks (one per key; non-strings as JSON)."""
    info = PngImagePlugin.PngInfo()
    for k, v in metadata.items():
        info.add_text(k, v if isinstance(v, str) else json.dumps(v))
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def jpeg_bytes(image: Image.Image, metadata: Mapping[str, Any], quality: int = 95) -> bytes:
    """A JPEG file's bytes carrying `metadata` as one JSON comment (COM segment)."""
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality, comment=json.dumps(dict(metadata)).encode())
    return out.getvalue()


IMAGE_SUFFIXES = {".png": png_bytes, ".jpg": jpeg_bytes, ".jpeg": jpeg_bytes}


def save_png(image: Image.Image, path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write an image carrying `metadata` (PNG text chunks; a JPEG's comment for .jpg / .jpeg) atomically:
    a temporary file beside it, then a rename, so a reader never sees half an image."""
    path = Path(path)
    encode = IMAGE_SUFFIXES.get(path.suffix.lower(), png_bytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, encode(image, metadata))
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file in path's folder, then rename it to path (atomic on POSIX)."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # as a plain write would leave it (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
