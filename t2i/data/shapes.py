"""ShapesWorld: t2i's procedural, deterministic, captioned image world (../shared/SHAPESWORLD.md).

API the trainer consumes::

    ds = ShapesWorld(size=64, seed=0, length=10_000)   # fixed-size split; length=None is infinite
    image, caption, meta = ds[i]     # (3, H, W) float in [-1, 1]; str; dict of plain JSON types
    loader = DataLoader(ds, batch_size=32, shuffle=True, collate_fn=collate)
    for image, caption, meta in ShapesWorld(size=32).stream(): ...   # infinite stream

Sample i of seed s is the same scene, image, captions and metadata on every machine: its
random numbers come from ``np.random.default_rng([s, i])``. ``meta`` holds ``index``, ``seed``,
``size``, ``caption``, ``captions`` (every true caption of the image), ``scene`` (``background``
and ``objects``: shape, color, size word, radius r, center, bbox (x0, y0, x1, y1), grid position;
all as fractions of the side) and, when ``control=KIND`` is given, ``control``: that control map
as a float tensor (3, H, W) in [0, 1] (the one non-JSON value). ``ds.scene(i)`` gives the
:class:`Scene` for the renderer and control maps.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from t2i.data.captions import CAPTION_KINDS, pick_caption, scene_caption_kinds
from t2i.data.control import CONTROL_KINDS, control_map
from t2i.data.render import render
from t2i.data.scene import DEFAULT_HELD_OUT, MAX_OBJECTS, Scene, sample_scene
from t2i.data.transforms import collate, to_tensor

__all__ = ["ShapesWorld", "collate", "DEFAULT_HELD_OUT"]


class ShapesWorld(Dataset):
    """Deterministic ShapesWorld samples (image, caption, meta); infinite when length is None."""

    def __init__(self, size: int = 64, seed: int = 0, held_out: frozenset = DEFAULT_HELD_OUT,
                 length: int | None = None, max_objects: int = MAX_OBJECTS, control: str | None = None,
                 caption_weights: dict[str, float] | None = None, count_weights: tuple[float, ...] | None = None):
        if size < 16:
            raise ValueError(f"ShapesWorld images are at least 16 px, got size={size}")
        if not 1 <= max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects must be in 1..{MAX_OBJECTS}, got {max_objects}")
        if control is not None and control not in CONTROL_KINDS:
            raise ValueError(f"unknown control map {control!r}; choose from {', '.join(CONTROL_KINDS)}")
        self.size, self.seed, self.length = size, seed, length
        self.held_out = frozenset(held_out)
        self.max_objects = max_objects
        self.control = control
        unknown = sorted(set(caption_weights or {}) - set(CAPTION_KINDS))
        if unknown or any(not w >= 0 for w in (caption_weights or {}).values()):
            raise ValueError(f"caption_weights: kinds must be among {', '.join(CAPTION_KINDS)} and weights >= 0; "
                             f"got {dict(caption_weights or {})}")
        self.caption_weights = dict(caption_weights or {})  # caption kind -> weight; {}: uniform over captions
        if count_weights is not None and (len(count_weights) != max_objects or any(not w >= 0 for w in count_weights)
                                          or not sum(count_weights) > 0):
            raise ValueError(f"count_weights: {max_objects} weights >= 0 (for 1..{max_objects} objects), not all 0; "
                             f"got {count_weights}")
        self.count_weights = None if count_weights is None else tuple(float(w) for w in count_weights)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("this ShapesWorld is infinite (length=None): iterate it with .stream()")
        return self.length

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, i])

    def scene_and_captions(self, i: int) -> tuple[Scene, list[str], str]:
        """Sample i's scene, all its true captions, and the one caption picked for it."""
        if i < 0 or (self.length is not None and i >= self.length):
            raise IndexError(f"sample {i} out of range for a ShapesWorld of length {self.length}")
        rng = self._rng(i)
        scene = sample_scene(rng, self.held_out, self.max_objects, count_weights=self.count_weights)
        captions = scene_caption_kinds(scene, rng)
        return scene, list(captions), pick_caption(captions, rng, self.caption_weights)

    def scene(self, i: int) -> Scene:
        """Sample i's scene."""
        return self.scene_and_captions(i)[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, dict]:
        scene, captions, caption = self.scene_and_captions(int(i))
        meta = {"index": int(i), "seed": self.seed, "size": self.size, "caption": caption,
                "captions": captions, "scene": scene.to_dict()}
        if self.control is not None:
            hint = control_map(scene, self.control, self.size, seed=self.seed * 1_000_003 + int(i))
            meta["control"] = to_tensor(hint).add(1).div(2)  # (3, H, W) in [0, 1]
        return to_tensor(render(scene, self.size)), caption, meta

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str, dict]]:
        return self.stream()

    def stream(self, start: int = 0) -> Iterator[tuple[torch.Tensor, str, dict]]:
        """Samples start, start+1, ... (to the end of a fixed split, else forever)."""
        i = start
        while self.length is None or i < self.length:
            yield self[i]
            i += 1
