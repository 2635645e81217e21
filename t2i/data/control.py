"""ControlNet conditions rendered from a ShapesWorld scene: edges, segmentation, depth, scribble, layout."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from t2i.data.render import SUPERSAMPLE, object_ids
from t2i.data.scene import COLOR_NAMES, COLORS, Scene, shape_polygon

CONTROL_KINDS: tuple[str, ...] = ("edges", "segmentation", "depth", "scribble", "layout")


def edges(scene: Scene, size: int) -> Image.Image:
    """1-px outlines, white on black: object pixels with a 4-neighbour outside the object."""
    ids = object_ids(scene, size)
    pad = np.pad(ids, 1, mode="edge")
    inner = ids[None] == np.stack([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]])  # (4, H, W)
    edge = (ids > 0) & ~inner.all(axis=0)
    return Image.fromarray((edge * 255).astype(np.uint8), "L")


def segmentation(scene: Scene, size: int) -> Image.Image:
    """Per-pixel object colour index (1 + index in COLOR_NAMES), background 0, as an 'L' image."""
    ids = object_ids(scene, size)
    lut = np.array([0] + [1 + COLOR_NAMES.index(o.color) for o in scene.objects], np.uint8)
    return Image.fromarray(lut[ids], "L")


def depth(scene: Scene, size: int) -> Image.Image:
    """Flat depth per object, larger objects nearer = brighter; background 0."""
    ids = object_ids(scene, size)
    lut = np.array([0] + [min(255, round(255 * o.r / 0.2)) for o in scene.objects], np.uint8)
    return Image.fromarray(lut[ids], "L")


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Closed outline points of a shape (a 24-gon for the circle)."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 25)
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in t]
    pts = shape_polygon(shape, cx, cy, r)
    return pts + pts[:1]


def scribble(scene: Scene, size: int, seed: int = 0) -> Image.Image:
    """Thick outlines whose vertices are jittered by up to 3% of the side, white on black."""
    rng = np.random.default_rng(seed)
    big = size * SUPERSAMPLE
    im = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(im)
    width = max(2, round(big * 0.025))
    for o in scene.objects:
        pts = np.array(_outline(o.shape, o.x, o.y, o.r))
        pts = pts + rng.uniform(-0.015, 0.015, size=pts.shape)
        draw.line([tuple(p) for p in (pts * big)], fill=255, width=width, joint="curve")
    return im.resize((size, size), Image.BOX)


def layout(scene: Scene, size: int) -> Image.Image:
    """Each object's bounding box filled with its colour, on black; smaller boxes drawn last."""
    im = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(im)
    for o in sorted(scene.objects, key=lambda o: -o.r):
        x0, y0, x1, y1 = (v * size for v in o.bbox())
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=COLORS[o.color])
    return im


def control_map(scene: Scene, kind: str, size: int, seed: int = 0) -> Image.Image:
    """The named control map of the scene at side `size`."""
    if kind == "scribble":
        return scribble(scene, size, seed)
    makers = {"edges": edges, "segmentation": segmentation, "depth": depth, "layout": layout}
    if kind not in makers:
        raise ValueError(f"unknown control map {kind!r}; choose from {', '.join(CONTROL_KINDS)}")
    return makers[kind](scene, size)
