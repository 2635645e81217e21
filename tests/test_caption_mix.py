"""Caption kinds and the recipe's caption mix: weights per kind move the training caption distribution,
every caption stays true, and without weights the world is what it was."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from t2i.data.captions import CAPTION_KINDS, pick_caption, scene_caption_kinds, scene_captions
from t2i.data.scene import sample_scene
from t2i.data.shapes import ShapesWorld
from t2i.train import RecipeError, load_recipe


def _kinds(ds: ShapesWorld, n: int) -> collections.Counter:
    counts = collections.Counter()
    for i in range(n):
        rng = ds._rng(i)
        scene = sample_scene(rng, ds.held_out, ds.max_objects, count_weights=ds.count_weights)
        counts[scene_caption_kinds(scene, rng)[ds[i][1]]] += 1
    return counts


def test_every_caption_has_a_kind_and_the_list_is_unchanged():
    for i in range(200):
        scene = sample_scene(np.random.default_rng([0, i]))
        kinds = scene_caption_kinds(scene, np.random.default_rng([1, i]))
        assert list(kinds) == scene_captions(scene, np.random.default_rng([1, i]))
        assert set(kinds.values()) <= set(CAPTION_KINDS)
        rel = [c for c, k in kinds.items() if k == "relation"]
        assert all(any(w in c for w in ("left of", "right of", "above", "below")) for c in rel)


def test_weights_move_the_mix():
    plain, mixed = ShapesWorld(32), ShapesWorld(32, caption_weights={"relation": 20.0, "sized": 0.0},
                                               count_weights=(1.0, 3.0, 1.0, 1.0))
    a, b = _kinds(plain, 600), _kinds(mixed, 600)
    assert b["relation"] > 2 * a["relation"] and b["sized"] == 0 < a["sized"]
    assert ShapesWorld(32)[5][1] == plain[5][1]  # no weights: the same captions as ever


def test_zero_weights_fall_back_to_uniform_and_bad_weights_are_refused():
    captions = {"a red circle": "objects", "red circle": "short"}
    assert pick_caption(captions, np.random.default_rng(0), {"objects": 0.0, "short": 0.0}) in captions
    with pytest.raises(ValueError, match="caption_weights"):
        ShapesWorld(32, caption_weights={"poem": 1.0})
    with pytest.raises(RecipeError, match="caption_weights"):
        load_recipe("tiny_pixel", ["data.caption_weights={relation = -1.0}"])
    with pytest.raises(RecipeError, match="object_counts"):
        load_recipe("tiny_pixel", ["data.object_counts=[1.0, 2.0]"])
