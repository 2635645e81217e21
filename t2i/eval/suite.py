"""The versioned ShapesEval prompt suite: prompts with the structured spec the detector checks.

Categories follow GenEval: `single_object` (the named shape, once), `two_object` (both named
shapes, once each), `counting` (exactly N of a shape), `colors` (the named colour on the named
shape, some on named backgrounds), `position` (a grid cell or a relation between two objects),
`color_attr` (two objects each with its own colour: binding) and `held_out` (the colour-shape
pairs training never sees). The suite is generated from a fixed seed; changing it means a new
SUITE_VERSION.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from t2i.data.captions import RELATION_WORDS, background_phrase, object_phrase
from t2i.data.scene import (COLOR_NAMES, DEFAULT_HELD_OUT, POSITIONS, SHAPES, SIZES, Obj, Scene,
                            grid_position, place, relation, sample_radius)

SUITE_VERSION = "shapeseval-v1"
SUITE_SEED = 20240401
PROMPTS_PER_CATEGORY = 24
CATEGORIES: tuple[str, ...] = (
    "single_object", "two_object", "counting", "colors", "position", "color_attr", "held_out",
)


@dataclass(frozen=True)
class Want:
    """A prompt asks for `count` objects of `shape` (of `color` when the spec checks colours)."""

    color: str | None
    shape: str
    count: int = 1
    position: str | None = None

    def to_dict(self) -> dict:
        return {"color": self.color, "shape": self.shape, "count": self.count, "position": self.position}

    @classmethod
    def from_dict(cls, d: dict) -> "Want":
        return cls(d["color"], d["shape"], int(d.get("count", 1)), d.get("position"))


@dataclass(frozen=True)
class Spec:
    """One suite prompt and what an image must show to pass it."""

    category: str
    prompt: str
    objects: tuple[Want, ...]
    check_colors: bool = True
    relation: tuple[int, str, int] | None = None  # (index of A in objects, "left of" | ..., index of B)
    background: str | None = None

    def to_dict(self) -> dict:
        return {"category": self.category, "prompt": self.prompt, "objects": [w.to_dict() for w in self.objects],
                "check_colors": self.check_colors, "relation": list(self.relation) if self.relation else None,
                "background": self.background}

    @classmethod
    def from_dict(cls, d: dict) -> "Spec":
        rel = d.get("relation")
        return cls(d["category"], d["prompt"], tuple(Want.from_dict(w) for w in d["objects"]),
                   bool(d.get("check_colors", True)), (int(rel[0]), rel[1], int(rel[2])) if rel else None,
                   d.get("background"))


def _matches(want: Want, objects, check_colors: bool) -> list:
    return [o for o in objects if o.shape == want.shape and (not check_colors or want.color is None
                                                              or o.color == want.color)]


def passes(spec: Spec, background: str, objects) -> bool:
    """True when objects (anything with shape, color, center) on background show what spec asks."""
    for want in spec.objects:
        asked = sum(w.count for w in spec.objects if w.shape == want.shape)
        if sum(o.shape == want.shape for o in objects) != asked:  # no more of a named shape than asked
            return False
        found = _matches(want, objects, spec.check_colors)
        if len(found) != want.count:
            return False
        if want.position and any(grid_position(*o.center) != want.position for o in found):
            return False
    if spec.relation is not None:
        i, rel, j = spec.relation
        a, b = _matches(spec.objects[i], objects, spec.check_colors), _matches(spec.objects[j], objects, spec.check_colors)
        if len(a) != 1 or len(b) != 1 or relation(a[0].center, b[0].center) != rel:
            return False
    return spec.background is None or background == spec.background


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _kind(rng: np.random.Generator, allowed: list[tuple[str, str]], shapes_not=()) -> tuple[str, str]:
    return _pick(rng, [k for k in allowed if k[1] not in shapes_not])


def _category(name: str, rng: np.random.Generator, n: int, taken: set[str]) -> list[Spec]:
    """n specs of one category whose prompts are not in taken (which grows)."""
    allowed = [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in DEFAULT_HELD_OUT]
    held = sorted(DEFAULT_HELD_OUT)
    out: dict[str, Spec] = {}
    k = 0
    while len(out) < n:
        k += 1
        if name == "single_object":
            c, s = _kind(rng, allowed)
            spec = Spec(name, object_phrase(c, s), (Want(c, s),), check_colors=False)
        elif name == "two_object":
            c1, s1 = _kind(rng, allowed)
            c2, s2 = _kind(rng, allowed, (s1,))
            spec = Spec(name, f"{object_phrase(c1, s1)} and {object_phrase(c2, s2)}",
                        (Want(c1, s1), Want(c2, s2)), check_colors=False)
        elif name == "counting":
            c, s = _kind(rng, allowed)
            count = int(rng.integers(2, 5))
            c = c if k % 2 else None
            spec = Spec(name, object_phrase(c, s, count), (Want(c, s, count),))
        elif name == "colors":
            c, s = _kind(rng, allowed)
            form = k % 3
            if form == 0:
                spec = Spec(name, object_phrase(c, s), (Want(c, s),))
            elif form == 1:
                spec = Spec(name, f"a {s} that is {c}", (Want(c, s),))
            else:
                bg = _pick(rng, ["black", "gray"])
                spec = Spec(name, f"{object_phrase(c, s)} {background_phrase(bg)}", (Want(c, s),), background=bg)
        elif name == "position":
            c1, s1 = _kind(rng, allowed)
            if k % 2:
                pos = _pick(rng, list(POSITIONS))
                spec = Spec(name, object_phrase(c1, s1, position=pos), (Want(c1, s1, position=pos),))
            else:
                c2, s2 = _kind(rng, allowed, (s1,))
                rel = _pick(rng, list(RELATION_WORDS))
                spec = Spec(name, f"{object_phrase(c1, s1)} {RELATION_WORDS[rel]} {object_phrase(c2, s2)}",
                            (Want(c1, s1), Want(c2, s2)), relation=(0, rel, 1))
        elif name == "color_attr":
            c1, s1 = _kind(rng, allowed)
            c2, s2 = _pick(rng, [(c, s) for c, s in allowed if s != s1 and c != c1])
            spec = Spec(name, f"{object_phrase(c1, s1)} and {object_phrase(c2, s2)}", (Want(c1, s1), Want(c2, s2)))
        elif name == "held_out":
            c, s = held[k % len(held)]
            form = (k // len(held)) % 6
            if form == 0:
                spec = Spec(name, object_phrase(c, s), (Want(c, s),))
            elif form == 1:
                size = _pick(rng, list(SIZES))
                spec = Spec(name, object_phrase(c, s, size=size), (Want(c, s),))
            elif form == 2:
                bg = _pick(rng, ["black", "gray"])
                spec = Spec(name, f"{object_phrase(c, s)} {background_phrase(bg)}", (Want(c, s),), background=bg)
            elif form == 3:
                spec = Spec(name, object_phrase(c, s, 2), (Want(c, s, 2),))
            elif form == 4:
                c2, s2 = _kind(rng, allowed, (s,))
                spec = Spec(name, f"{object_phrase(c, s)} and {object_phrase(c2, s2)}", (Want(c, s), Want(c2, s2)))
            else:
                pos = _pick(rng, list(POSITIONS))
                spec = Spec(name, object_phrase(c, s, position=pos), (Want(c, s, position=pos),))
        else:
            raise ValueError(f"unknown ShapesEval category {name!r}")
        if spec.prompt not in taken:
            taken.add(spec.prompt)
            out[spec.prompt] = spec
    return list(out.values())


@lru_cache(maxsize=1)
def build_suite() -> tuple[Spec, ...]:
    """The fixed prompt suite of SUITE_VERSION, category by category."""
    rng = np.random.default_rng(SUITE_SEED)
    taken: set[str] = set()
    return tuple(spec for name in CATEGORIES for spec in _category(name, rng, PROMPTS_PER_CATEGORY, taken))


def _robust(spec: Spec, scene: Scene) -> bool:
    """Ground truth that a small centroid error cannot flip: positions and relations with margin."""
    for o in scene.objects if any(w.position for w in spec.objects) else ():
        fx, fy = (o.x * 3) % 1, (o.y * 3) % 1
        if min(fx, 1 - fx, fy, 1 - fy) < 0.06:
            return False
    if spec.relation is not None:
        a, b = scene.objects[0], scene.objects[1]
        dx, dy = abs(b.x - a.x), abs(b.y - a.y)
        if max(dx, dy) < 0.2 or max(dx, dy) < 1.3 * min(dx, dy):
            return False
    return True


def spec_scene(spec: Spec, rng: np.random.Generator) -> Scene:
    """A random scene that satisfies spec exactly (the ground truth for --real)."""
    allowed_colors = COLOR_NAMES
    for _ in range(1000):
        placed: list[Obj] = []
        for want in spec.objects:
            for _ in range(want.count):
                color = want.color or _pick(rng, [c for c in allowed_colors if (c, want.shape) not in DEFAULT_HELD_OUT])
                size = _pick(rng, list(SIZES))
                r = sample_radius(rng, size)
                region = (0.0, 0.0, 1.0, 1.0)
                if want.position:
                    i = POSITIONS.index(want.position)
                    col, row = i % 3, i // 3
                    region = (col / 3, row / 3, (col + 1) / 3, (row + 1) / 3)
                xy = place(rng, r, placed, region=region)
                if xy is None:
                    break
                placed.append(Obj(want.shape, color, size, r, xy[0], xy[1]))
        scene = Scene(tuple(placed), spec.background or "white")
        if len(placed) == sum(w.count for w in spec.objects) and passes(spec, scene.background, placed) \
                and _robust(spec, scene):
            return scene
    raise RuntimeError(f"could not place a scene for prompt {spec.prompt!r}")
