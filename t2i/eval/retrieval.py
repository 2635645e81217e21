"""Zero-shot text -> image retrieval of a ShapesWorld CLIP on held-out scenes (Radford et al. 2021 sec. 3.1.2):
each caption picks the most similar of a group of candidate images; a hit is its own scene (or one captioned the
same). The [unclip] floor: top-1 among 100 candidates >= 0.8."""

from __future__ import annotations

from typing import Any

import torch

from t2i.eval.caption import HELD_OUT_SEED
from t2i.eval.flows import held_out_scenes
from t2i.io.images import image_to_tensor


@torch.no_grad()
def text_to_image_top1(clip: Any, candidates: int = 100, groups: int = 5, seed: int = HELD_OUT_SEED) -> dict:
    """Mean top-1 accuracy over `groups` groups of `candidates` held-out scenes, captions naming every object."""
    if candidates < 2 or groups < 1:
        raise ValueError(f"retrieval needs >= 2 candidates and >= 1 group (got {candidates}, {groups})")
    side = clip.config.tower.image_size
    scenes = held_out_scenes(candidates * groups, seed, size=side)
    hits = []
    for g in range(groups):
        chunk = scenes[g * candidates:(g + 1) * candidates]
        images = torch.cat([image_to_tensor(image) for image, _, _ in chunk])  # (N, 3, side, side) in [-1, 1]
        captions = [caption for _, caption, _ in chunk]
        best = (clip.encode_text(captions) @ clip.encode_image(images).t()).argmax(-1)  # (N,)
        hits += [captions[int(b)] == c for b, c in zip(best, captions)]
    return {"top1": sum(hits) / len(hits), "candidates": candidates, "groups": groups}
