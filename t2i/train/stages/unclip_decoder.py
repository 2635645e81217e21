"""The unclip_decoder stage: unCLIP's decoder (Ramesh et al. 2022, sec. 2.1), a pixel UNet conditioned on a frozen
CLIP run's image embedding (time embedding + four context tokens) and the caption. Classifier-free guidance by
dropping the embedding (to the learned null) `embed_drop` of the time and the caption (to "") `caption_drop`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from t2i.systems.unclip_config import clip_text
from t2i.train.config import RecipeError, TableConfig, bad
from t2i.train.registry import STAGES
from t2i.train.rng import SampleRNG
from t2i.train.stages.base import first_examples, image_grid
from t2i.train.stages.noising import check_schedule
from t2i.train.stages.prior import frozen_clip

SET_BY_CLIP = ("embed_dim", "token_dim", "text_dim")


@dataclass(frozen=True)
class DecoderOptions(TableConfig):
    """[unclip_decoder]: DecoderConfig fields (`net`, sizes set by the CLIP), the CLIP run, schedule and drops."""

    net: dict = field(default_factory=dict)  # DecoderConfig fields (t2i/nn/unclip_decoder.py) but the CLIP's sizes
    clip_run: str = ""
    schedule: str = "cosine"
    timesteps: int = 1000
    embed_drop: float = 0.1
    caption_drop: float = 0.5
    num_samples: int = 4  # images whose embeddings the sample grid decodes
    sample_steps: int = 10

    def check(self) -> None:
        check_schedule(self.schedule, self.timesteps)
        if not self.clip_run:
            raise bad("clip_run", self.clip_run, "must name a trained clip run (t2i train tiny_clip --out RUN)")
        if not (0 <= self.embed_drop < 1 and 0 <= self.caption_drop <= 1):
            raise bad("embed_drop / caption_drop", (self.embed_drop, self.caption_drop), "must be fractions")
        if set(SET_BY_CLIP) & set(self.net) or min(self.num_samples, self.sample_steps) < 1:
            raise bad("net", self.net, f"{', '.join(SET_BY_CLIP)} are set by the CLIP; num_samples, sample_steps >= 1")


@STAGES.register("unclip_decoder")
class DecoderStage:
    """Embedding (+ caption) -> image diffusion; the grid shows the first images over their decoded embeddings."""

    Options = DecoderOptions

    def __init__(self, options: DecoderOptions, clip: nn.Module, examples: torch.Tensor, captions: list[str],
                 device: torch.device):
        from t2i.diffusion import DiscreteDenoiser, DiscreteSchedule
        from t2i.nn.unclip_decoder import DecoderConfig, EmbeddingDecoder

        c = clip.config
        sizes = dict(embed_dim=c.embed_dim, token_dim=c.text.width, text_dim=c.embed_dim)
        try:
            net = EmbeddingDecoder(DecoderConfig.from_dict({**options.net, **sizes}))
        except (TypeError, ValueError) as e:
            raise RecipeError(f"[unclip_decoder.net]: {e}") from None
        self.options, self.device, self.clip = options, device, clip.to(device)
        self.model = nn.ModuleDict({"decoder": net}).to(device)
        self.schedule = DiscreteSchedule.named(options.schedule, n=options.timesteps)
        self.denoiser = DiscreteDenoiser(net, self.schedule, "eps")
        self.examples, self.captions = examples, captions

    @classmethod
    def build(cls, recipe: Any, dataset: Any, device: torch.device,
              resume_from: Path | None = None) -> "DecoderStage":
        o = recipe.options
        return cls(o, frozen_clip(o.clip_run), *first_examples(dataset, o.num_samples), device)

    def loss(self, batch: dict[str, Any], rng: SampleRNG) -> tuple[torch.Tensor, dict[str, float]]:
        from t2i.diffusion.losses import diffusion_loss

        x0 = batch["image"].to(self.device)
        with torch.no_grad():
            embed = self.clip.encode_image(x0)  # (B, E)
            drop_embed, drop_caption = rng.rand() < self.options.embed_drop, rng.rand() < self.options.caption_drop
            cond = clip_text(self.clip, ["" if d else c for c, d in zip(batch["caption"], drop_caption.tolist())])
        null = self.model["decoder"].null.expand_as(embed)
        cond["image_embed"] = torch.where(drop_embed.to(self.device)[:, None], null, embed)
        sigma = rng.each(lambda g: self.denoiser.sample_training_sigmas(1, g))  # (B,)
        loss = diffusion_loss(self.denoiser, x0, cond, sigma=sigma, noise=rng.randn(tuple(x0.shape[1:])).to(x0))
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def sample_grid(self, generator: torch.Generator) -> Image.Image:
        """Top row: the first images; below: each decoded from its own CLIP embedding and caption (unguided)."""
        from t2i.diffusion.config import SamplingConfig
        from t2i.systems.stage import Guidance, StageRun, sample_stage, stage_denoiser

        x = self.examples.to(self.device)
        cond = {**clip_text(self.clip, self.captions), "image_embed": self.clip.encode_image(x)}
        settings = SamplingConfig(sampler="ddim", steps=self.options.sample_steps, guidance=1.0)
        den = stage_denoiser(self.model["decoder"], self.schedule, "eps", Guidance(), [])
        out = sample_stage(den, StageRun(tuple(x.shape), settings, cond), generator).clamp(-1, 1)
        return image_grid(torch.cat([x, out]).float().cpu(), columns=len(x))

    def extras(self) -> dict[str, bytes]:
        return {}
