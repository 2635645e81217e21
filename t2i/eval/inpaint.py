"""InpaintEval: inpainting checked by the ShapesWorld detector (the edits of GLIDE, Nichol et al. 2022, sec. 4).

Each case is a ShapesWorld scene with one object removed, a mask over the box where it stood and a
prompt naming a new object for that box ("a red circle"). An inpainted image passes when the
detector finds an object of the asked colour and shape centred inside the box; the kept region is
judged by how much its pixels moved (mean absolute change outside the mask, in 1/255 units).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from t2i.data.render import render
from t2i.data.scene import DEFAULT_HELD_OUT, Obj, Scene, allowed_kinds, sample_scene
from t2i.eval.detector import EVAL_SIZE, detect

BOX_SCALE = 1.4  # the mask box's half side, in object radii: room for the new shape at any size it picks
# (image, mask (white = repaint), prompt, seed) -> the inpainted image, the image's size
InpaintFn = Callable[[Image.Image, Image.Image, str, int], Image.Image]


@dataclass(frozen=True)
class InpaintCase:
    """A scene with a hole to fill: the image without the object, the mask box and what to draw there."""

    scene: Scene  # the scene as it should look afterwards, the new object last
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) fractions of the side; white in the mask
    size: int = EVAL_SIZE

    @property
    def target(self) -> Obj:
        return self.scene.objects[-1]

    @property
    def prompt(self) -> str:
        article = "an" if self.target.color[0] in "aeiou" else "a"
        return f"{article} {self.target.color} {self.target.shape}"

    @property
    def image(self) -> Image.Image:
        """The scene without the target: what the inpainter is given."""
        return render(Scene(self.scene.objects[:-1], self.scene.background), self.size)

    @property
    def mask(self) -> Image.Image:
        mask = Image.new("L", (self.size, self.size), 0)
        x0, y0, x1, y1 = (round(v * self.size) for v in self.box)
        ImageDraw.Draw(mask).rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
        return mask

    def solved(self) -> Image.Image:
        """The scene with the target drawn: a perfect inpainting."""
        return render(self.scene, self.size)


def _box(o: Obj) -> tuple[float, float, float, float]:
    h = BOX_SCALE * o.r
    return (max(0.0, o.x - h), max(0.0, o.y - h), min(1.0, o.x + h), min(1.0, o.y + h))


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def inpaint_cases(n: int, seed: int = 0, size: int = EVAL_SIZE) -> list[InpaintCase]:
    """n cases, the same for the same seed: the target is a random scene's first object, re-coloured and
    re-shaped to a random pair that is not held out; the box holds no other object."""
    rng = np.random.default_rng([seed, 0x1A])
    kinds = allowed_kinds(DEFAULT_HELD_OUT)
    cases: list[InpaintCase] = []
    while len(cases) < n:
        scene = sample_scene(rng)
        first, rest = scene.objects[0], scene.objects[1:]
        color, shape = kinds[int(rng.integers(len(kinds)))]
        target = Obj(shape, color, first.size, first.r, first.x, first.y)
        box = _box(target)
        if any(_overlaps(box, o.bbox()) for o in rest):
            continue
        cases.append(InpaintCase(Scene(rest + (target,), scene.background), box, size))
    return cases


def score_case(case: InpaintCase, result: Image.Image) -> dict:
    """Whether the asked object is in the box, and the mean absolute change outside the mask (0-255)."""
    if result.size != (case.size, case.size):
        raise ValueError(f"the inpainted image is {result.size[0]}x{result.size[1]} px, not {case.size}x{case.size}")
    x0, y0, x1, y1 = case.box
    _, found = detect(result, case.size)
    passed = any(d.color == case.target.color and d.shape == case.target.shape and x0 <= d.x <= x1 and y0 <= d.y <= y1
                 for d in found)
    keep = np.asarray(case.mask) < 128  # (H, W)
    change = np.abs(np.asarray(result.convert("RGB"), np.float32) - np.asarray(case.image, np.float32))  # (H, W, 3)
    return {"prompt": case.prompt, "passed": bool(passed), "outside_change": float(change[keep].mean()),
            "found": [f"{d.color} {d.shape}" for d in found]}


def evaluate_inpaint(inpaint_fn: InpaintFn, n: int = 48, seed: int = 0, size: int = EVAL_SIZE,
                     progress: bool = True) -> dict:
    """Run inpaint_fn on n cases (case i with seed + i) and score them: region accuracy, the mean and
    worst outside-the-mask change (in 1/255), and each case."""
    if n < 1:
        raise ValueError(f"the number of cases must be at least 1, got {n}")
    rows = []
    for i, case in enumerate(tqdm(inpaint_cases(n, seed, size), desc="inpainting", disable=not progress)):
        rows.append(score_case(case, inpaint_fn(case.image, case.mask, case.prompt, seed + i)))
    changes = [r["outside_change"] for r in rows]
    return {"suite": "inpaint-v1", "cases": n, "region_accuracy": sum(r["passed"] for r in rows) / n,
            "outside_change_mean": float(np.mean(changes)), "outside_change_max": float(np.max(changes)),
            "rows": rows}
