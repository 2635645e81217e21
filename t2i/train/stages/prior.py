"""The prior stage: unCLIP's diffusion prior (Ramesh et al. 2022, sec. 2.2) over the CLIP image embeddings of a
trained, frozen CLIP run, conditioned on the caption's CLIP text embedding and token states.

The prior predicts the clean (normalised) embedding (x0 prediction, the paper's MSE on z_i); its embedding
statistics are measured on the first `stats_examples` images when training starts. The caption is replaced
by the empty caption `text_drop` of the time, so sampling can use classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from t2i.systems.unclip_config import clip_text
from t2i.train.config import RecipeError, TableConfig, bad
from t2i.train.registry import STAGES
from t2i.train.rng import SampleRNG
from t2i.train.stages.base import first_examples, image_grid
from t2i.train.stages.noising import check_schedule

SET_BY_CLIP = ("dim", "token_dim", "text_dim", "max_tokens")


@dataclass(frozen=True)
class PriorOptions(TableConfig):
    """[prior]: the PriorConfig fields (`net`, sizes set by the CLIP), the CLIP run, schedule and caption drop."""

    net: dict = field(default_factory=dict)  # PriorConfig fields (t2i/nn/prior.py) but the sizes the CLIP sets
    clip_run: str = ""  # a `t2i train` clip run (or checkpoint folder): its EMA weights, frozen
    schedule: str = "cosine"
    timesteps: int = 1000
    text_drop: float = 0.1  # the fraction of captions replaced by "" (classifier-free guidance)
    stats_examples: int = 256  # images whose embeddings give the prior's mean and std
    num_samples: int = 8  # captions in the sample grid
    sample_steps: int = 10  # DDIM steps of the sample grid

    def check(self) -> None:
        check_schedule(self.schedule, self.timesteps)
        if not self.clip_run:
            raise bad("clip_run", self.clip_run, "must name a trained clip run (t2i train tiny_clip --out RUN)")
        if not 0 <= self.text_drop < 1:
            raise bad("text_drop", self.text_drop, "must be in [0, 1)")
        if min(self.stats_examples, self.num_samples, self.sample_steps) < 1:
            raise bad("stats_examples / num_samples / sample_steps", 0, "must be at least 1")
        if set(SET_BY_CLIP) & set(self.net):
            raise bad("net", self.net, f"{', '.join(SET_BY_CLIP)} are set by the CLIP")


def frozen_clip(run: str | Path) -> nn.Module:
    """The EMA CLIP of a clip run's newest good checkpoint (or of a checkpoint folder), frozen, in eval mode."""
    from t2i.io.weights import load_into
    from t2i.train.checkpoint import latest_checkpoint, read_checkpoint
    from t2i.train.stages.clip import CLIPOptions, build_clip

    run = Path(run)
    path = run if (run / "manifest.json").is_file() else latest_checkpoint(run / "checkpoints", log=lambda m: None)
    if path is None or not path.is_dir():
        raise RecipeError(f"[prior] clip_run = '{run}': no complete checkpoint there")
    ckpt = read_checkpoint(path)
    if ckpt.config.get("stage") != "clip" or (ckpt.config.get("clip") or {}).get("noise_aware"):
        raise RecipeError(f"[prior] clip_run = '{run}': not a clip run on clean images")
    clip = build_clip(CLIPOptions.from_dict(ckpt.config["clip"]), ckpt.extra("tokenizer.json").decode())
    load_into(clip, {k[5:]: v for k, v in ckpt.ema.items() if k.startswith("clip.")}, where=str(path))
    return clip.eval().requires_grad_(False)


@STAGES.register("prior")
class PriorStage:
    """Caption -> image-embedding diffusion; the grid shows sampled vs true embeddings' cosine similarities."""

    Options = PriorOptions

    def __init__(self, options: PriorOptions, clip: nn.Module, examples: torch.Tensor, captions: list[str],
                 device: torch.device):
        from t2i.diffusion import DiscreteDenoiser, DiscreteSchedule
        from t2i.nn.prior import Prior, PriorConfig

        c = clip.config
        sizes = dict(dim=c.embed_dim, token_dim=c.text.width, text_dim=c.embed_dim, max_tokens=c.text.max_length)
        try:
            net = Prior(PriorConfig.from_dict({**options.net, **sizes}))
        except (TypeError, ValueError) as e:
            raise RecipeError(f"[prior.net]: {e}") from None
        self.options, self.device, self.clip = options, device, clip.to(device)
        self.model = nn.ModuleDict({"prior": net}).to(device)
        self.schedule = DiscreteSchedule.named(options.schedule, n=options.timesteps)
        self.denoiser = DiscreteDenoiser(self.model["prior"], self.schedule, "x0")
        self.examples, self.captions = examples, captions

    @classmethod
    def build(cls, recipe: Any, dataset: Any, device: torch.device, resume_from: Path | None = None) -> "PriorStage":
        """From a recipe: the frozen CLIP, and (fresh runs) the embedding statistics of the first images."""
        clip = frozen_clip(recipe.options.clip_run)
        stage = cls(recipe.options, clip, *first_examples(dataset, recipe.options.num_samples), device)
        if resume_from is None:
            stage.measure(first_examples(dataset, recipe.options.stats_examples)[0])
        return stage

    @torch.no_grad()
    def measure(self, images: torch.Tensor) -> None:
        """The prior's embedding mean and std (per dimension) from these images' CLIP embeddings."""
        e = self.clip.encode_image(images.to(self.device))  # (N, D)
        prior = self.model["prior"]
        prior.embed_mean.copy_(e.mean(0, keepdim=True))
        prior.embed_std.copy_(e.std(0, keepdim=True).clamp_min(1e-3) if len(e) > 1 else torch.ones_like(e))

    def loss(self, batch: dict[str, Any], rng: SampleRNG) -> tuple[torch.Tensor, dict[str, float]]:
        from t2i.diffusion.losses import diffusion_loss

        with torch.no_grad():
            x0 = self.model["prior"].normalize(self.clip.encode_image(batch["image"].to(self.device)))  # (B, D)
            drop = rng.rand() < self.options.text_drop
            cond = clip_text(self.clip, ["" if d else c for c, d in zip(batch["caption"], drop.tolist())])
        sigma = rng.each(lambda g: self.denoiser.sample_training_sigmas(1, g))  # (B,)
        loss = diffusion_loss(self.denoiser, x0, cond, sigma=sigma, noise=rng.randn(tuple(x0.shape[1:])).to(x0))
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def sample_grid(self, generator: torch.Generator) -> Image.Image:
        """Top row: the first images; below: cosine similarity of the embedding sampled from caption i (row) with
        the true image embedding j (column), white = 1 (a bright diagonal: the prior finds each caption's image)."""
        from t2i.diffusion.config import SamplingConfig
        from t2i.systems.stage import Guidance, StageRun, sample_stage, stage_denoiser

        prior, x = self.model["prior"], self.examples.to(self.device)
        n, _, h, w = x.shape
        settings = SamplingConfig(sampler="ddim", steps=self.options.sample_steps, guidance=1.0)
        den = stage_denoiser(prior, self.schedule, "x0", Guidance(), [])
        z = sample_stage(den, StageRun((n, prior.config.dim), settings, clip_text(self.clip, self.captions)), generator)
        sims = F.normalize(prior.denormalize(z), dim=-1) @ self.clip.encode_image(x).t()  # (N, N)
        heat = sims.float().cpu().repeat_interleave(w, 0).repeat_interleave(w, 1)  # (N w, N w) in [-1, 1]
        top = torch.cat(list(x.float().cpu()), dim=-1)  # (3, h, N w)
        return image_grid(torch.cat([top, heat.expand(3, -1, -1)], dim=1)[None])

    def extras(self) -> dict[str, bytes]:
        return {}
