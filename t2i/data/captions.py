"""The ShapesWorld caption grammar: several true captions per scene, every mentioned object named by colour and shape."""

from __future__ import annotations

import numpy as np

from t2i.data.scene import Obj, Scene, relation
from t2i.encoders.shapes_words import NUMBER_WORDS, PLURALS, RELATION_WORDS



def article(word: str) -> str:
    """'a' or 'an' before word."""
    return "an" if word[0] in "aeiou" else "a"


def position_phrase(position: str) -> str:
    """'in the top left', 'at the top', 'on the left', 'in the center', ..."""
    if position in ("top", "bottom"):
        return f"at the {position}"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"in the {position}"


def background_phrase(background: str) -> str:
    return f"on a {background} background"


def object_phrase(color: str | None, shape: str, count: int = 1, size: str | None = None,
                  position: str | None = None, word: str = "a") -> str:
    """'a large red circle in the top left', 'two green triangles', 'three stars'; word is 'a' or 'one' for count 1."""
    adjectives = [w for w in (size, color) if w]
    noun = shape if count == 1 else PLURALS[shape]
    head = " ".join(adjectives + [noun])
    if count == 1:
        lead = article(head) if word == "a" else "one"
    else:
        lead = NUMBER_WORDS[count]
    text = f"{lead} {head}"
    if position:
        text += " " + position_phrase(position)
    return text


def join_phrases(phrases: list[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def groups(scene: Scene) -> list[list[Obj]]:
    """Objects grouped by (colour, shape), in order of first appearance."""
    out: dict[tuple[str, str], list[Obj]] = {}
    for o in scene.objects:
        out.setdefault((o.color, o.shape), []).append(o)
    return list(out.values())


def _with_background(text: str, scene: Scene, rng: np.random.Generator) -> str:
    """Non-white backgrounds are always named; white is named now and then."""
    if scene.background != "white" or rng.random() < 0.2:
        return f"{text} {background_phrase(scene.background)}"
    return text


CAPTION_KINDS = ("objects", "sized", "positioned", "sized_positioned", "count", "short", "one", "that_is",
                 "relation")  # what `scene_caption_kinds` tags each caption with; recipes weight them


def scene_caption_kinds(scene: Scene, rng: np.random.Generator) -> dict[str, str]:
    """Several distinct true captions of the scene -> their kind (a key of CAPTION_KINDS), in a
    deterministic order for a given rng state:
    objects "a red circle and two blue stars"; sized "a large red circle ..."; positioned / sized_positioned
    "a red circle in the top left ..." (every object single); count "three stars" (one shape, no colour);
    short "red circle", one "one red circle", that_is "a circle that is red" (one object); relation
    "a red circle to the left of a blue star" (two objects of different kinds)."""
    gs = groups(scene)
    plain = [object_phrase(g[0].color, g[0].shape, len(g)) for g in gs]
    sized = [object_phrase(g[0].color, g[0].shape, len(g), g[0].size if len({o.size for o in g}) == 1 else None)
             for g in gs]
    caps = [(join_phrases(plain), "objects"), (join_phrases(sized), "sized")]
    if all(len(g) == 1 for g in gs):
        caps.append((join_phrases([object_phrase(g[0].color, g[0].shape, 1, position=g[0].position) for g in gs]),
                     "positioned"))
        caps.append((join_phrases([object_phrase(g[0].color, g[0].shape, 1, g[0].size, g[0].position) for g in gs]),
                     "sized_positioned"))
    shapes = {o.shape for o in scene.objects}
    if len(shapes) == 1 and len(scene.objects) > 1:  # "three stars": colour-less count of the only shape
        caps.append((object_phrase(None, scene.objects[0].shape, len(scene.objects)), "count"))
    if len(scene.objects) == 1:
        o = scene.objects[0]
        caps += [(f"{o.color} {o.shape}", "short"), (object_phrase(o.color, o.shape, word="one"), "one"),
                 (f"{article(o.shape)} {o.shape} that is {o.color}", "that_is")]
    if len(scene.objects) == 2:
        a, b = scene.objects
        rel = relation(a.center, b.center)
        if rel is not None and (a.color, a.shape) != (b.color, b.shape):
            back = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[rel]
            caps.append((f"{object_phrase(a.color, a.shape)} {RELATION_WORDS[rel]} {object_phrase(b.color, b.shape)}",
                         "relation"))
            caps.append((f"{object_phrase(b.color, b.shape)} {RELATION_WORDS[back]} {object_phrase(a.color, a.shape)}",
                         "relation"))
    seen: dict[str, str] = {}
    for c, kind in caps:
        seen.setdefault(_with_background(c, scene, rng), kind)
    return seen


def scene_captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Several distinct true captions of the scene, in a deterministic order for a given rng state."""
    return list(scene_caption_kinds(scene, rng))


def pick_caption(captions: dict[str, str], rng: np.random.Generator,
                 weights: dict[str, float] | None = None) -> str:
    """One caption of `scene_caption_kinds`: uniformly, or with probability proportional to its kind's
    weight (kinds not in `weights` weigh 1; a scene whose captions all weigh 0 falls back to uniform)."""
    names = list(captions)
    if not weights:
        return names[int(rng.integers(len(names)))]
    w = np.array([float(weights.get(k, 1.0)) for k in captions.values()])
    if w.sum() <= 0:
        w = np.ones(len(names))
    return names[int(rng.choice(len(names), p=w / w.sum()))]
