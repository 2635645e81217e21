"""ShapesWorld: the contract of ../shared/SHAPESWORLD.md, determinism, captions, control maps, dataset API."""

import math

import numpy as np
import pytest
import torch

from t2i.data import DEFAULT_HELD_OUT, Scene, ShapesWorld, collate
from t2i.data.captions import NUMBER_WORDS, PLURALS
from t2i.data.control import CONTROL_KINDS, control_map
from t2i.data.render import object_ids, render
from t2i.data.scene import (BACKGROUNDS, COLOR_NAMES, COLORS, MARGIN, SIZES, grid_position, relation,
                            shape_polygon)


def test_same_sample_everywhere_and_seeds_differ():
    a, b = ShapesWorld(size=32, seed=3), ShapesWorld(size=32, seed=3)
    for i in (0, 7, 123):
        xa, ca, ma = a[i]
        xb, cb, mb = b[i]
        assert torch.equal(xa, xb) and ca == cb and ma == mb
    other = ShapesWorld(size=32, seed=4)
    assert any(not torch.equal(a[i][0], other[i][0]) for i in range(5))
    # the order of access does not matter
    assert a[5][2] == ShapesWorld(size=32, seed=3)[5][2]


def test_scenes_obey_the_contract():
    ds = ShapesWorld(size=64, seed=11)
    n_objects = set()
    backgrounds = set()
    for i in range(400):
        scene = ds.scene(i)
        backgrounds.add(scene.background)
        n_objects.add(len(scene.objects))
        for o in scene.objects:
            assert (o.color, o.shape) not in DEFAULT_HELD_OUT
            assert abs(o.r - SIZES[o.size]) <= 0.01 + 1e-9
            assert MARGIN <= o.x - o.r and o.x + o.r <= 1 - MARGIN
            assert MARGIN <= o.y - o.r and o.y + o.r <= 1 - MARGIN
        for j, a in enumerate(scene.objects):
            for b in scene.objects[j + 1:]:
                assert math.hypot(a.x - b.x, a.y - b.y) >= a.r + b.r + MARGIN - 1e-9
    assert n_objects == {1, 2, 3, 4}
    assert backgrounds == set(BACKGROUNDS)


def test_held_out_can_be_switched_off():
    ds = ShapesWorld(size=32, seed=0, held_out=frozenset())
    pairs = {(o.color, o.shape) for i in range(600) for o in ds.scene(i).objects}
    assert pairs & DEFAULT_HELD_OUT


def test_image_tensor_range_shape_and_sizes():
    for size in (16, 32, 128):
        x, caption, meta = ShapesWorld(size=size, seed=1)[0]
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert -1.0 <= x.min() and x.max() <= 1.0
        assert meta["size"] == size
    with pytest.raises(ValueError, match="16"):
        ShapesWorld(size=8)


def test_pixels_carry_the_palette_and_background():
    ds = ShapesWorld(size=64, seed=5)
    for i in range(30):
        scene = ds.scene(i)
        img = np.asarray(render(scene, 64)).astype(int)
        assert tuple(img[0, 0]) == BACKGROUNDS[scene.background]
        for o in scene.objects:
            cx, cy = int(o.x * 64), int(o.y * 64)
            # the centre of every shape is filled (the star's inner radius 0.45 r > 2 px here)
            assert np.abs(img[cy, cx] - np.array(COLORS[o.color])).max() <= 2, (i, o)


def test_shape_geometry():
    r = 1.0
    tri = np.array(shape_polygon("triangle", 0, 0, r))
    assert np.allclose(np.hypot(tri[:, 0], tri[:, 1]), r)  # vertices on the circle
    assert np.allclose(tri[0], (0, -r))  # apex straight up (y grows downward)
    star = np.array(shape_polygon("star", 0, 0, r))
    radii = np.hypot(star[:, 0], star[:, 1])
    assert np.allclose(radii[::2], r) and np.allclose(radii[1::2], 0.45 * r)
    cross = np.array(shape_polygon("cross", 0, 0, r))
    assert np.isclose(np.abs(cross).max(), r / math.sqrt(2))
    assert np.isclose(np.abs(cross[0, 0]), 0.4 * r / math.sqrt(2))
    sq = np.array(shape_polygon("square", 0, 0, r))
    assert np.allclose(np.abs(sq), r / math.sqrt(2))


def test_positions_and_relations():
    assert grid_position(0.1, 0.1) == "top left"
    assert grid_position(0.5, 0.5) == "center"
    assert grid_position(0.9, 0.5) == "right"
    assert grid_position(0.5, 0.95) == "bottom"
    assert relation((0.2, 0.5), (0.5, 0.55)) == "left of"
    assert relation((0.5, 0.55), (0.2, 0.5)) == "right of"
    assert relation((0.5, 0.2), (0.52, 0.6)) == "above"
    assert relation((0.5, 0.6), (0.52, 0.2)) == "below"
    assert relation((0.5, 0.5), (0.6, 0.52)) is None  # closer than 0.15


def _mentioned(caption: str, color: str, shape: str) -> bool:
    return f"{color} {shape}" in caption or f"{color} {PLURALS[shape]}" in caption or \
        f"{shape} that is {color}" in caption


def test_captions_are_true_and_varied():
    ds = ShapesWorld(size=32, seed=2)
    n_distinct = []
    for i in range(300):
        _, caption, meta = ds[i]
        scene = Scene.from_dict(meta["scene"])
        assert caption in meta["captions"]
        n_distinct.append(len(meta["captions"]))
        for cap in meta["captions"]:
            shapes_only = len({o.shape for o in scene.objects}) == 1 and len(scene.objects) > 1
            for o in scene.objects:
                colourless = f"{NUMBER_WORDS[len(scene.objects)]} {PLURALS[o.shape]}" == cap.split(" on a ")[0]
                assert _mentioned(cap, o.color, o.shape) or (shapes_only and colourless), (cap, meta["scene"])
            for c in COLOR_NAMES:  # no colour that is not in the image
                if f" {c} " in f" {cap} " and not any(o.color == c for o in scene.objects):
                    pytest.fail(f"{cap!r} names {c} which is not in the image")
            if scene.background != "white":
                assert cap.endswith(f"on a {scene.background} background")
    assert np.mean(n_distinct) >= 2.5


def test_relation_and_position_captions_hold():
    ds = ShapesWorld(size=32, seed=9)
    seen = 0
    for i in range(400):
        meta = ds[i][2]
        scene = Scene.from_dict(meta["scene"])
        for cap in meta["captions"]:
            if " to the left of " in cap:
                a, b = scene.objects
                first = cap.split(" to the left of ")[0]
                left, right = (a, b) if _mentioned(first, a.color, a.shape) else (b, a)
                assert relation(left.center, right.center) == "left of"
                seen += 1
    assert seen > 5


def test_meta_is_json_and_bboxes_contain_pixels():
    import json

    ds = ShapesWorld(size=64, seed=4)
    for i in range(20):
        _, _, meta = ds[i]
        json.dumps(meta)
        scene = ds.scene(i)
        ids = object_ids(scene, 64)
        for k, o in enumerate(meta["scene"]["objects"], start=1):
            ys, xs = np.nonzero(ids == k)
            x0, y0, x1, y1 = o["bbox"]
            assert xs.min() >= x0 * 64 - 1 and xs.max() <= x1 * 64 + 1
            assert ys.min() >= y0 * 64 - 1 and ys.max() <= y1 * 64 + 1


def test_control_maps_agree_with_the_scene():
    ds = ShapesWorld(size=64, seed=6)
    scene = ds.scene(0)
    for kind in CONTROL_KINDS:
        assert control_map(scene, kind, 64).size == (64, 64)
    ids = object_ids(scene, 64)
    seg = np.asarray(control_map(scene, "segmentation", 64))
    for k, o in enumerate(scene.objects, start=1):
        assert set(np.unique(seg[ids == k])) == {1 + COLOR_NAMES.index(o.color)}
    assert (seg[ids == 0] == 0).all()
    edges = np.asarray(control_map(scene, "edges", 64))
    assert set(np.unique(edges)) <= {0, 255} and (edges[ids == 0] == 0).all()
    assert 0 < (edges > 0).sum() < (ids > 0).sum()  # outlines only
    depth = np.asarray(control_map(scene, "depth", 64)).astype(int)
    by_r = sorted(scene.objects, key=lambda o: o.r)
    values = [depth[ids == 1 + scene.objects.index(o)].max() for o in by_r]
    assert values == sorted(values) and values[0] > 0 and (depth[ids == 0] == 0).all()
    assert np.asarray(control_map(scene, "scribble", 64)).max() > 200
    with pytest.raises(ValueError, match="unknown control"):
        control_map(scene, "normals", 64)


def test_control_in_meta_and_collate():
    ds = ShapesWorld(size=32, seed=0, length=6, control="edges")
    batch = [ds[i] for i in range(len(ds))]
    images, captions, metas = collate(batch)
    assert images.shape == (6, 3, 32, 32) and len(captions) == 6 and len(metas) == 6
    assert metas[0]["control"].shape == (3, 32, 32) and 0 <= metas[0]["control"].min()
    with pytest.raises(IndexError):
        ds[6]


def test_fixed_split_and_infinite_stream():
    ds = ShapesWorld(size=16, seed=0, length=3)
    assert len(ds) == 3 and len(list(ds)) == 3
    inf = ShapesWorld(size=16, seed=0)
    with pytest.raises(TypeError):
        len(inf)
    it = inf.stream(start=2)
    assert next(it)[1] == ds[2][1]


def test_dataloader_workers_compatible():
    from torch.utils.data import DataLoader

    # worker processes rebuild nothing: a sample depends only on (seed, index), so batches drawn in two
    # workers equal the in-process ones, including the last, partial batch
    ds = ShapesWorld(size=16, seed=0, length=7)
    loader = DataLoader(ds, batch_size=3, collate_fn=collate, num_workers=2)
    batches = list(loader)
    expected = [collate([ds[i] for i in range(lo, min(lo + 3, len(ds)))]) for lo in range(0, len(ds), 3)]
    assert [len(b[1]) for b in batches] == [3, 3, 1]
    for (images, captions, metas), (images_in, captions_in, metas_in) in zip(batches, expected, strict=True):
        assert images.shape[1:] == (3, 16, 16) and torch.equal(images, images_in)
        assert captions == captions_in and metas == metas_in
    assert len({c for _, caps, _ in batches for c in caps}) > 1  # not one sample repeated


def _assert_same_json(actual, expected, where="meta"):
    """Equal structure and strings, floats equal to 1e-12 (a different libm may move the last bit)."""
    if isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=0, abs=1e-12), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for k in expected:
            _assert_same_json(actual[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_same_json(a, e, f"{where}[{i}]")
    else:
        assert type(actual) is type(expected) and actual == expected, where


# Golden values of ShapesWorld(size=64, seed=0), computed once from the implementation of
# ../shared/SHAPESWORLD.md at commit f5e7b3a. They pin the contract: a change to scene sampling, captions,
# the renderer or the RNG derivation shows up here. Do NOT update them to make this test pass: changing
# them means changing the contract in ../shared/SHAPESWORLD.md, which goes through an issue (trained
# models, ShapesEval suites and reference statistics all depend on these samples).
GOLDEN_SHAPESWORLD = {
    0: {
        "pixels_sha256": "459e86d94ed5e429b2cc05b742a04ff51d7a79c12021e410e76529891f4b14d8",
        "caption": "a small yellow circle and two large red squares on a black background",
        "meta": {
            "index": 0, "seed": 0, "size": 64,
            "caption": "a small yellow circle and two large red squares on a black background",
            "captions": ["a yellow circle and two red squares on a black background",
                         "a small yellow circle and two large red squares on a black background"],
            "scene": {"background": "black", "objects": [
                {"shape": "circle", "color": "yellow", "size": "small", "r": 0.08033055271057057,
                 "center": [0.7504090867068005, 0.8299315868724328], "position": "bottom right",
                 "bbox": [0.67007853399623, 0.7496010341618623, 0.8307396394173711, 0.9102621395830034]},
                {"shape": "square", "color": "red", "size": "large", "r": 0.18087249982930845,
                 "center": [0.20251082124953526, 0.7138188956119081], "position": "bottom left",
                 "bbox": [0.0746146500900686, 0.5859227244524414, 0.33040699240900195, 0.8417150667713749]},
                {"shape": "square", "color": "red", "size": "large", "r": 0.17351311241205117,
                 "center": [0.7226191550971242, 0.5254146406994851], "position": "right",
                 "bbox": [0.599926856685779, 0.40272234228813997, 0.8453114535084693, 0.6481069391108302]},
            ]},
        },
    },
    1: {
        "pixels_sha256": "e16958e4649965f4b4ef849dbbd00b0c72f0416eda18127663125d95e8021c11",
        "caption": "two blue stars, a pink triangle and a red cross on a gray background",
        "meta": {
            "index": 1, "seed": 0, "size": 64,
            "caption": "two blue stars, a pink triangle and a red cross on a gray background",
            "captions": ["two blue stars, a pink triangle and a red cross on a gray background",
                         "two small blue stars, a small pink triangle and a large red cross on a gray background"],
            "scene": {"background": "gray", "objects": [
                {"shape": "star", "color": "blue", "size": "small", "r": 0.09913027634950677,
                 "center": [0.1637797560451348, 0.2992060113285784], "position": "top left",
                 "bbox": [0.06950126076079705, 0.2000757349790716, 0.2580582513294726, 0.3794040895524143]},
                {"shape": "triangle", "color": "pink", "size": "small", "r": 0.094514461467223,
                 "center": [0.5915656607493562, 0.1176381075986876], "position": "top",
                 "bbox": [0.5097137360937357, 0.0231236461314646, 0.6734175854049768, 0.1648953383322991]},
                {"shape": "star", "color": "blue", "size": "small", "r": 0.09523404560156883,
                 "center": [0.8530394303220349, 0.2133941711092205], "position": "top right",
                 "bbox": [0.762466470679513, 0.11816012550765166, 0.9436123899645568, 0.2904401324439684]},
                {"shape": "cross", "color": "red", "size": "large", "r": 0.17066857749307474,
                 "center": [0.6251136958542727, 0.45912374000029343], "position": "center",
                 "bbox": [0.5044327873734578, 0.3384428315194785, 0.7457946043350876, 0.5798046484811084]},
            ]},
        },
    },
}


@pytest.mark.parametrize("index", sorted(GOLDEN_SHAPESWORLD))
def test_golden_samples_pin_the_contract(index):
    import hashlib

    from t2i.data.transforms import to_pil

    golden = GOLDEN_SHAPESWORLD[index]
    ds = ShapesWorld(size=64, seed=0)
    x, caption, meta = ds[index]
    pixels = np.asarray(render(ds.scene(index), 64))  # (64, 64, 3) uint8
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == golden["pixels_sha256"]
    assert np.array_equal(np.asarray(to_pil(x)), pixels)  # the dataset's tensor is exactly those pixels
    assert caption == golden["caption"]
    _assert_same_json(meta, golden["meta"])
