"""CLIP (Radford et al. 2021): a ViT image tower and a text transformer trained contrastively into one space.

With `noise_aware = True` it is GLIDE's noised CLIP (Nichol et al. 2021, sec. 3.3): the image
tower takes (x_t, t) and is trained on noised images, so its gradient can guide sampling. Its
input follows the discrete-time networks of `t2i.diffusion` (DiscreteDenoiser): for the VE-form
sample x = x0 + sigma eps it sees x / sqrt(sigma^2 + 1) (the VP x_t) and t = schedule.sigma_to_t(sigma)
(`encode_noisy_image`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from t2i.config import Config
from t2i.diffusion.denoisers import timestep_inputs
from t2i.diffusion.schedules import DiscreteSchedule
from t2i.encoders.text import TextEncoder, TextEncoderConfig
from t2i.encoders.tokenizer import WordTokenizer
from t2i.nn.vit import ViT, ViTConfig

MAX_LOGIT_SCALE = 100.0  # CLIP clips the temperature so logits are scaled by at most 100 (sec. 2.5)


@dataclass(frozen=True)
class CLIPConfig(Config):
    """Shared embedding width, the image tower, the text tower, and whether the image tower is noise-aware."""

    embed_dim: int = 128
    image: ViTConfig = ViTConfig(image_size=64, patch_size=8)
    text: TextEncoderConfig = TextEncoderConfig()
    noise_aware: bool = False
    init_temperature: float = 0.07  # logit scale starts at log(1 / 0.07)

    def __post_init__(self) -> None:
        if isinstance(self.image, dict):
            object.__setattr__(self, "image", ViTConfig.from_dict(self.image))
        if isinstance(self.text, dict):
            object.__setattr__(self, "text", TextEncoderConfig.from_dict(self.text))
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim = {self.embed_dim}: must be >= 1")
        if self.image.proj_dim or self.image.timestep:
            raise ValueError("image.proj_dim and image.timestep are set by embed_dim and noise_aware; leave them unset")
        if not 0 < self.init_temperature:
            raise ValueError(f"init_temperature = {self.init_temperature}: must be > 0")

    @property
    def tower(self) -> ViTConfig:
        """The image tower's own config: projected to embed_dim, timestep input iff noise-aware."""
        return replace(self.image, proj_dim=self.embed_dim, timestep=self.noise_aware)


def caption_positives(captions: list[str]) -> torch.Tensor:
    """(B, B) bool: True where two captions of a batch are the same text (positives for each other)."""
    index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([index[c] for c in captions])
    return ids[:, None] == ids[None, :]


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
              positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric cross-entropy over the (B, B) image-text logits (CLIP, fig. 3 pseudo-code).

    Embeddings are L2-normalised (B, E); `logit_scale` is the multiplier exp(t). Pair i's target
    is column i; with `positives` ((B, B) bool, e.g. `caption_positives`), the target of a row is
    spread uniformly over every caption equal to its own (and symmetrically for texts), so a
    repeated caption is never pushed away from its own image's twin.
    """
    logits = logit_scale * image_emb @ text_emb.t()  # (B_img, B_txt)
    if positives is None:
        target = torch.arange(len(logits), device=logits.device)  # (B,)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    p = positives.to(logits.device, logits.dtype)
    target = p / p.sum(-1, keepdim=True)  # (B, B) rows sum to 1; symmetric positives -> same for texts
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target.t())) / 2


def retrieval_accuracy(image_emb: torch.Tensor, text_emb: torch.Tensor, positives: torch.Tensor | None = None) -> float:
    """Fraction of images whose most similar text in the batch is a positive (its own caption or an equal one)."""
    best = (image_emb @ text_emb.t()).argmax(-1)  # (B,)
    rows = torch.arange(len(best), device=best.device)
    if positives is None:
        return float((best == rows).float().mean())
    return float(positives.to(best.device)[rows, best].float().mean())


class CLIPModel(nn.Module):
    """Image tower (ViT) + text tower (TextEncoder) + projections to embed_dim + a learned logit scale."""

    def __init__(self, config: CLIPConfig, tokenizer: WordTokenizer):
        super().__init__()
        self.config = config
        self.image = ViT(config.tower)
        self.text = TextEncoder(tokenizer, config.text)
        self.text_projection = nn.Linear(config.text.width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    @property
    def tokenizer(self) -> WordTokenizer:
        return self.text.tokenizer

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100 as CLIP does."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def encode_image(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) [and timesteps t (B,) if noise-aware] -> unit embeddings (B, E)."""
        pooled, _ = self.image(x, t)  # (B, E)
        return F.normalize(pooled, dim=-1)

    def encode_noisy_image(self, x: torch.Tensor, sigma: torch.Tensor, schedule: DiscreteSchedule) -> torch.Tensor:
        """VE-form x = x0 + sigma eps (B, 3, H, W), sigma (B,) -> unit embeddings (B, E), fed as DiscreteDenoiser feeds its net."""
        return self.encode_image(*timestep_inputs(x, torch.as_tensor(sigma), schedule))

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Captions -> unit embeddings (B, E)."""
        pooled, _, _ = self.text(captions)  # (B, D)
        return F.normalize(self.text_projection(pooled), dim=-1)

    def loss(self, image_emb: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, float]:
        """CLIP loss of image embeddings against their captions (equal captions are positives) and retrieval accuracy."""
        text_emb = self.encode_text(captions)
        positives = caption_positives(captions)
        acc = retrieval_accuracy(image_emb.detach(), text_emb.detach(), positives)
        return clip_loss(image_emb, text_emb, self.scale(), positives), acc
