"""The autoencoder stage: trains LDM's KL first stage on images with its own loss (Rombach et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from t2i.train.config import RecipeError, TableConfig, bad
from t2i.train.registry import STAGES
from t2i.train.rng import SampleRNG
from t2i.train.stages.base import first_examples, image_grid


@dataclass(frozen=True)
class AutoencoderOptions(TableConfig):
    """[autoencoder]: the network's AutoencoderConfig fields (`net`) and the loss."""

    net: dict = field(default_factory=dict)  # AutoencoderConfig fields (t2i/nn/autoencoder.py)
    kl_weight: float = 1e-6
    reconstruction: str = "l1"  # l1 | l2
    num_samples: int = 8  # images reconstructed in each sample grid
    init_logvar: float = -8.0  # the posterior's log-variance at initialisation (start_narrow); 0: off

    def check(self) -> None:
        if self.kl_weight < 0:
            raise bad("kl_weight", self.kl_weight, "must be >= 0")
        if self.reconstruction not in ("l1", "l2"):
            raise bad("reconstruction", self.reconstruction, "must be l1 or l2")
        if self.num_samples < 1:
            raise bad("num_samples", self.num_samples, "must be at least 1")


def build_autoencoder(net: dict[str, Any]) -> nn.Module:
    """An AutoencoderKL from the `net` table; bad fields name the table."""
    from t2i.nn.autoencoder import AutoencoderConfig, AutoencoderKL

    try:
        return AutoencoderKL(AutoencoderConfig.from_dict(dict(net)))
    except (TypeError, ValueError) as e:
        raise RecipeError(f"[autoencoder.net]: {e}") from None


def start_narrow(ae: nn.Module, logvar: float) -> None:
    """Start the posterior narrow: the layer that emits the moments (quant_conv, else the encoder's conv_out)
    gives every latent the log-variance `logvar` and means as before (its logvar rows: zero weight, bias
    logvar). Until commit 9cd04e7 this was applied to conv_out even before a quant_conv, which mixed it into
    the means instead; the shipped ShapesWorld autoencoder (t2i/weights/ldm) was trained that way."""
    if logvar == 0:
        return
    conv = ae.quant_conv if ae.quant_conv is not None else ae.encoder.conv_out
    lat = conv.out_channels // 2  # moments are (mean, logvar) along channels
    with torch.no_grad():
        conv.weight[lat:].zero_()
        conv.bias[lat:].fill_(logvar)


@STAGES.register("autoencoder")
class AutoencoderStage:
    """Image -> latent posterior -> image, trained with reconstruction + KL."""

    Options = AutoencoderOptions

    def __init__(self, options: AutoencoderOptions, examples: torch.Tensor, seed: int, device: torch.device):
        self.options, self.device, self.seed = options, device, seed
        self.model = nn.ModuleDict({"autoencoder": build_autoencoder(options.net)}).to(device)
        start_narrow(self.model["autoencoder"], options.init_logvar)
        self.examples = examples

    @classmethod
    def build(cls, recipe: Any, dataset: Any, device: torch.device,
              resume_from: Path | None = None) -> "AutoencoderStage":
        examples, _ = first_examples(dataset, recipe.options.num_samples)
        return cls(recipe.options, examples, recipe.train.seed, device)

    def loss(self, batch: dict[str, Any], rng: SampleRNG) -> tuple[torch.Tensor, dict[str, float]]:
        from t2i.nn.autoencoder import autoencoder_loss

        x = batch["image"].to(self.device)  # (B, 3, H, W)
        g = rng.batch_generator()
        return autoencoder_loss(self.model["autoencoder"], x, self.options.kl_weight,
                                reconstruction=self.options.reconstruction, generator=g)

    @torch.no_grad()
    def sample_grid(self, generator: torch.Generator) -> Image.Image:
        """Top row: inputs; bottom row: reconstructions (posterior mode)."""
        ae = self.model["autoencoder"]
        x = self.examples.to(self.device)
        recon = ae.decode(ae.encode(x).mode()).clamp(-1, 1)
        return image_grid(torch.cat([x, recon]).float().cpu(), columns=len(x))

    def extras(self) -> dict[str, bytes]:
        return {}
