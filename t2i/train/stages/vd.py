"""The vd stage: Versatile Diffusion's multi-flow network (Xu et al. 2023, sec. 3.2 and 4) trained on all four
flows at once: text -> image, image variation, image -> text and text variation. Every step computes each flow's
diffusion loss on the batch and sums them with the recipe's weights (the flows' gradients accumulated per
iteration, as VD trains its multi-flow model).

Frozen parts: the autoencoder, schedule and prediction of a t2i LDM (`init_from`, whose UNet also starts the
global and image data layers and both contexts' attention where shapes fit), the CLIP of a clip run (text and
image token contexts) and the text VAE of a text_vae run (text latents, scaled by 1 / std of its posterior means,
measured on the first captions)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from t2i.nn.multiflow import Flow, FlowNet
from t2i.train.config import RecipeError, TableConfig, bad
from t2i.train.registry import STAGES
from t2i.train.rng import SampleRNG
from t2i.train.stages.base import first_examples, image_grid

FLOWS = (Flow("image", "text"), Flow("image", "image"), Flow("text", "image"), Flow("text", "text"))


@dataclass(frozen=True)
class VDOptions(TableConfig):
    """[vd]: the LDM, CLIP and text VAE it builds on, the four flows' loss weights, caption/image dropout, samples."""

    init_from: str = "ldm"  # a t2i LDM folder or shipped system: autoencoder, schedule, prediction, starting UNet
    clip_run: str = ""  # a `t2i train` clip run (clean images): its EMA CLIP, frozen, gives both contexts
    text_vae_run: str = ""  # a `t2i train` text_vae run: its EMA text VAE, frozen, gives the text latents
    text_rows: int = 4  # rows S of the text flow's flat levels (diffusers' second_dim); its layers grow as S^2
    text_norm_groups: int = 0  # GroupNorm groups of the text data layers (0: the UNet's; few values per group at S=1)
    context_scale: float = 1.0  # contexts times this (VD's tokens / |pooled| are ~1/sqrt(E) wide; sqrt(E): unit)
    weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # text->image, variation, image->text, text variation
    weighting: str = "min_snr"  # the diffusion loss weighting (t2i.diffusion.WEIGHTINGS)
    gamma: float = 5.0
    p_uncond: float = 0.1  # contexts replaced by the empty caption's / a gray image's (classifier-free guidance)
    stats_examples: int = 256  # captions whose text-VAE means give the text latents' scale
    num_samples: int = 4  # captions and images in the sample grid
    sample_steps: int = 10

    def check(self) -> None:
        if len(self.weights) != len(FLOWS) or min(self.weights) < 0 or not sum(self.weights) > 0:
            raise bad("weights", list(self.weights), "must be 4 weights >= 0, not all 0 (text->image, variation, "
                                                      "image->text, text variation)")
        if not 0 <= self.p_uncond < 1:
            raise bad("p_uncond", self.p_uncond, "must be in [0, 1)")
        if not (self.clip_run and self.text_vae_run):
            raise bad("clip_run / text_vae_run", "", "must name a trained clip run and a text_vae run")
        if self.text_rows < 1 or self.text_norm_groups < 0 or not self.context_scale > 0:
            raise bad("text_rows / text_norm_groups / context_scale", (self.text_rows, self.text_norm_groups,
                                                                        self.context_scale), "must be >= 1, >= 0, > 0")
        if self.stats_examples < 2:
            raise bad("stats_examples", self.stats_examples, "must be at least 2 (a standard deviation)")
        if min(self.num_samples, self.sample_steps) < 1:
            raise bad("num_samples / sample_steps", 0, "must be at least 1")


def build_system(options: VDOptions, sample_size: int, text_scale: float = 1.0) -> Any:
    """A VD system from an LDM, a clip run and a text_vae run: frozen autoencoder, CLIP and text VAE; the network
    started from the LDM's UNet (the image data layers, the time embedding, attention where it fits)."""
    from t2i.nn.multiflow import MultiFlowConfig
    from t2i.systems.base import system_folder
    from t2i.systems.ldm import LDM
    from t2i.systems.vd import VersatileDiffusion
    from t2i.systems.vd_config import VDConfig
    from t2i.train.stages.prior import frozen_clip
    from t2i.train.stages.text_vae import frozen_text_vae

    folder = system_folder(options.init_from)
    if folder is None:
        raise RecipeError(f"[vd] init_from = '{options.init_from}': neither a t2i LDM folder nor a shipped system")
    ldm, clip = LDM.load(folder), frozen_clip(options.clip_run)
    text_vae, tokenizer = frozen_text_vae(options.text_vae_run)
    if tokenizer.vocab != clip.tokenizer.vocab:
        raise RecipeError("[vd] the text VAE's and the CLIP's tokenizers differ: train both on one vocabulary")
    c = ldm.config
    unet = dataclasses.replace(c.unet, context_dim=clip.config.embed_dim, pooled_dim=None)
    try:
        net = MultiFlowConfig(unet, text_vae.config.latent_dim, options.text_rows, options.text_norm_groups)
        config = VDConfig(net, c.autoencoder, clip.config, c.schedule, c.prediction, c.sampling, sample_size,
                          text_vae.config, text_scale, options.context_scale)
        system = VersatileDiffusion(config, clip)
    except ValueError as e:
        raise RecipeError(f"[vd]: {e}") from None
    system.autoencoder.load_state_dict(ldm.autoencoder.state_dict())
    system.text_vae.load_state_dict(text_vae.state_dict())
    system.net.init_from_unet(ldm.unet)
    for part in (system.autoencoder, system.text_vae, system.clip):
        part.eval().requires_grad_(False)
    return system


@STAGES.register("vd")
class VDStage:
    """The four flows' summed diffusion losses; the grid shows the first images, text -> image and variations."""

    Options = VDOptions

    def __init__(self, options: VDOptions, system: Any, examples: torch.Tensor, captions: list[str],
                 device: torch.device):
        from t2i.diffusion import DiscreteDenoiser

        self.options, self.device, self.examples, self.captions = options, device, examples, captions
        self.system = system.to(device)
        self.model = nn.ModuleDict({"net": system.net})
        c = system.config
        self.denoisers = [DiscreteDenoiser(FlowNet(system.net, f), system.schedule, c.prediction) for f in FLOWS]

    @classmethod
    def build(cls, recipe: Any, dataset: Any, device: torch.device, resume_from: Path | None = None) -> "VDStage":
        """From a recipe; the text latents' scale is measured on fresh runs and read back when resuming."""
        o = recipe.options
        system = build_system(o, recipe.data.size)
        saved = resume_from / "vd.json" if resume_from is not None else None
        if saved is not None and saved.is_file():
            scale = float(json.loads(saved.read_text())["text_scale"])
        else:
            scale = measure_text_scale(system, first_examples(dataset, o.stats_examples)[1])
        system.config = dataclasses.replace(system.config, text_scale=scale)
        return cls(o, system, *first_examples(dataset, o.num_samples), device)

    @torch.no_grad()
    def inputs(self, batch: dict[str, Any], rng: SampleRNG) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """({data modality: x0}, {context modality: context}) of a batch, contexts dropped per sample at p_uncond."""
        s, x = self.system, batch["image"].to(self.device)  # (B, 3, H, W) in [-1, 1]
        drop = (rng.rand() < self.options.p_uncond).to(self.device)  # (B,)
        text_ctx = s.text_context(["" if d else c for c, d in zip(batch["caption"], drop.tolist())])
        image_ctx = s.image_context(torch.where(drop[:, None, None, None], torch.zeros_like(x), x))  # gray: 0
        ids, mask = s.clip.tokenizer.encode(batch["caption"], s.config.text_vae.max_length)
        text = s.text_vae.encode(ids.to(self.device), mask.to(self.device)).mean * s.config.text_scale  # (B, D)
        image = s.autoencoder.scale(s.autoencoder.encode(x).mode())  # (B, C, h, w)
        return {"image": image, "text": text}, {"text": text_ctx, "image": image_ctx}

    def loss(self, batch: dict[str, Any], rng: SampleRNG) -> tuple[torch.Tensor, dict[str, float]]:
        from t2i.diffusion.losses import diffusion_loss

        data, contexts = self.inputs(batch, rng)
        total, logs = 0.0, {}
        for flow, den, w in zip(FLOWS, self.denoisers, self.options.weights):
            if w == 0:
                continue
            x0 = data[flow.data]
            sigma = rng.each(lambda g: den.sample_training_sigmas(1, g))  # (B,)
            loss = diffusion_loss(den, x0, {"context": contexts[flow.context]}, weighting=self.options.weighting,
                                  gamma=self.options.gamma, sigma=sigma, noise=rng.randn(tuple(x0.shape[1:])).to(x0))
            total, logs[f"loss_{flow.data}_{flow.context}"] = total + w * loss, float(loss.detach())
        return total, {"loss": float(total.detach()), **logs}

    @torch.no_grad()
    def sample_grid(self, generator: torch.Generator) -> Image.Image:
        """Rows: the first images; text -> image from their captions; their variations (one seed)."""
        from t2i.systems.request import GenerationRequest

        s, x = self.system, self.examples.to(self.device)
        r = GenerationRequest(tuple(self.captions), steps=self.options.sample_steps, width=x.shape[-1],
                              height=x.shape[-2])
        text = s.draw(Flow("image", "text"), (s.text_context(self.captions), s.text_context([""] * len(x))), r,
                      generator)
        both = s.image_context(torch.cat([x, torch.zeros_like(x[:1])]))  # the images' and a gray one's
        vary = s.draw(Flow("image", "image"), (both[:-1], both[-1:].expand(len(x), -1, -1)), r, generator)
        return image_grid(torch.cat([x.float().cpu(), text * 2 - 1, vary * 2 - 1]), columns=len(x))

    def extras(self) -> dict[str, bytes]:
        return {"vd.json": json.dumps({"text_scale": self.system.config.text_scale}).encode()}


@torch.no_grad()
def measure_text_scale(system: Any, captions: list[str]) -> float:
    """1 / std of the text VAE's posterior means over these captions (LDM's latent scaling, for text latents)."""
    ids, mask = system.clip.tokenizer.encode(captions, system.config.text_vae.max_length)
    return float(1 / system.text_vae.encode(ids, mask).mean.std().clamp_min(1e-6))
