"""ControlEval: does a ControlNet put the objects where its control map says? Held-out ShapesWorld scenes are
rendered, annotated (`t2i.data.annotate`, as a user would), and generated from with their first caption (the
one that names every object's colour and shape: a map tells where, not which colour; "four triangles" would
leave the colours to chance); the
detector (t2i.eval.detector) matches each scene object to a generated one of the same colour and shape whose
centre lies within CENTER_TOL of the side, and scores its box IoU. An image passes when every object is
matched with IoU >= MIN_BOX_IOU. The base LDM without control is the reference row (it sees the caption only).
"""

from __future__ import annotations

from typing import Callable

from PIL import Image

from t2i.data.annotate import annotate
from t2i.data.render import render
from t2i.data.shapes import ShapesWorld
from t2i.eval.detector import detect

CENTER_TOL = 0.08  # of the side
MIN_BOX_IOU = 0.5
SEED = 777  # the held-out scenes' world (training recipes use other seeds)

# generate_fn(caption, control map or None, kind, seed) -> image
GenerateFn = Callable[[str, "Image.Image | None", str, int], Image.Image]


def _box(x: float, y: float, r: float) -> tuple[float, float, float, float]:
    return (x - r, y - r, x + r, y + r)


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score_image(scene, image: Image.Image) -> dict:
    """Per scene object: found (same colour and shape, centre within CENTER_TOL) and its best box IoU."""
    _, found = detect(image)
    placed, ious = 0, []
    for o in scene.objects:
        best = 0.0
        for d in found:
            near = abs(d.x - o.x) <= CENTER_TOL and abs(d.y - o.y) <= CENTER_TOL
            if near and d.color == o.color and d.shape == o.shape:
                best = max(best, box_iou(_box(o.x, o.y, o.r), _box(d.x, d.y, d.r)))
        ious.append(best)
        placed += best >= MIN_BOX_IOU
    return {"objects": len(scene.objects), "placed": placed, "mean_iou": sum(ious) / len(ious),
            "pass": placed == len(scene.objects)}


def evaluate_control(generate_fn: GenerateFn, kinds: tuple[str, ...], n: int = 32, seed: int = SEED,
                     reference: bool = True) -> dict:
    """{kind: {placed_images, placed_objects, mean_iou}} for each kind, plus 'base (no control)' when
    `reference` (generate_fn called with control None)."""
    world = ShapesWorld(size=64, seed=seed)
    rows = {}
    for kind in (*kinds, *(["base (no control)"] if reference else [])):
        scores = []
        for i in range(n):
            scene, captions, _ = world.scene_and_captions(i)
            caption = captions[0]  # the 'objects' kind: every object's colour and shape (the map says where)
            control = None if kind == "base (no control)" else annotate(render(scene, 64), kind, seed=i)
            scores.append(score_image(scene, generate_fn(caption, control, kind, i)))
        objects = sum(s["objects"] for s in scores)
        rows[kind] = {"placed_images": sum(s["pass"] for s in scores) / n,
                      "placed_objects": sum(s["placed"] for s in scores) / objects,
                      "mean_iou": sum(s["mean_iou"] for s in scores) / n, "n": n}
    return rows


def system_generator(system, steps: int | None = None, guidance: float | None = None) -> GenerateFn:
    """A ControlNet system as a GenerateFn: the caption, the control (None: the base alone) and the seed."""
    options = {"steps": steps, "guidance": guidance, "progress": False}

    def generate_fn(caption: str, control, kind: str, seed: int) -> Image.Image:
        extra = {} if control is None else {"control": control, "control_type": kind}
        return system.generate(caption, seed=seed, **options, **extra)[0]
    return generate_fn


def truth_generator(seed: int = SEED) -> GenerateFn:
    """The ceiling: the scene's own render, whatever the control (should score ~1.0)."""
    world = ShapesWorld(size=64, seed=seed)
    return lambda caption, control, kind, i: render(world.scene(i), 64)


def format_report(rows: dict) -> str:
    lines = [f"{'kind':<20} {'images placed':>14} {'objects placed':>15} {'mean box IoU':>13}"]
    for kind, r in rows.items():
        lines.append(f"{kind:<20} {r['placed_images']:>14.3f} {r['placed_objects']:>15.3f} {r['mean_iou']:>13.3f}")
    return "\n".join(lines)
