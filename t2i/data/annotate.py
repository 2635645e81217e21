"""Annotators: an image -> the control map a ControlNet of that kind takes (Zhang et al. 2023 sec. 4 run Canny,
HED, segmentation and scribble synthesis on real images; these are their ShapesWorld-sized counterparts).

- `edges`: Canny (1986): Gaussian blur, Sobel gradients (the strongest colour channel, so a yellow shape on white
  has an edge although its luminance barely differs), non-maximum suppression across the gradient, hysteresis
  between two thresholds. 1-px white lines on black.
- `segmentation`: the ShapesEval detector's palette segmentation (t2i.eval.detector: each pixel a blend of the
  background with one palette colour, 4-connected components, shape by template IoU), each component filled
  with its shape class's colour (SEGMENT_COLORS, a colour per class as ADE20K maps are), on black.
- `scribble`: the edges moved by a smooth random displacement field (wobble) and thickened to about 2.5% of
  the side, as the paper synthesises scribbles from edge maps by random morphology.

Library: NumPy only. The images are small (64 px here), and every step is a few array operations; OpenCV's
headless wheel would add ~50 MB and an ABI to the runtime for one Canny call, scikit-image pulls in SciPy
(a test dependency here, not a runtime one), and NumPy is already what ShapesWorld and the detector use.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from t2i.data.scene import SHAPES, Scene

ANNOTATORS = ("edges", "segmentation", "scribble")
SEGMENT_COLORS: dict[str, tuple[int, int, int]] = {  # one colour per shape class (unknown blobs: gray)
    "circle": (255, 0, 0), "square": (0, 255, 0), "triangle": (0, 0, 255), "star": (255, 255, 0),
    "cross": (0, 255, 255), "unknown": (128, 128, 128),
}
assert set(SEGMENT_COLORS) == set(SHAPES) | {"unknown"}
CANNY_LOW, CANNY_HIGH = 8.0, 20.0  # gradient thresholds, in 0..255 intensity per pixel after the blur


def _rgb(image: Image.Image) -> np.ndarray:
    if not isinstance(image, Image.Image):
        raise ValueError(f"annotate: the image must be a PIL image, got {type(image).__name__}")
    return np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)


def _filter(a: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """A 1-D correlation of every (H, W, ...) plane along axis 0 or 1, edges replicated."""
    r = len(kernel) // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    p = np.pad(a, pad, mode="edge")
    n = a.shape[axis]
    return sum(k * np.take(p, np.arange(i, i + n), axis=axis) for i, k in enumerate(kernel))


def _gaussian(a: np.ndarray, sigma: float) -> np.ndarray:
    x = np.arange(-int(3 * sigma + 0.5), int(3 * sigma + 0.5) + 1, dtype=np.float32)
    k = np.exp(-x**2 / (2 * sigma**2))
    k /= k.sum()
    return _filter(_filter(a, k, 0), k, 1)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by a disc of the radius (pixels)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    p = np.pad(mask, radius)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius + radius:
                out |= p[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
    return out


def canny(image: Image.Image, sigma: float = 1.0, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> np.ndarray:
    """Canny edges (H, W) bool of an image (Canny 1986)."""
    px = _gaussian(_rgb(image), sigma)  # (H, W, 3)
    d = np.array([1.0, 0.0, -1.0], np.float32) / 2
    s = np.array([1.0, 2.0, 1.0], np.float32) / 4
    gx, gy = _filter(_filter(px, d, 1), s, 0), _filter(_filter(px, d, 0), s, 1)  # Sobel, (H, W, 3) each
    mag3 = np.hypot(gx, gy)
    pick = mag3.argmax(axis=2)[..., None]  # the strongest channel per pixel
    gx, gy = (np.take_along_axis(g, pick, 2)[..., 0] for g in (gx, gy))
    mag = np.take_along_axis(mag3, pick, 2)[..., 0] * 2  # (H, W): intensity difference across ~1 px
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180) % 180
    sector = ((angle + 22.5) // 45).astype(int) % 4  # 0: horizontal gradient, 1: 45, 2: vertical, 3: 135
    offsets = [(0, 1), (1, 1), (1, 0), (1, -1)]
    p = np.pad(mag, 1)
    h, w = mag.shape
    keep = np.zeros_like(mag, dtype=bool)
    for k, (dy, dx) in enumerate(offsets):  # non-maximum suppression along the gradient
        a = p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        b = p[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
        keep |= (sector == k) & (mag >= a) & (mag >= b)
    thin = keep & (mag >= low)
    edges = thin & (mag >= high)
    while True:  # hysteresis: weak edges joined to strong ones (8-neighbourhood)
        grown = thin & _dilate(edges, 1)
        if np.array_equal(grown, edges):
            return edges
        edges = grown


def edges(image: Image.Image) -> Image.Image:
    """Canny-style edges: 1-px white lines on black ('L')."""
    return Image.fromarray(canny(image).astype(np.uint8) * 255, "L")


def shape_segments(image: Image.Image) -> np.ndarray:
    """Per pixel the index of its shape class in SHAPES, len(SHAPES) for an unknown blob, -1 for background:
    the detector's palette segmentation and template-IoU classification, at the image's own size."""
    from t2i.eval.detector import classify_shape, estimate_background, segment

    px = _rgb(image)
    h, w, _ = px.shape
    _, comp, keep, soft_all = segment(px, estimate_background(px))
    out = np.full((h, w), -1, np.int64)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for root in keep:
        mask = comp == root
        soft = np.where(mask, soft_all, 0.0)
        area = float(soft.sum())
        shape, _, _ = classify_shape(soft, float((soft * xs).sum() / area), float((soft * ys).sum() / area), area)
        out[mask] = SHAPES.index(shape) if shape in SHAPES else len(SHAPES)
    return out


_SEGMENT_LUT = np.array([SEGMENT_COLORS[s] for s in (*SHAPES, "unknown")] + [(0, 0, 0)], np.uint8)  # index -1: black


def segmentation(image: Image.Image) -> Image.Image:
    """A colour per shape class (SEGMENT_COLORS) on black ('RGB')."""
    return Image.fromarray(_SEGMENT_LUT[shape_segments(image)], "RGB")


def segmentation_truth(scene: Scene, size: int) -> Image.Image:
    """The segmentation map a ShapesWorld scene should give: each object's pixels in its shape class's colour."""
    from t2i.data.render import object_ids

    ids = object_ids(scene, size)
    lut = np.array([(0, 0, 0)] + [SEGMENT_COLORS[o.shape] for o in scene.objects], np.uint8)
    return Image.fromarray(lut[ids], "RGB")


def scribble(image: Image.Image, seed: int = 0) -> Image.Image:
    """Thick, wobbly outlines ('L'): the Canny edges displaced by a smooth random field of up to ~2% of the side,
    drawn ~2.5% of the side thick."""
    e = canny(image)
    h, w = e.shape
    rng = np.random.default_rng(seed)
    side = max(h, w)
    grid = rng.uniform(-1, 1, size=(2, 5, 5)).astype(np.float32) * 0.02 * side  # coarse displacements (px)
    ys, xs = np.nonzero(e)
    field = [_bilinear(g, ys / max(h - 1, 1) * 4, xs / max(w - 1, 1) * 4) for g in grid]
    y2 = np.clip(np.round(ys + field[0]), 0, h - 1).astype(int)
    x2 = np.clip(np.round(xs + field[1]), 0, w - 1).astype(int)
    moved = np.zeros_like(e)
    moved[y2, x2] = True
    return Image.fromarray(_dilate(moved, max(1, round(0.0125 * side))).astype(np.uint8) * 255, "L")


def _bilinear(grid: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """grid (n, n) sampled at fractional (y, x) in [0, n - 1]."""
    n = grid.shape[0]
    y0, x0 = np.clip(np.floor(y).astype(int), 0, n - 2), np.clip(np.floor(x).astype(int), 0, n - 2)
    fy, fx = y - y0, x - x0
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def annotate(image: Image.Image, kind: str, seed: int = 0) -> Image.Image:
    """The control map of `kind` (edges | segmentation | scribble) of an image, the image's size."""
    if kind not in ANNOTATORS:
        raise ValueError(f"unknown annotator {kind!r}; choose from {', '.join(ANNOTATORS)}")
    if kind == "scribble":
        return scribble(image, seed)
    return edges(image) if kind == "edges" else segmentation(image)
