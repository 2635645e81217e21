"""What the trainer needs from a stage: its trainable modules, a loss on a batch, and samples to look at.

A stage kind is registered in `t2i.train.registry.STAGES` under the name recipes use; the class
carries `Options` (its recipe table, a TableConfig) and `build(recipe, dataset, device)`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from PIL import Image
from torch import nn

from t2i.io.images import image_grid  # noqa: F401  (re-exported: the one grid, t2i.io.images)
from t2i.train.rng import SampleRNG


class Stage(Protocol):
    """One trainable stage of a system (a diffusion model, an autoencoder, CLIP, ...)."""

    model: nn.ModuleDict  # every trainable module: optimised, averaged (EMA), checkpointed

    def loss(self, batch: dict[str, Any], rng: SampleRNG) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of a batch and logs (floats); all randomness per sample from `rng`."""
        ...

    def sample_grid(self, generator: torch.Generator) -> Image.Image:
        """A grid of samples (or reconstructions) from the current weights of `model`."""
        ...

    def extras(self) -> dict[str, bytes]:
        """Files saved beside the weights in every checkpoint (e.g. tokenizer.json)."""
        ...


def first_examples(dataset: Any, n: int) -> tuple[torch.Tensor, list[str]]:
    """The first n (image, caption) pairs of a dataset, batched: fixed material for sample grids."""
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    return torch.stack([it[0] for it in items]), [it[1] for it in items]
