"""The analytic ShapesWorld detector: palette segmentation, connected components, shape by template IoU.

No learned weights. Each pixel is explained as a blend of the background with one palette colour
(the antialiasing and blur model); pixels more than half covered are foreground, grouped into
4-connected components of one colour; each component's shape is the one whose ideal template,
scaled to the component's area and centred on its centroid, overlaps it best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from t2i.data.render import SUPERSAMPLE, coverage
from t2i.data.scene import AREA_PER_R2, BACKGROUNDS, COLOR_NAMES, COLORS, SHAPES, Located, size_name
from t2i.data.transforms import center_crop_resize

EVAL_SIZE = 64
MIN_AREA_FRAC = 0.004  # components smaller than this fraction of the image are specks, not objects
MAX_RESIDUAL = 80.0  # RGB distance beyond which a pixel fits no palette colour
MIN_IOU = 0.5  # below this best template overlap a blob has no shape ("unknown")
# Renderer pixel k at 1x holds 4x samples 4k..4k+3, so a drawn centre C*4 lands at index C - 3/8.
_CENTER_OFFSET = (SUPERSAMPLE - 1) / (2 * SUPERSAMPLE)

_PALETTE = np.array([COLORS[c] for c in COLOR_NAMES], np.float32)  # (8, 3)


@dataclass(frozen=True)
class Detection(Located):
    """One detected object: centre (x, y) and radius r as fractions of the side, iou of its shape template."""

    shape: str
    color: str
    x: float
    y: float
    r: float
    iou: float
    area: float

    @property
    def size(self) -> str:
        return size_name(self.r)

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "center": [self.x, self.y], "r": self.r,
                "size": self.size, "position": self.position, "iou": self.iou, "area": self.area}


def as_array(image, size: int = EVAL_SIZE) -> np.ndarray:
    """PIL image or uint8 (H, W, 3) array -> float32 (size, size, 3), centre-cropped and resized."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    image = center_crop_resize(image.convert("RGB"), size)
    return np.asarray(image, dtype=np.float32)


def estimate_background(px: np.ndarray) -> str:
    """The background whose colour is nearest the median of the border pixels."""
    border = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])  # (4S, 3)
    med = np.median(border, axis=0)
    return min(BACKGROUNDS, key=lambda b: float(np.sum((med - np.array(BACKGROUNDS[b])) ** 2)))


def blend_fit(px: np.ndarray, background: str) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel and colour: coverage alpha of the colour over the background, and the fit residual."""
    bg = np.array(BACKGROUNDS[background], np.float32)
    d = _PALETTE - bg  # (8, 3)
    p = px - bg  # (H, W, 3)
    alpha = np.clip(np.einsum("hwc,kc->khw", p, d) / (d * d).sum(1)[:, None, None], 0.0, 1.0)  # (8, H, W)
    resid = np.linalg.norm(p[None] - alpha[..., None] * d[:, None, None, :], axis=-1)  # (8, H, W)
    return alpha, resid


def label_components(labels: np.ndarray) -> np.ndarray:
    """4-connected components of equal non-zero labels: each pixel gets its component's smallest flat index."""
    h, w = labels.shape
    none = h * w
    comp = np.where(labels > 0, np.arange(h * w).reshape(h, w), none)  # (H, W)
    lab = np.pad(labels, 1, constant_values=0)
    while True:
        c = np.pad(comp, 1, constant_values=none)
        new = comp
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            nb = c[1 + dy:h + 1 + dy, 1 + dx:w + 1 + dx]
            same = lab[1 + dy:h + 1 + dy, 1 + dx:w + 1 + dx] == labels
            new = np.where(same & (nb < new), nb, new)
        flat = new.ravel().copy()
        fg = flat < none
        flat[fg] = flat[flat[fg]]  # pointer jumping: follow the chain one more link
        new = flat.reshape(h, w)
        if np.array_equal(new, comp):
            return comp
        comp = new


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One-pixel 4-neighbour dilation."""
    m = np.pad(mask, 1)
    return m[1:-1, 1:-1] | m[:-2, 1:-1] | m[2:, 1:-1] | m[1:-1, :-2] | m[1:-1, 2:]


def classify_shape(soft: np.ndarray, cx: float, cy: float, area: float) -> tuple[str, float, float]:
    """Best (shape, iou, r in px) for a soft mask centred near (cx, cy) (pixel-index units)."""
    h, w = soft.shape
    best = ("unknown", 0.0, math.sqrt(area / math.pi))
    for shape in SHAPES:
        r = math.sqrt(area / AREA_PER_R2[shape])
        x0, y0 = max(0, int(cx - r) - 2), max(0, int(cy - r) - 2)
        x1, y1 = min(w, int(cx + r) + 4), min(h, int(cy + r) + 4)
        tpl = coverage(shape, cx + _CENTER_OFFSET - x0, cy + _CENTER_OFFSET - y0, r, y1 - y0, x1 - x0)
        obs = soft[y0:y1, x0:x1]
        union = np.maximum(tpl, obs).sum() + (soft.sum() - obs.sum())
        iou = float(np.minimum(tpl, obs).sum() / max(union, 1e-6))
        if iou > best[1]:
            best = (shape, iou, r)
    if best[1] < MIN_IOU:
        return "unknown", best[1], best[2]
    return best


def render_accuracy(size: int, n: int, seed: int, corrupt=None) -> tuple[float, float]:
    """(fraction of images whose (colour, shape) multiset is exact, fraction of objects found) on n
    ShapesWorld renders at `size`, each passed through corrupt(image, i) when given."""
    from collections import Counter

    from t2i.data.render import render
    from t2i.data.shapes import ShapesWorld

    ds = ShapesWorld(size=size, seed=seed)
    exact = objs = found = 0
    for i in range(n):
        scene = ds.scene(i)
        im = render(scene, size)
        _, dets = detect(corrupt(im, i) if corrupt else im, size=size)
        truth = Counter((o.color, o.shape) for o in scene.objects)
        seen = Counter((d.color, d.shape) for d in dets)
        exact += truth == seen
        objs += len(scene.objects)
        found += sum((truth & seen).values())
    return exact / n, found / objs


def segment(px: np.ndarray, background: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Palette segmentation of px (H, W, 3): (labels: palette colour index + 1 per pixel, 0 = background;
    comp: connected-component roots; keep: the roots of components large enough to be objects; soft: each
    pixel's blend weight of its best-fitting colour, 0 where no colour fits)."""
    alpha, resid = blend_fit(px, background)
    best = resid.argmin(axis=0)  # (H, W)
    a = np.take_along_axis(alpha, best[None], 0)[0]  # (H, W)
    r_best = np.take_along_axis(resid, best[None], 0)[0]
    fg = (a > 0.5) & (r_best < MAX_RESIDUAL)
    labels = np.where(fg, best + 1, 0)
    comp = label_components(labels)
    roots, counts = np.unique(comp[fg], return_counts=True)
    keep = roots[counts >= MIN_AREA_FRAC * px.shape[0] * px.shape[1]]
    return labels, comp, keep, np.where(r_best < MAX_RESIDUAL, a, 0.0)


def detect(image, size: int = EVAL_SIZE) -> tuple[str, list[Detection]]:
    """(background, objects) found in an image of any size, analysed at size x size."""
    px = as_array(image, size)
    background = estimate_background(px)
    labels, comp, keep, soft_all = segment(px, background)
    kept = np.isin(comp, keep)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    found = []
    for root in keep:
        mask = comp == root
        region = _dilate(mask) & (mask | ~kept)
        soft = np.where(region, soft_all, 0.0)
        area = float(soft.sum())
        cx, cy = float((soft * xs).sum() / area), float((soft * ys).sum() / area)
        shape, iou, r = classify_shape(soft, cx, cy, area)
        color = COLOR_NAMES[int(labels.flat[root]) - 1]
        found.append(Detection(shape, color, (cx + _CENTER_OFFSET) / size, (cy + _CENTER_OFFSET) / size,
                               r / size, iou, area / (size * size)))
    found.sort(key=lambda d: (d.y, d.x))
    return background, found
