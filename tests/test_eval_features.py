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
