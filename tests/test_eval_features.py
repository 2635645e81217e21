"""Fréchet distance on the shipped ShapesWorld feature network."""

import numpy as np
import pytest
import torch
from PIL import ImageFilter

from t2i.eval.features import (FEATURES_VERSION, WEIGHTS, FeatureNet, fd, frechet_distance, image_features,
                               load_feature_net, save_feature_net, shapesworld_reference)


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # independent Gaussians: ||mu_a - mu_b||^2 + sum (s_a - s_b)^2
    b = rng.normal(size=(4000, 3)) * np.array([1.0, 2.0, 3.0]) + np.array([1.0, 0.0, 0.0])
    expected = 1.0 + 0.0 + 1.0 + 4.0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.1)


def test_frechet_distance_agrees_with_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_shipped_weights_are_small_versioned_and_load():
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 400_000
    net = load_feature_net()
    assert net.version == FEATURES_VERSION and not net.training
    assert image_features(torch.zeros(2, 3, 32, 32)).shape == (2, net.feature_dim)


def test_save_and_load_round_trip(tmp_path):
    net = FeatureNet()
    net.load_state_dict({k: v.half().float() for k, v in net.state_dict().items()})  # weights are stored in fp16
    save_feature_net(net, tmp_path / "f.safetensors")
    again = load_feature_net(str(tmp_path / "f.safetensors"))
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    assert torch.allclose(net.features(x), again.features(x))


def test_fd_is_small_between_real_sets_and_large_for_corrupted_ones():
    real = shapesworld_reference(400, seed=1)
    other = shapesworld_reference(400, seed=2)
    blurred = [im.filter(ImageFilter.GaussianBlur(1.5)) for im in other]
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.uniform(-1, 1, size=(400, 3, 64, 64)).astype(np.float32))
    same = fd(real, other)
    assert same < 0.25 * fd(real, blurred)
    assert same < 0.05 * fd(real, noise)


# features-v1 is frozen: FD scores are only comparable across releases while these hold. Computed once
# from the shipped file (added in commit fc40d30). A new feature network is a new version
# (features-v2, a new file and a new FEATURES_VERSION), never a silent replacement of this one.
FEATURES_V1_SHA256 = "a97ba978acf3083009337214a469e0864e1c67ab57a5bafc8dd4850bc1c46cba"
# features of the 64 px render of ShapesWorld(size=64, seed=0) sample 0, at these feature indices
GOLDEN_FEATURE_INDICES = [0, 1, 17, 63, 64, 100, 127]
GOLDEN_FEATURES = [0.10525604, 0.45565292, 0.78092295, -0.06341062, 1.10110092, 2.98744082, 1.56199908]
GOLDEN_FEATURE_SUM = 177.0339279


def test_shipped_weights_are_the_frozen_features_v1():
    import hashlib

    assert WEIGHTS.name == f"{FEATURES_VERSION}.safetensors" and FEATURES_VERSION == "features-v1"
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == FEATURES_V1_SHA256


def test_features_of_a_fixed_render_are_pinned():
    from t2i.data.render import render
    from t2i.data.shapes import ShapesWorld

    ds = ShapesWorld(size=64, seed=0)
    f = image_features([render(ds.scene(0), 64)])
    assert f.shape == (1, 128) and f.dtype == np.float64
    np.testing.assert_allclose(f[0, GOLDEN_FEATURE_INDICES], GOLDEN_FEATURES, rtol=0, atol=1e-4)
    assert f[0].sum() == pytest.approx(GOLDEN_FEATURE_SUM, abs=1e-3)  # all 128, not only the sampled ones
    # the tensor path (the dataset's [-1, 1] image) gives the same features as the PIL path
    np.testing.assert_allclose(image_features(ds[0][0][None]), f, rtol=0, atol=1e-6)
