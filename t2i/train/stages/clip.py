"""The clip stage: CLIP's contrastive loss (Radford et al. 2021), or GLIDE's noise-aware CLIP (Nichol et al. 2021).

The noise-aware variant sees images noised as the diffusion stage noises them: sigma drawn per
sample by `DiscreteDenoiser.sample_training_sigmas` (timesteps uniform over the named schedule),
x = x0 + sigma eps, fed to the tower as x / sqrt(sigma^2 + 1) with t = sigma_to_t(sigma)
(`CLIPModel.encode_noisy_image`), so at sampling time it takes exactly what a denoiser's network takes.

ShapesWorld captions repeat within a batch ("two squares"); equal captions are positives for each
other (targets spread uniformly over them, `caption_positives`). The contrast runs over each
micro-batch on its own process: with grad_accum > 1 or several processes it sees fewer negatives.
"""

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
from t2i.train.stages.noising import check_schedule, noised


@dataclass(frozen=True)
class CLIPOptions(TableConfig):
    """[clip]: the CLIPConfig fields (`net`), noise-aware or not, its noise schedule, and the sample grid size."""

    net: dict = field(default_factory=dict)  # CLIPConfig fields (t2i/encoders/clip.py) but noise_aware
    noise_aware: bool = False  # GLIDE's noised CLIP: the image tower takes (x_t, t)
    schedule: str = "cosine"  # linear | scaled_linear | cosine (noise-aware only)
    timesteps: int = 1000
    num_samples: int = 8  # images and captions in the sample grid's similarity matrix

    def check(self) -> None:
        check_schedule(self.schedule, self.timesteps)
        if self.num_samples < 1:
            raise bad("num_samples", self.num_samples, "must be at least 1")
        if "noise_aware" in self.net:
            raise bad("net.noise_aware", self.net["noise_aware"], "set [clip] noise_aware instead")


def build_clip(options: CLIPOptions, tokenizer_json: str | None = None) -> nn.Module:
    """A CLIPModel from the [clip] table with the ShapesWorld word tokenizer (or a saved one); bad fields name the table."""
    from t2i.encoders.clip import CLIPConfig, CLIPModel
    from t2i.encoders.tokenizer import WordTokenizer

    tok = WordTokenizer.from_json(tokenizer_json) if tokenizer_json else WordTokenizer.for_shapes()
    try:
        return CLIPModel(CLIPConfig.from_dict({**options.net, "noise_aware": options.noise_aware}), tok)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"[clip.net]: {e}") from None


@STAGES.register("clip")
class CLIPStage:
    """Image-caption contrastive training; the grid shows images over their image->caption probabilities."""

    Options = CLIPOptions

    def __init__(self, options: CLIPOptions, examples: torch.Tensor, captions: list[str], device: torch.device,
                 tokenizer_json: str | None = None):
        from t2i.diffusion import DiscreteDenoiser, DiscreteSchedule

        self.options, self.device = options, device
        self.model = nn.ModuleDict({"clip": build_clip(options, tokenizer_json)}).to(device)
        side = self.model["clip"].config.image.image_size
        if examples.shape[-1] != side or examples.shape[-2] != side:
            raise RecipeError(f"[clip.net] image.image_size = {side} does not fit the data "
                              f"(images of shape {tuple(examples.shape[1:])})")
        self.examples, self.captions = examples, captions
        self.schedule = DiscreteSchedule.named(options.schedule, n=options.timesteps) if options.noise_aware else None
        # the noise-aware tower is a VP network indexed by timestep: its denoiser draws the training sigmas
        self.noising = DiscreteDenoiser(self.model["clip"].image, self.schedule) if self.schedule else None

    @classmethod
    def build(cls, recipe: Any, dataset: Any, device: torch.device, resume_from: Path | None = None) -> "CLIPStage":
        """From a recipe; resuming reuses the checkpoint's tokenizer so token ids never shift."""
        saved = resume_from / "tokenizer.json" if resume_from is not None else None
        tokenizer_json = saved.read_text() if saved is not None and saved.is_file() else None
        examples, captions = first_examples(dataset, recipe.options.num_samples)
        return cls(recipe.options, examples, captions, device, tokenizer_json)

    def embed_images(self, x0: torch.Tensor, rng: SampleRNG | None) -> torch.Tensor:
        """Unit image embeddings (B, E); noise-aware: of x0 + sigma eps with per-sample sigma from rng (clean without rng)."""
        clip = self.model["clip"]
        if self.noising is None:
            return clip.encode_image(x0)
        if rng is None:
            sigma = torch.zeros(len(x0), dtype=torch.float64)  # (B,) t = 0
            return clip.encode_noisy_image(x0, sigma, self.schedule)
        x, sigma = noised(x0, self.noising, rng)  # VE form, as the diffusion loss noises
        return clip.encode_noisy_image(x, sigma, self.schedule)

    def loss(self, batch: dict[str, Any], rng: SampleRNG) -> tuple[torch.Tensor, dict[str, float]]:
        clip = self.model["clip"]
        image_emb = self.embed_images(batch["image"].to(self.device), rng)  # (B, E)
        loss, accuracy = clip.loss(image_emb, batch["caption"])
        return loss, {"loss": float(loss.detach()), "accuracy": accuracy, "logit_scale": float(clip.scale().detach())}

    @torch.no_grad()
    def sample_grid(self, generator: torch.Generator) -> Image.Image:
        """Top row: the first images (clean); below: their image -> caption softmax, row i = image i, column j =
        caption of image j, white = 1 (a bright diagonal means each image retrieves its own caption)."""
        clip = self.model["clip"]
        x = self.examples.to(self.device)  # (N, 3, h, w)
        n, _, h, w = x.shape
        text_emb = clip.encode_text(self.captions)
        probs = (clip.scale() * self.embed_images(x, None) @ text_emb.t()).softmax(-1).float().cpu()  # (N, N)
        heat = probs.repeat_interleave(w, 0).repeat_interleave(w, 1) * 2 - 1  # (N w, N w) in [-1, 1]
        top = torch.cat(list(x.float().cpu()), dim=-1)  # (3, h, N w)
        return image_grid(torch.cat([top, heat.expand(3, -1, -1)], dim=1)[None])  # (1, 3, h + N w, N w)

    def extras(self) -> dict[str, bytes]:
        return {"tokenizer.json": self.model["clip"].tokenizer.to_json().encode()}
