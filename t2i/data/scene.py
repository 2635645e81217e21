"""ShapesWorld scenes: the palette, shapes, sizes, positions and relations of ../shared/SHAPESWORLD.md.

Coordinates are fractions of the (square) canvas side, y grows downward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from t2i.encoders.shapes_words import BACKGROUND_NAMES, COLOR_NAMES, POSITIONS, SHAPES, SIZE_NAMES

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 215, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "purple": (145, 60, 190),
    "pink": (245, 120, 185),
    "brown": (125, 80, 40),
}
SIZES: dict[str, float] = {"small": 0.09, "medium": 0.13, "large": 0.18}
assert (tuple(BACKGROUNDS), tuple(COLORS), tuple(SIZES)) == (BACKGROUND_NAMES, COLOR_NAMES, SIZE_NAMES)
SIZE_JITTER = 0.01
MAX_OBJECTS = 4
MARGIN = 0.02  # to the canvas edge, and between bounding circles
RELATION_MIN = 0.15
DEFAULT_HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("purple", "circle"), ("orange", "square"), ("green", "star"), ("yellow", "cross")}
)


def grid_position(x: float, y: float) -> str:
    """Named 3x3 grid-of-thirds cell of a centre."""
    col = min(int(x * 3), 2)
    row = min(int(y * 3), 2)
    name = POSITIONS[row * 3 + col]
    return name


def relation(a: tuple[float, float], b: tuple[float, float]) -> str | None:
    """How centre a relates to centre b: 'left of', 'right of', 'above', 'below' or None."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if abs(dx) > abs(dy) and abs(dx) > RELATION_MIN:
        return "left of" if dx > 0 else "right of"
    if abs(dy) > abs(dx) and abs(dy) > RELATION_MIN:
        return "above" if dy > 0 else "below"
    return None


def size_name(r: float) -> str:
    """The size word whose nominal radius is nearest to r."""
    return min(SIZES, key=lambda k: abs(SIZES[k] - r))


class Located:
    """Centre helpers for anything with fields x, y (scene objects and detections)."""

    x: float
    y: float

    @property
    def center(self) -> tuple[float, float]:
        return (self.x, self.y)

    @property
    def position(self) -> str:
        return grid_position(self.x, self.y)


@dataclass(frozen=True)
class Obj(Located):
    """One flat-coloured shape, centred at (x, y) and inscribed in a circle of radius r."""

    shape: str
    color: str
    size: str
    r: float
    x: float
    y: float

    def bbox(self) -> tuple[float, float, float, float]:
        """Tight bounding box (x0, y0, x1, y1) of the drawn shape, as fractions."""
        xs, ys = shape_extent(self.shape, self.r)
        return (self.x - xs, self.y - ys[0], self.x + xs, self.y + ys[1])

    def to_dict(self) -> dict:
        return {
            "shape": self.shape, "color": self.color, "size": self.size, "r": self.r,
            "center": [self.x, self.y], "position": self.position, "bbox": list(self.bbox()),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Obj":
        return cls(d["shape"], d["color"], d["size"], float(d["r"]), float(d["center"][0]), float(d["center"][1]))


@dataclass(frozen=True)
class Scene:
    """A background and 1-4 non-overlapping objects."""

    objects: tuple[Obj, ...]
    background: str = "white"

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(tuple(Obj.from_dict(o) for o in d["objects"]), d.get("background", "white"))


def shape_extent(shape: str, r: float) -> tuple[float, tuple[float, float]]:
    """Half-width and (up, down) extents of a shape of radius r around its centre."""
    if shape == "circle":
        return r, (r, r)
    if shape in ("square", "cross"):
        h = r / math.sqrt(2)
        return h, (h, h)
    if shape == "triangle":
        return r * math.sqrt(3) / 2, (r, r / 2)
    if shape == "star":
        return r * math.cos(math.radians(18)), (r, r * math.cos(math.radians(36)))
    raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape (square, triangle, star, cross) in the units of cx, cy, r."""
    if shape == "square":
        h = r / math.sqrt(2)
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # equilateral, apex straight up, vertices on the circle
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in (-90, 30, 150)]
    if shape == "star":  # five outer points on the circle, inner vertices at 0.45 r
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = math.radians(-90 + 36 * k)
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    if shape == "cross":  # arms reach r/sqrt2, half-width 0.4 r/sqrt2
        a = r / math.sqrt(2)
        w = 0.4 * a
        return [
            (cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w),
            (cx + a, cy + w), (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a),
            (cx - w, cy + w), (cx - a, cy + w), (cx - a, cy - w), (cx - w, cy - w),
        ]
    raise ValueError(f"no polygon for shape {shape!r}")


# Area of each shape divided by r^2 (used by the detector to recover r from pixel area).
AREA_PER_R2: dict[str, float] = {
    "circle": math.pi,
    "square": 2.0,
    "triangle": 3 * math.sqrt(3) / 4,
    "star": 5 * 0.45 * math.sin(math.radians(36)),
    "cross": 8 * (1 / math.sqrt(2)) * (0.4 / math.sqrt(2)) - 4 * (0.4 / math.sqrt(2)) ** 2,
}


def fits(x: float, y: float, r: float, placed: list[Obj]) -> bool:
    """True when a circle (x, y, r) is inside the margin and clear of every placed object."""
    if x - r < MARGIN or y - r < MARGIN or x + r > 1 - MARGIN or y + r > 1 - MARGIN:
        return False
    return all(math.hypot(x - o.x, y - o.y) >= r + o.r + MARGIN for o in placed)


def sample_radius(rng: np.random.Generator, size: str) -> float:
    """A size's nominal radius jittered uniformly by at most SIZE_JITTER."""
    return float(SIZES[size] + rng.uniform(-SIZE_JITTER, SIZE_JITTER))


def place(rng: np.random.Generator, r: float, placed: list[Obj], tries: int = 200,
          region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> tuple[float, float] | None:
    """A random centre inside region (x0, y0, x1, y1) where a circle of radius r fits, or None."""
    x0, y0, x1, y1 = region
    lo_x, hi_x = max(x0, r + MARGIN), min(x1, 1 - r - MARGIN)
    lo_y, hi_y = max(y0, r + MARGIN), min(y1, 1 - r - MARGIN)
    if lo_x > hi_x or lo_y > hi_y:
        return None
    for _ in range(tries):
        x, y = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
        if fits(x, y, r, placed):
            return x, y
    return None


def allowed_kinds(held_out: frozenset[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every (colour, shape) pair not held out, in a fixed order."""
    return [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in held_out]


def sample_scene(rng: np.random.Generator, held_out: frozenset[tuple[str, str]] = DEFAULT_HELD_OUT,
                 max_objects: int = MAX_OBJECTS, repeat_p: float = 0.4,
                 count_weights: tuple[float, ...] | None = None) -> Scene:
    """A random scene: 1..max_objects objects (uniformly, or n with weight count_weights[n - 1]); each
    repeats an earlier kind with probability repeat_p."""
    kinds = allowed_kinds(held_out)
    u = rng.random()
    bg = "white" if u < 0.6 else ("black" if u < 0.8 else "gray")  # 60 / 20 / 20 %
    while True:
        if count_weights is None:
            n = int(rng.integers(1, max_objects + 1))
        else:
            w = np.asarray(count_weights[:max_objects], dtype=float)
            n = 1 + int(rng.choice(len(w), p=w / w.sum()))
        placed: list[Obj] = []
        for _ in range(n):
            if placed and rng.random() < repeat_p:
                prev = placed[int(rng.integers(len(placed)))]
                color, shape = prev.color, prev.shape
            else:
                color, shape = kinds[int(rng.integers(len(kinds)))]
            size = SIZE_NAMES[int(rng.integers(len(SIZE_NAMES)))]
            r = sample_radius(rng, size)
            xy = place(rng, r, placed)
            if xy is None:
                break
            placed.append(Obj(shape, color, size, r, xy[0], xy[1]))
        if len(placed) == n:
            return Scene(tuple(placed), bg)
