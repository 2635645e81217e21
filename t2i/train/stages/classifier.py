"""The classifier stage: GLIDE's noise-aware classifier (Nichol et al. 2021, sec. 2.3; ADM, Dhariwal & Nichol 2021).

Images are noised as the diffusion stage noises them: sigma drawn per sample by
`DiscreteDenoiser.sample_training_sigmas` (timesteps uniform over the named schedule), x = x0 + sigma eps,
fed to the network as x / sqrt(sigma^2 + 1) with t = sigma_to_t(sigma) (`TimestepNet`). Targets are the
(colour, shape) pairs of each image (t2i/encoders/labels.py), read from the batch's captions, which name every
object (pairs of a colour-less "three stars" caption are masked out); the loss is masked BCE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from t2i.train.config import RecipeError, TableConfig, bad
from t2i.train.registry import STAGES
from t2i.train.rng import SampleRNG
from t2i.train.stages.base import first_examples, image_grid
from t2i.train.stages.noising import check_schedule, noised


@dataclass(frozen=True)
class ClassifierOptions(TableConfig):
    """[classifier]: the ClassifierConfig fields (`net`), the noise schedule, and the sample grid size."""

    net: dict = field(default_factory=dict)  # ClassifierConfig fields (t2i/nn/classifier.py) but num_labels
    schedule: str = "cosine"  # linear | scaled_linear | cosine: that of the diffusion model it will guide
    timesteps: int = 1000
    num_samples: int = 8  # images in the sample grid

    def check(self) -> None:
        check_schedule(self.schedule, self.timesteps)
        if self.num_samples < 1:
            raise bad("num_samples", self.num_samples, "must be at least 1")
        if "num_labels" in self.net:
            raise bad("net.num_labels", self.net["num_labels"], "is set by the label space (40 colour-shape pairs)")


def build_classifier(options: ClassifierOptions) -> nn.Module:
    """A NoisyClassifier over the 40 ShapesWorld (colour, shape) pairs; bad fields name the table."""
    from t2i.encoders.labels import NUM_LABELS
    from t2i.nn.classifier import ClassifierConfig, NoisyClassifier

    try:
        return NoisyClassifier(ClassifierConfig.from_dict({**options.net, "num_labels": NUM_LABELS}))
    except (TypeError, ValueError) as e:
        raise RecipeError(f"[classifier.net]: {e}") from None


def caption_targets(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 40) multi-hot targets and (B, 40) bool known-mask from a batch's captions."""
    from t2i.encoders.labels import labels_from_caption

    y, known = zip(*(labels_from_caption(c) for c in captions))
    return torch.stack(y), torch.stack(known)


@STAGES.register("classifier")
class ClassifierStage:
    """Multi-label BCE on noised images; logs loss, per-label accuracy and exact-match rate."""

    Options = ClassifierOptions

    def __init__(self, options: ClassifierOptions, examples: torch.Tensor, captions: list[str], device: torch.device):
        from t2i.diffusion import DiscreteDenoiser, DiscreteSchedule, TimestepNet

        self.options, self.device = options, device
        self.model = nn.ModuleDict({"classifier": build_classifier(options)}).to(device)
        side = self.model["classifier"].config.image_size
        if examples.shape[-1] != side or examples.shape[-2] != side:
            raise RecipeError(f"[classifier.net] image_size = {side} does not fit the data "
                              f"(images of shape {tuple(examples.shape[1:])})")
        self.examples, self.captions = examples, captions
        self.schedule = DiscreteSchedule.named(options.schedule, n=options.timesteps)
        self.noisy = TimestepNet(self.model["classifier"], self.schedule)  # (x, sigma) -> logits
        self.noising = DiscreteDenoiser(self.model["classifier"], self.schedule)  # draws the training sigmas

    @classmethod
    def build(cls, recipe: Any, dataset: Any, device: torch.device,
              resume_from: Path | None = None) -> "ClassifierStage":
        examples, captions = first_examples(dataset, recipe.options.num_samples)
        return cls(recipe.options, examples, captions, device)

    def logits(self, x0: torch.Tensor, rng: SampleRNG | None) -> torch.Tensor:
        """Logits (B, 40) of x0 + sigma eps with per-sample sigma and eps from rng (of clean x0 without rng)."""
        if rng is None:
            return self.noisy(x0, torch.zeros(len(x0), dtype=torch.float64))
        return self.noisy(*noised(x0, self.noising, rng))  # VE form, as the diffusion loss

    def loss(self, batch: dict[str, Any], rng: SampleRNG) -> tuple[torch.Tensor, dict[str, float]]:
        y, known = (t.to(self.device) for t in caption_targets(batch["caption"]))  # (B, 40) each
        logits = self.logits(batch["image"].to(self.device), rng)  # (B, 40)
        w = known.to(logits.dtype)
        loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).sum() / w.sum()
        right = ((logits.detach() > 0) == (y > 0)) | ~known  # (B, 40)
        return loss, {"loss": float(loss.detach()), "accuracy": float(right[known].float().mean()),
                      "exact": float(right.all(-1).float().mean())}

    @torch.no_grad()
    def sample_grid(self, generator: torch.Generator) -> Image.Image:
        """One row per example (clean): the image, its predicted pair probabilities and its caption's targets,
        each as an 8 x 5 map (rows = colours, columns = shapes; white = 1, gray = unknown)."""
        from t2i.data.scene import COLOR_NAMES, SHAPES

        x = self.examples.to(self.device)  # (N, 3, h, w)
        h = x.shape[-1]
        y, known = caption_targets(self.captions)
        maps = torch.stack([torch.sigmoid(self.logits(x, None)).float().cpu(), torch.where(known, y, 0.5)], 1)
        maps = maps.reshape(-1, 2, len(COLOR_NAMES), len(SHAPES)) * 2 - 1  # (N, 2, 8, 5) in [-1, 1]
        maps = F.interpolate(maps, size=(h, h), mode="nearest")  # (N, 2, h, h)
        rows = torch.cat([x.float().cpu(), maps[:, :1].expand(-1, 3, -1, -1), maps[:, 1:].expand(-1, 3, -1, -1)], -1)
        return image_grid(rows, columns=1)  # (N rows of 3 h x h tiles)

    def extras(self) -> dict[str, bytes]:
        return {}
