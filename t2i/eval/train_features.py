"""Reproduce the shipped Fréchet feature network: `python -m t2i.eval.train_features [--out PATH]`.

Trains FeatureNet on CPU (a couple of minutes) to predict ShapesWorld attributes of every
colour-shape pair: colour and shape presence, per-shape counts, background.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from t2i.data.render import render
from t2i.data.scene import BACKGROUNDS, COLOR_NAMES, SHAPES, Scene, sample_scene
from t2i.data.transforms import to_tensor
from t2i.eval.features import (FEATURE_SIZE, N_BACKGROUNDS, N_COLORS, N_COUNTS, N_SHAPES, WEIGHTS, FeatureNet,
                               save_feature_net)


def scene_labels(scene: Scene) -> np.ndarray:
    """Colour presence (8), shape presence (5), background index (1), count of each shape (5)."""
    colors = np.zeros(N_COLORS, np.float32)
    counts = np.zeros(N_SHAPES, np.float32)
    for o in scene.objects:
        colors[COLOR_NAMES.index(o.color)] = 1
        counts[SHAPES.index(o.shape)] += 1
    bg = np.array([list(BACKGROUNDS).index(scene.background)], np.float32)
    return np.concatenate([colors, (counts > 0).astype(np.float32), bg, counts])


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 64, 64) renders of every colour-shape pair and their (n, 19) labels."""
    xs, ys = [], []
    for i in tqdm(range(n), desc="rendering"):
        scene = sample_scene(np.random.default_rng([seed, i]), held_out=frozenset())
        xs.append(to_tensor(render(scene, FEATURE_SIZE)))
        ys.append(scene_labels(scene))
    return torch.stack(xs), torch.from_numpy(np.stack(ys))


def attribute_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE on presence, CE on background and on each shape's count."""
    b, c = N_COLORS + N_SHAPES, N_COLORS + N_SHAPES + N_BACKGROUNDS
    presence = nn.functional.binary_cross_entropy_with_logits(logits[:, :b], labels[:, :b])
    background = nn.functional.cross_entropy(logits[:, b:c], labels[:, b].long())
    count_logits = logits[:, c:].reshape(-1, N_SHAPES, N_COUNTS)  # (B, 5, 5)
    counts = nn.functional.cross_entropy(count_logits.reshape(-1, N_COUNTS), labels[:, b + 1:].reshape(-1).long())
    return presence + background + counts


def accuracy(net: FeatureNet, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Held-out accuracy of each attribute group."""
    b, c = N_COLORS + N_SHAPES, N_COLORS + N_SHAPES + N_BACKGROUNDS
    with torch.no_grad():
        logits = torch.cat([net(x[i:i + 512]) for i in range(0, len(x), 512)])
    presence = ((logits[:, :b] > 0).float() == y[:, :b]).float().mean().item()
    background = (logits[:, b:c].argmax(1) == y[:, b].long()).float().mean().item()
    counts = (logits[:, c:].reshape(-1, N_SHAPES, N_COUNTS).argmax(2) == y[:, b + 1:].long()).float().mean().item()
    return {"presence": presence, "background": background, "counts": counts}


def train(n_train: int = 6000, n_val: int = 1000, epochs: int = 4, batch_size: int = 64, lr: float = 3e-3,
          seed: int = 0) -> tuple[FeatureNet, dict[str, float]]:
    """Train a FeatureNet from scratch; returns it and its validation accuracies."""
    torch.manual_seed(seed)
    x, y = make_data(n_train, seed)
    xv, yv = make_data(n_val, seed + 1)
    net = FeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (n_train // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="training")
    for _ in range(epochs):
        perm = torch.randperm(n_train, generator=gen)
        for k in range(n_train // batch_size):
            idx = perm[k * batch_size:(k + 1) * batch_size]
            loss = attribute_loss(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    net.eval()
    return net, accuracy(net, xv, yv)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=str(WEIGHTS))
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t = time.time()
    net, acc = train(args.n_train, epochs=args.epochs, seed=args.seed)
    save_feature_net(net, args.out)
    print(f"saved {args.out} in {time.time() - t:.0f}s; validation accuracy {acc}")


if __name__ == "__main__":
    main()
