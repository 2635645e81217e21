"""ShapesWorld attribute labels, the conditioning of a noise-aware classifier: which (colour, shape) pairs an
image holds (training targets from captions) and which a prompt asks for (guidance targets).

The label space is the 40 (colour, shape) pairs, multi-label (one sigmoid each), because that is
what ShapesEval checks: a prompt passes when its named objects appear with their named colours,
so classifier guidance (Dhariwal & Nichol 2021; GLIDE, Nichol et al. 2021) for "a red circle and
a blue star" is the sum of log p(red circle present) and log p(blue star present). A colour-less
mention ("two circles") asks that *some* circle be present: an any-of group over the 8 circle
pairs, whose log-probability `t2i.diffusion.classifier_log_prob` takes under independent sigmoids.
Labels are presence only: counts, sizes, positions and relations are not in this space.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, NamedTuple

import torch


class Vocabulary(NamedTuple):
    colors: tuple[str, ...]  # ShapesWorld's colour names
    pairs: tuple[tuple[str, str], ...]  # the 40 labels: (colour, shape), colour-major
    index: dict[tuple[str, str], int]  # pair -> label
    shape_words: dict[str, str]  # shape word or plural -> shape


@lru_cache(maxsize=None)
def vocabulary() -> Vocabulary:
    """ShapesWorld's caption vocabulary as labels, imported when first needed (as `WordTokenizer.for_shapes`
    does): the caption grammar lives with the data, a floor above this one."""
    from t2i.data.captions import PLURALS
    from t2i.data.scene import COLOR_NAMES, SHAPES

    pairs = tuple((c, s) for c in COLOR_NAMES for s in SHAPES)
    return Vocabulary(COLOR_NAMES, pairs, {p: i for i, p in enumerate(pairs)},
                      {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}})


def __getattr__(name: str) -> Any:
    """The module constants PAIRS, PAIR_INDEX and NUM_LABELS (40), read from `vocabulary()`."""
    v = vocabulary()
    constants = {"PAIRS": v.pairs, "PAIR_INDEX": v.index, "NUM_LABELS": len(v.pairs)}
    if name not in constants:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return constants[name]


def labels_from_metadata(meta: dict[str, Any]) -> torch.Tensor:
    """(40,) float multi-hot of the (colour, shape) pairs in a ShapesWorld sample's scene."""
    v = vocabulary()
    y = torch.zeros(len(v.pairs))
    for o in meta["scene"]["objects"]:
        y[v.index[(o["color"], o["shape"])]] = 1.0
    return y


def mentions(prompt: str) -> list[tuple[str | None, str]]:
    """(colour or None, shape) of each object phrase, in order: "a circle that is red" -> [("red", "circle")]."""
    v = vocabulary()
    words = re.findall(r"[a-z]+", prompt.lower())
    out: list[tuple[str | None, str]] = []
    pending: str | None = None
    for i, w in enumerate(words):
        if w in v.shape_words:
            out.append((pending, v.shape_words[w]))
            pending = None
        elif w in v.colors:
            if words[max(0, i - 2):i] == ["that", "is"] and out and out[-1][0] is None:
                out[-1] = (w, out[-1][1])  # "a star that is brown"
            else:
                pending = w
    return out


def labels_from_prompt(prompt: str) -> torch.Tensor:
    """(G, 40) bool any-of groups, one per mentioned object: the named pair, or every colour of a colour-less shape."""
    v = vocabulary()
    groups = []
    for color, shape in dict.fromkeys(mentions(prompt)):
        g = torch.zeros(len(v.pairs), dtype=torch.bool)
        for c in [color] if color is not None else v.colors:
            g[v.index[(c, shape)]] = True
        groups.append(g)
    return torch.stack(groups) if groups else torch.zeros(0, len(v.pairs), dtype=torch.bool)


def labels_from_prompts(prompts: list[str]) -> torch.Tensor:
    """(B, G, 40) bool groups of a batch of prompts, padded with empty groups (which constrain nothing)."""
    each = [labels_from_prompt(p) for p in prompts]
    out = torch.zeros(len(each), max([len(g) for g in each], default=0), len(vocabulary().pairs), dtype=torch.bool)
    for i, g in enumerate(each):
        out[i, :len(g)] = g
    return out


def labels_from_caption(caption: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Training targets from a ShapesWorld caption: (40,) float multi-hot and (40,) bool "known" mask.

    Every caption of the grammar (t2i/data/captions.py) names every object of its image; the one
    form without colours ("three stars") is used only when all objects share that shape. So a named
    pair is present, an unnamed pair is absent, and the pairs of a colour-less shape are unknown
    (masked out of the loss). tests/test_glide_guidance.py checks this against the scene metadata.
    """
    v = vocabulary()
    y, known = torch.zeros(len(v.pairs)), torch.ones(len(v.pairs), dtype=torch.bool)
    for color, shape in mentions(caption):
        if color is None:
            known[[v.index[(c, shape)] for c in v.colors]] = False
        else:
            y[v.index[(color, shape)]] = 1.0
    return y, known | (y > 0)
