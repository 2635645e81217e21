"""Rasterise a ShapesWorld scene: draw at 4x with PIL, box-downsample for antialiasing."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from t2i.data.scene import BACKGROUNDS, COLORS, Scene, shape_polygon

SUPERSAMPLE = 4


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    """Draw one shape centred at (cx, cy) with bounding radius r, all in pixels of draw's canvas."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(shape_polygon(shape, cx, cy, r), fill=fill)


def render(scene: Scene, size: int = 64, supersample: int = SUPERSAMPLE) -> Image.Image:
    """The scene as an RGB image of side `size` (>= 16)."""
    if size < 16:
        raise ValueError(f"ShapesWorld images are at least 16 px, got {size}")
    big = size * supersample
    im = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(im)
    for o in scene.objects:
        draw_shape(draw, o.shape, o.x * big, o.y * big, o.r * big, COLORS[o.color])
    if supersample == 1:
        return im
    return im.resize((size, size), Image.BOX)


def coverage(shape: str, cx: float, cy: float, r: float, height: int, width: int,
             supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel of a (height, width) patch that the shape covers; units are pixels."""
    s = supersample
    im = Image.new("L", (width * s, height * s), 0)
    draw_shape(ImageDraw.Draw(im), shape, cx * s, cy * s, r * s, 255)
    small = im.resize((width, height), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0  # (H, W)


def object_ids(scene: Scene, size: int, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Per-pixel index of the object covering most of the pixel (1-based), 0 for background."""
    s = supersample
    big = size * s
    im = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(im)
    for k, o in enumerate(scene.objects, start=1):
        draw_shape(draw, o.shape, o.x * big, o.y * big, o.r * big, k)
    blocks = np.asarray(im).reshape(size, s, size, s)  # (H, s, W, s)
    counts = np.stack([(blocks == k).sum(axis=(1, 3)) for k in range(1, len(scene.objects) + 1)])  # (K, H, W)
    if not len(counts):
        return np.zeros((size, size), np.uint8)
    ids = counts.argmax(axis=0) + 1  # (H, W)
    return np.where(counts.max(axis=0) * 2 > s * s, ids, 0).astype(np.uint8)  # (H, W)
