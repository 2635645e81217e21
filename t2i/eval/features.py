"""Fréchet distance on ShapesWorld features: a small fixed CNN shipped with the package (FID, Heusel et al. 2017).

The network (`features-v1`) was trained once by `python -m t2i.eval.train_features` to predict
ShapesWorld attribute labels (which colours and shapes are present, how many of each shape,
the background) and is frozen, so scores stay comparable across releases. Features are the
64 channels of its last convolution, average- and max-pooled (128 numbers), on 64 px images.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from t2i.data.scene import BACKGROUNDS, COLOR_NAMES, MAX_OBJECTS, SHAPES
from t2i.data.transforms import center_crop_resize, to_tensor

FEATURES_VERSION = "features-v1"
WEIGHTS = Path(__file__).parent / "weights" / f"{FEATURES_VERSION}.safetensors"
FEATURE_SIZE = 64  # images are resized to this side before feature extraction

N_COLORS, N_SHAPES, N_BACKGROUNDS, N_COUNTS = len(COLOR_NAMES), len(SHAPES), len(BACKGROUNDS), MAX_OBJECTS + 1


@dataclass(frozen=True)
class FeatureNetConfig:
    """Widths and strides of the 3x3 convolutions."""

    channels: tuple[int, ...] = (16, 32, 64, 64, 64)
    strides: tuple[int, ...] = (1, 2, 2, 2, 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureNetConfig":
        return cls(tuple(d["channels"]), tuple(d["strides"]))


class FeatureNet(nn.Module):
    """Conv stack -> pooled features; a linear head predicts ShapesWorld attributes (training only)."""

    def __init__(self, config: FeatureNetConfig = FeatureNetConfig()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 3
        for c, stride in zip(config.channels, config.strides):
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c_in, N_COLORS + N_SHAPES + N_BACKGROUNDS + N_SHAPES * N_COUNTS)

    @property
    def feature_dim(self) -> int:
        return 2 * self.config.channels[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) in [-1, 1] -> (B, 2C) features: average- and max-pooled last convolution."""
        h = self.body(x)  # (B, C, h, w)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, 2C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, 8 + 5 + 3 + 5*5) attribute logits


def save_feature_net(net: FeatureNet, path: str | Path) -> None:
    """Weights as safetensors, with the config and version in the header."""
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in net.state_dict().items()}  # fp16 keeps the file small
    save_file(state, str(path), metadata={"version": FEATURES_VERSION, "config": json.dumps(net.config.to_dict())})


@lru_cache(maxsize=2)
def load_feature_net(path: str | None = None) -> FeatureNet:
    """The frozen shipped feature network (or the one at path), in eval mode."""
    from safetensors import safe_open

    path = Path(path) if path else WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: feature network weights missing; rebuild with "
                                "`python -m t2i.eval.train_features`")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    net = FeatureNet(FeatureNetConfig.from_dict(json.loads(meta["config"])))
    net.load_state_dict(state)
    net.version = meta.get("version", "unknown")
    return net.eval().requires_grad_(False)


def _batch(images) -> torch.Tensor:
    """PIL images or a (B, 3, H, W) tensor in [-1, 1] -> (B, 3, 64, 64) tensor in [-1, 1]."""
    if isinstance(images, torch.Tensor):
        x = images.float()
        if x.shape[-1] != FEATURE_SIZE or x.shape[-2] != FEATURE_SIZE:
            x = nn.functional.interpolate(x, size=(FEATURE_SIZE, FEATURE_SIZE), mode="area" if
                                          x.shape[-1] > FEATURE_SIZE else "bilinear", antialias=False)
        return x
    return torch.stack([to_tensor(center_crop_resize(im.convert("RGB"), FEATURE_SIZE)) for im in images])


@torch.no_grad()
def image_features(images, batch_size: int = 256, net: FeatureNet | None = None) -> np.ndarray:
    """(N, 128) float64 features of PIL images or a (N, 3, H, W) tensor in [-1, 1]."""
    net = net or load_feature_net()
    out = []
    for i in range(0, len(images), batch_size):
        out.append(net.features(_batch(images[i:i + batch_size])).double().numpy())
    return np.concatenate(out)


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix by eigendecomposition."""
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2) between two (N, D) feature sets."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least two images on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    sa = _sqrtm_psd(ca)
    cross = _sqrtm_psd(sa @ cb @ sa)  # same trace as sqrtm(C_a C_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(cross))


def fd(images_a, images_b) -> float:
    """Fréchet distance between two sets of images (PIL lists or (N, 3, H, W) tensors in [-1, 1])."""
    return frechet_distance(image_features(images_a), image_features(images_b))


def shapesworld_reference(n: int = 2000, seed: int = 1_000_003, size: int = FEATURE_SIZE) -> list[Image.Image]:
    """n real ShapesWorld renders (held-out pairs excluded, as in training) to compare generations with."""
    from t2i.data.render import render
    from t2i.data.shapes import ShapesWorld

    ds = ShapesWorld(size=size, seed=seed)
    return [render(ds.scene(i), size) for i in range(n)]
