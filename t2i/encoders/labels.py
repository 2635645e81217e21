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
from typing import Any

import torch

from t2i.encoders.shapes_words import COLOR_NAMES, PLURALS, SHAPES

PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOR_NAMES for s in SHAPES)  # the 40 labels, colour-major
PAIR_INDEX: dict[tuple[str, str], int] = {p: i for i, p in enumerate(PAIRS)}
NUM_LABELS = len(PAIRS)
SHAPE_WORDS: dict[str, str] = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}  # word or plural -> shape


def labels_from_metadata(meta: dict[str, Any]) -> torch.Tensor:
    """(40,) float multi-hot of the (colour, shape) pairs in a ShapesWorld sample's scene."""
    y = torch.zeros(NUM_LABELS)
    for o in meta["scene"]["objects"]:
        y[PAIR_INDEX[(o["color"], o["shape"])]] = 1.0
    return y


def mentions(prompt: str) -> list[tuple[str | None, str]]:
    """(colour or None, shape) of each object phrase, in order: "a circle that is red" -> [("red", "circle")]."""
    words = re.findall(r"[a-z]+", prompt.lower())
    out: list[tuple[str | None, str]] = []
    pending: str | None = None
    for i, w in enumerate(words):
        if w in SHAPE_WORDS:
            out.append((pending, SHAPE_WORDS[w]))
            pending = None
        elif w in COLOR_NAMES:
            if words[max(0, i - 2):i] == ["that", "is"] and out and out[-1][0] is None:
                out[-1] = (w, out[-1][1])  # "a star that is brown"
            else:
                pending = w
    return out


def labels_from_prompt(prompt: str) -> torch.Tensor:
    """(G, 40) bool any-of groups, one per mentioned object: the named pair, or every colour of a colour-less shape."""
    groups = []
    for color, shape in dict.fromkeys(mentions(prompt)):
        g = torch.zeros(NUM_LABELS, dtype=torch.bool)
        for c in [color] if color is not None else COLOR_NAMES:
            g[PAIR_INDEX[(c, shape)]] = True
        groups.append(g)
    return torch.stack(groups) if groups else torch.zeros(0, NUM_LABELS, dtype=torch.bool)


def labels_from_prompts(prompts: list[str]) -> torch.Tensor:
    """(B, G, 40) bool groups of a batch of prompts, padded with empty groups (which constrain nothing)."""
    each = [labels_from_prompt(p) for p in prompts]
    out = torch.zeros(len(each), max([len(g) for g in each], default=0), NUM_LABELS, dtype=torch.bool)
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
    y, known = torch.zeros(NUM_LABELS), torch.ones(NUM_LABELS, dtype=torch.bool)
    for color, shape in mentions(caption):
        if color is None:
            known[[PAIR_INDEX[(c, shape)] for c in COLOR_NAMES]] = False
        else:
            y[PAIR_INDEX[(color, shape)]] = 1.0
    return y, known | (y > 0)
