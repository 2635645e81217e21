"""Caption measures for Versatile Diffusion's text flows (Xu et al. 2023): the text VAE's exact-match
reconstruction of held-out captions, and a parser that checks a caption names every object of a scene by
colour and shape (the ShapesWorld grammar, ../shared/SHAPESWORLD.md)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from PIL import Image

from t2i.encoders.shapes_words import COLOR_NAMES, NUMBER_WORDS, PLURALS, SHAPES
from t2i.encoders.tokenizer import split_words

HELD_OUT_SEED = 1_000  # a world no recipe trains on (training worlds use seed 0)
_SINGULAR = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
_COUNTS = {w: n for n, w in NUMBER_WORDS.items()}


def held_out_captions(n: int, seed: int = HELD_OUT_SEED) -> list[str]:
    """The picked captions of the first n scenes of ShapesWorld world `seed` (no images rendered)."""
    from t2i.data.shapes import ShapesWorld

    world = ShapesWorld(size=16, seed=seed, length=n)
    return [world.scene_and_captions(i)[2] for i in range(n)]


@torch.no_grad()
def reconstruction_accuracy(vae: Any, tokenizer: Any, captions: list[str], batch_size: int = 64) -> float:
    """Fraction of captions the text VAE gives back word for word: posterior mean, greedy decoding (Optimus)."""
    hits = 0
    for i in range(0, len(captions), batch_size):
        chunk = captions[i:i + batch_size]
        ids, mask = tokenizer.encode(chunk, vae.config.max_length)
        device = next(vae.parameters()).device
        out = vae.generate(vae.encode(ids.to(device), mask.to(device)).mean)  # (B, max_length)
        hits += sum(tokenizer.decode(o.cpu()) == " ".join(split_words(c)) for c, o in zip(chunk, out))
    return hits / max(len(captions), 1)


def named_objects(caption: str) -> list[tuple[int, str | None, str]]:
    """(count, colour or None, shape) of every object phrase: 'two red circles' (colour before the shape, a size
    word allowed before it) and 'a circle that is red'."""
    words = split_words(caption)
    out = []
    for i, w in enumerate(words):
        if w not in _SINGULAR:
            continue
        color = words[i - 1] if i > 0 and words[i - 1] in COLOR_NAMES else None
        after = words[i + 1:i + 4]
        if color is None and after[:2] == ["that", "is"] and len(after) == 3 and after[2] in COLOR_NAMES:
            color = after[2]
        lead = [words[j] for j in range(max(i - 3, 0), i) if words[j] in _COUNTS]
        out.append((_COUNTS[lead[-1]] if lead else 1, color, _SINGULAR[w]))
    return out


def names_every_object(caption: str, objects: Iterable[dict]) -> bool:
    """True when the caption names exactly the scene's (colour, shape) kinds, each with its colour (no extra kinds,
    none colourless); objects are scene object dicts (shape, color, ...)."""
    named = named_objects(caption)
    return all(c is not None for _, c, _ in named) and {(c, s) for _, c, s in named} == {
        (o["color"], o["shape"]) for o in objects}


def caption_score(caption_image: Callable[[Image.Image], str], n: int, seed: int = HELD_OUT_SEED,
                  size: int = 64) -> float:
    """Fraction of the first n scenes of world `seed`, rendered at `size` px, whose caption (caption_image(image))
    names every object's colour and shape (the [vd] image -> text measure, `t2i eval caption`)."""
    from t2i.data.render import render
    from t2i.data.shapes import ShapesWorld

    world = ShapesWorld(size=size, seed=seed, length=n)
    hits = 0
    for i in range(n):
        scene = world.scene(i)
        hits += names_every_object(caption_image(render(scene, size)), scene.to_dict()["objects"])
    return hits / n


def truth_captioner(seed: int = HELD_OUT_SEED) -> Callable[[Image.Image], str]:
    """The scenes' own first caption ('objects' kind), in scene order (the measure's ceiling)."""
    from t2i.data.shapes import ShapesWorld

    world, count = ShapesWorld(size=16, seed=seed), iter(range(10**9))
    return lambda image: world.scene_and_captions(next(count))[1][0]


def system_captioner(system: Any, seed: int = 0, steps: int | None = None,
                     guidance: float | None = None) -> Callable[[Image.Image], str]:
    """One caption of an image from a system's image -> text flow (`system.caption(image, 1)`)."""
    return lambda image: system.caption(image, 1, seed=seed, steps=steps, guidance=guidance)[0]
