"""Measures of the variation flows, scored by the analytic detector and the caption parser: image variations keep
the source's objects (unCLIP sec. 3.1, Versatile Diffusion sec. 4), text variations keep the caption's objects,
and dual guidance moves the objects from the image's to the prompt's as mix goes 0 -> 1 (VD sec. 3.3)."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
from PIL import Image
from tqdm import tqdm

from t2i.eval.caption import HELD_OUT_SEED, named_objects
from t2i.eval.detector import EVAL_SIZE, detect

Kinds = frozenset  # of (colour, shape)
# (image, seed) -> variations; (caption, seed) -> text variations; (prompt, image, mix, seed) -> image
VaryFn = Callable[[Image.Image, int], list[Image.Image]]
VaryTextFn = Callable[[str, int], list[str]]
MixFn = Callable[[str, Image.Image, float, int], Image.Image]


def detected_kinds(image: Image.Image, size: int = EVAL_SIZE) -> Kinds:
    """The (colour, shape) kinds the detector finds in an image (objects of unknown shape left out)."""
    return frozenset((d.color, d.shape) for d in detect(image, size)[1] if d.shape != "unknown")


def caption_kinds(caption: str) -> Kinds | None:
    """The (colour, shape) kinds a caption names, or None when some object is named without its colour."""
    named = named_objects(caption)
    if any(c is None for _, c, _ in named):
        return None
    return frozenset((c, s) for _, c, s in named)


def held_out_scenes(n: int, seed: int = HELD_OUT_SEED, size: int = EVAL_SIZE) -> list[tuple[Image.Image, str, Kinds]]:
    """(image, caption naming every object, object kinds) of the first n scenes of a world no recipe trains on."""
    from t2i.data.render import render
    from t2i.data.shapes import ShapesWorld

    world = ShapesWorld(size=size, seed=seed, length=n)
    out = []
    for i in range(n):
        scene, captions, _ = world.scene_and_captions(i)
        caption = captions[0]  # the 'objects' kind: names every object with its colour
        out.append((render(scene, size), caption, frozenset((o.color, o.shape) for o in scene.objects)))
    return out


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"the number of cases must be at least 1, got {n}")


def variation_score(vary: VaryFn, n: int = 50, per_source: int = 2, seed: int = HELD_OUT_SEED,
                    progress: bool = True) -> dict:
    """Fraction of variations whose detected (colour, shape) kinds are exactly the source's, and the mean absolute
    pixel change from the source (0-255: how much the layout moved), over n held-out scenes, per_source each."""
    _check_n(n)
    kept, change, rows = [], [], []
    for i, (image, caption, kinds) in enumerate(tqdm(held_out_scenes(n, seed), desc="variations",
                                                     disable=not progress)):
        outs = vary(image, i)[:per_source]
        for out in outs:
            found = detected_kinds(out)
            kept.append(found == kinds)
            change.append(float(np.abs(np.asarray(out.convert("RGB").resize(image.size), np.float32)
                                       - np.asarray(image, np.float32)).mean()))
        rows.append({"caption": caption, "found": [sorted(detected_kinds(o)) for o in outs]})
    return {"kept": float(np.mean(kept)), "pixel_change": float(np.mean(change)), "n": n, "per_source": per_source,
            "cases": rows}


def text_variation_score(vary_text: VaryTextFn, n: int = 100, seed: int = HELD_OUT_SEED,
                         progress: bool = True) -> dict:
    """Fraction of text variations naming exactly the held-out caption's (colour, shape) kinds, each with its colour,
    and the fraction worded differently from the caption."""
    _check_n(n)
    kept, reworded, rows = [], [], []
    for i, (_, caption, kinds) in enumerate(tqdm(held_out_scenes(n, seed, size=16), desc="text variations",
                                                 disable=not progress)):
        out = vary_text(caption, i)[0]
        kept.append(caption_kinds(out) == kinds)
        reworded.append(out.strip().lower() != caption.strip().lower())
        rows.append({"caption": caption, "variation": out, "kept": kept[-1]})
    return {"kept": float(np.mean(kept)), "reworded": float(np.mean(reworded)), "n": n, "cases": rows}


def mix_pairs(n: int, seed: int = HELD_OUT_SEED) -> list[tuple[Image.Image, Kinds, str, Kinds]]:
    """n (image, its kinds, prompt, its kinds) pairs from held-out scenes whose kinds share nothing."""
    scenes = held_out_scenes(4 * n + 8, seed)
    pairs = []
    for (image, _, a), (_, caption, b) in zip(scenes[0::2], scenes[1::2]):
        if not a & b:
            pairs.append((image, a, caption, b))
        if len(pairs) == n:
            return pairs
    raise ValueError(f"found only {len(pairs)} disjoint pairs; ask for fewer")


def mix_table(mix: MixFn, mixes: Iterable[float] = (0.0, 0.25, 0.5, 0.75, 1.0), n: int = 20,
              seed: int = HELD_OUT_SEED, progress: bool = True) -> list[dict]:
    """For each mix: the mean fraction of the image's kinds and of the prompt's kinds the detector finds in the
    dual-guided image (VD: the image's should fall and the prompt's rise as mix goes 0 -> 1)."""
    _check_n(n)
    pairs, rows = mix_pairs(n, seed), []
    for m in mixes:
        from_image, from_prompt = [], []
        for i, (image, a, prompt, b) in enumerate(tqdm(pairs, desc=f"mix {m:g}", disable=not progress)):
            found = detected_kinds(mix(prompt, image, m, i))
            from_image.append(len(found & a) / len(a))
            from_prompt.append(len(found & b) / len(b))
        rows.append({"mix": m, "image_objects": float(np.mean(from_image)),
                     "prompt_objects": float(np.mean(from_prompt)), "n": n})
    return rows


def format_mix_table(rows: list[dict]) -> str:
    """The mix table as markdown."""
    lines = ["| mix | image's objects found | prompt's objects found |", "|---|---|---|"]
    lines += [f"| {r['mix']:g} | {r['image_objects']:.2f} | {r['prompt_objects']:.2f} |" for r in rows]
    return "\n".join(lines)
