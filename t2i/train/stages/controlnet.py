"""The ControlNet stage (Zhang et al. 2023): one ControlNet trained over a frozen LDM on ShapesWorld images and
their annotated control maps (`t2i.data.annotate`: what `t2i annotate` and `t2i eval control` give, so training
and use see the same maps). Only the ControlNet is in `model` (optimised, averaged, checkpointed); the base's
UNet, text encoder and autoencoder are frozen and never stored again. Captions are dropped to "" with
probability p_uncond (the paper replaces 50% of prompts by empty strings so the ControlNet learns to read
the map itself: guess mode, sec. 3.2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from t2i.data.annotate import ANNOTATORS, annotate
from t2i.io.images import image_grid, image_to_tensor, tensor_to_images
from t2i.train.config import RecipeError, TableConfig, bad
from t2i.train.registry import STAGES
from t2i.train.rng import SampleRNG
from t2i.train.stages.base import first_examples


@dataclass(frozen=True)
class ControlNetOptions(TableConfig):
    """[controlnet]: the frozen base, the control kind, the hint encoder, loss weighting, sampling."""

    base: str = "ldm"  # a shipped LDM's name or a t2i LDM folder
    control: str = "edges"  # edges | segmentation | scribble (t2i.data.annotate)
    hint_width: int = 16  # the hint encoder's first width, doubled at each stride-2 conv
    weighting: str = "min_snr"  # uniform | min_snr (the shipped LDM's own)
    gamma: float = 5.0
    p_uncond: float = 0.5
    sample_steps: int = 20
    guidance: float = 4.0
    num_samples: int = 8

    def check(self) -> None:
        if self.control not in ANNOTATORS:
            raise bad("control", self.control, f"must be one of {', '.join(ANNOTATORS)}")
        for key in ("hint_width", "sample_steps", "num_samples"):
            if getattr(self, key) < 1:
                raise bad(key, getattr(self, key), "must be at least 1")
        if not 0 <= self.p_uncond <= 1:
            raise bad("p_uncond", self.p_uncond, "must be in [0, 1]")
        if self.weighting not in ("uniform", "min_snr"):
            raise bad("weighting", self.weighting, "must be uniform or min_snr")


def control_maps(images: torch.Tensor, kind: str, seeds: list[int]) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> their annotated control maps (B, 3, H, W) in [0, 1]."""
    pils = tensor_to_images((images.detach().float().cpu() + 1) / 2)
    maps = [image_to_tensor(annotate(im, kind, seed)) for im, seed in zip(pils, seeds)]
    return (torch.cat(maps) + 1) / 2


@STAGES.register("controlnet")
class ControlNetStage:
    """Denoising loss of the frozen LDM steered by a trainable ControlNet; a grid of maps and samples."""

    Options = ControlNetOptions

    def __init__(self, options: ControlNetOptions, base: Any, examples: torch.Tensor, prompts: list[str],
                 device: torch.device):
        from t2i.diffusion import DiscreteDenoiser
        from t2i.nn.controlnet import ControlledUNet
        from t2i.systems.controlnet import ControlNetSystem

        self.options, self.device, self.prompts = options, device, prompts
        self.system = ControlNetSystem.over(base.to(device).eval(), (options.control,), options.hint_width,
                                            options.base)
        self.base = self.system.base  # frozen (requires_grad False), outside `model`
        self.model = torch.nn.ModuleDict({"controlnet": self.system.controlnets[options.control]})
        self.denoiser = DiscreteDenoiser(ControlledUNet(self.base.unet, [self.model["controlnet"]], [1.0]),
                                         self.base.schedule, self.base.config.prediction)
        self.examples = examples

    @classmethod
    def build(cls, recipe: Any, dataset: Any, device: torch.device, resume_from: Any = None) -> "ControlNetStage":
        from t2i.systems import LDM
        from t2i.systems.base import system_folder

        o = recipe.options
        folder = system_folder(o.base)
        if folder is None:
            raise RecipeError(f"[controlnet] base = '{o.base}': neither a t2i LDM folder nor a shipped system")
        try:
            base = LDM.load(folder)
        except ValueError as e:
            raise RecipeError(f"[controlnet] base = '{o.base}': {e}") from None
        examples, captions = first_examples(dataset, o.num_samples)
        return cls(o, base, examples, captions, device)

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        from t2i.encoders.registry import encode_prompts

        with torch.no_grad():
            return dict(encode_prompts(self.base.config.text, self.base.text_encoder, captions))

    def loss(self, batch: dict[str, Any], rng: SampleRNG) -> tuple[torch.Tensor, dict[str, float]]:
        from t2i.diffusion import diffusion_loss

        o = self.options
        keep = rng.rand() >= o.p_uncond  # (B,) bool: drop to "" otherwise
        captions = [c if k else "" for c, k in zip(batch["caption"], keep.tolist())]
        sigma = rng.each(lambda g: self.denoiser.sample_training_sigmas(1, g)).to(self.device)  # (B,)
        images = batch["image"].to(self.device)
        ae = self.base.autoencoder
        with torch.no_grad():
            post = ae.encode(images)
            x0 = ae.scale(post.mean + post.std * rng.randn(tuple(post.mean.shape[1:])).to(images))  # (B, 4, h, w)
        seeds = rng.each(lambda g: torch.randint(0, 2**31 - 1, (1,), generator=g)).view(-1).tolist()
        cond = {**self.encode_text(captions), "hints": control_maps(images, o.control, seeds)[:, None].to(images)}
        noise = rng.randn(tuple(x0.shape[1:])).to(self.device)
        loss = diffusion_loss(self.denoiser, x0, cond, weighting=o.weighting, gamma=o.gamma, sigma=sigma, noise=noise)
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def sample_grid(self, generator: torch.Generator) -> Image.Image:
        """Rows of (control map, sample from it and its caption) for the first examples."""
        o, seed = self.options, int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        maps = control_maps(self.examples, o.control, list(range(len(self.examples))))
        tiles = []
        for m, prompt in zip(maps, self.prompts):
            control = tensor_to_images(m[None])[0]
            x = self.system.sample(prompt, control=control, seed=seed, steps=o.sample_steps, guidance=o.guidance)
            tiles += [m * 2 - 1, x[0].to(m) * 2 - 1]
        return image_grid(torch.stack(tiles).float().cpu(), columns=2)

    def extras(self) -> dict[str, bytes]:
        config = {"base": self.options.base, "kind": self.options.control,
                  "controlnet": self.model["controlnet"].config.to_dict()}
        return {"prompts.json": json.dumps(self.prompts).encode(), "controlnet.json": json.dumps(config).encode()}
