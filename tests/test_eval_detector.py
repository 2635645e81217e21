"""The analytic detector recovers ShapesWorld scenes: shape, colour, count, position, background."""

import numpy as np
from PIL import Image, ImageFilter

from t2i.data import ShapesWorld
from t2i.data.render import render
from t2i.data.scene import Obj, Scene
from t2i.eval.detector import detect, label_components, render_accuracy


def test_at_least_99_percent_right_on_clean_64px_renders():
    exact, objects = render_accuracy(64, 150, seed=2024)
    assert objects >= 0.99 and exact >= 0.99


def test_positions_sizes_and_background_are_recovered():
    ds = ShapesWorld(size=64, seed=77)
    for i in range(25):
        scene = ds.scene(i)
        background, dets = detect(render(scene, 64))
        assert background == scene.background
        for o in scene.objects:
            d = min(dets, key=lambda d: np.hypot(d.x - o.x, d.y - o.y))
            assert np.hypot(d.x - o.x, d.y - o.y) < 0.01  # under 2/3 of a pixel at 64 px
            assert abs(d.r - o.r) < 0.012 and d.size == o.size


def test_any_input_size_is_scored_at_64px():
    scene = Scene((Obj("star", "blue", "large", 0.18, 0.3, 0.3), Obj("cross", "pink", "medium", 0.13, 0.7, 0.7)))
    for size in (48, 200):
        _, dets = detect(render(scene, size))
        assert sorted((d.color, d.shape) for d in dets) == [("blue", "star"), ("pink", "cross")]


def test_mild_blur_and_noise():
    def blur(im, i):
        return im.filter(ImageFilter.GaussianBlur(0.5))

    def noise(im, i):
        a = np.asarray(im, np.float32) + np.random.default_rng(i).normal(0, 5, (64, 64, 3))
        return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))

    assert render_accuracy(64, 60, seed=5, corrupt=blur)[1] >= 0.97
    assert render_accuracy(64, 60, seed=6, corrupt=noise)[1] >= 0.97


def test_empty_and_shapeless_images():
    background, dets = detect(Image.new("RGB", (64, 64), (20, 20, 20)))
    assert background == "black" and dets == []
    im = Image.new("RGB", (64, 64), (245, 245, 245))
    im.paste((220, 40, 40), (4, 30, 60, 34))  # a long thin bar is no ShapesWorld shape
    _, dets = detect(im)
    assert len(dets) == 1 and dets[0].color == "red" and dets[0].shape == "unknown"


def test_connected_components():
    labels = np.array([[1, 1, 0, 2],
                       [0, 1, 0, 2],
                       [1, 0, 2, 2],
                       [1, 1, 0, 1]])
    comp = label_components(labels)
    assert comp[0, 0] == comp[1, 1] != comp[2, 0] == comp[3, 1]
    assert comp[0, 3] == comp[2, 2] and comp[3, 3] != comp[2, 2]
    assert len(np.unique(comp[labels > 0])) == 4
