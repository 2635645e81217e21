"""The unCLIP diffusion prior (Ramesh et al. 2022, sec. 2.2): a decoder-only transformer over
[text token states, CLIP text embedding, timestep embedding, noised image embedding, a learned final
query] whose last output is the clean image embedding (the paper's x0 prediction). It computes what
diffusers' `PriorTransformer` computes (the layout is mapped in t2i/io/diffusers_prior.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from t2i.config import Config
from t2i.nn.embeddings import TimestepMLP, timestep_embedding
from t2i.nn.transformer import Transformer, TransformerConfig

EXTRA_TOKENS = 4  # text embedding, timestep, noised image embedding, the learned query


@dataclass(frozen=True)
class PriorConfig(Config):
    """Sizes of the prior: image embedding, text token states, text embedding, token count, the causal stack."""

    dim: int = 64  # the image embedding (the sampled vector, in and out)
    token_dim: int = 64  # width of the text token states
    text_dim: int = 64  # width of the CLIP text embedding
    max_tokens: int = 24  # text tokens; learned positions cover these + EXTRA_TOKENS
    transformer: TransformerConfig = TransformerConfig(width=64, layers=2, heads=4, activation="gelu", causal=True)
    text_norm: bool = False  # LayerNorm on the text embedding before its projection (diffusers: embedding_proj_norm)
    norm_in: bool = False  # LayerNorm on the sequence before the stack

    def __post_init__(self) -> None:
        if isinstance(self.transformer, dict):
            object.__setattr__(self, "transformer", TransformerConfig.from_dict(self.transformer))
        if not self.transformer.causal:
            raise ValueError("the unCLIP prior is decoder-only: transformer.causal must be true")


class Prior(nn.Module):
    """net(x (B, D), t (B,), context (B, L, C), context_mask (B, L), pooled (B, P)) -> x0 (B, D), unCLIP sec. 2.2."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config, w = config, config.transformer.width
        self.time = TimestepMLP(w, w)
        self.proj_in = nn.Linear(config.dim, w)
        self.text_norm = nn.LayerNorm(config.text_dim) if config.text_norm else None
        self.proj_text = nn.Linear(config.text_dim, w)
        self.proj_context = nn.Linear(config.token_dim, w)
        self.position = nn.Parameter(torch.zeros(1, config.max_tokens + EXTRA_TOKENS, w))
        self.query = nn.Parameter(torch.zeros(1, 1, w))
        self.norm_in = nn.LayerNorm(w) if config.norm_in else None
        self.transformer = Transformer(config.transformer)
        self.norm_out = nn.LayerNorm(w)
        self.proj_out = nn.Linear(w, config.dim)
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.query, std=0.02)
        # the embedding statistics: the prior samples (e - mean) / std (diffusers: clip_mean / clip_std)
        self.register_buffer("embed_mean", torch.zeros(1, config.dim))
        self.register_buffer("embed_std", torch.ones(1, config.dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        b, n = x.shape[0], context.shape[1]
        if pooled is None:
            raise ValueError("Prior: pass the CLIP text embedding as pooled= (B, text_dim)")
        if n > self.config.max_tokens:
            raise ValueError(f"Prior: {n} text tokens exceed max_tokens={self.config.max_tokens}")
        dtype = self.proj_in.weight.dtype
        time = self.time(timestep_embedding(torch.as_tensor(t).expand(b), self.config.transformer.width).to(dtype))
        text = pooled if self.text_norm is None else self.text_norm(pooled)
        seq = torch.cat([self.proj_context(context.to(dtype)), self.proj_text(text.to(dtype))[:, None],
                         time[:, None], self.proj_in(x.to(dtype))[:, None],
                         self.query.to(dtype).expand(b, -1, -1)], dim=1)  # (B, L + 4, W)
        seq = seq + torch.cat([self.position[:, :n], self.position[:, -EXTRA_TOKENS:]], dim=1).to(dtype)
        mask = None
        if context_mask is not None:
            mask = torch.cat([context_mask.to(torch.bool), context_mask.new_ones(b, EXTRA_TOKENS, dtype=torch.bool)], 1)
        if self.norm_in is not None:
            seq = self.norm_in(seq)
        return self.proj_out(self.norm_out(self.transformer(seq, mask))[:, -1])  # (B, D)

    def normalize(self, embed: torch.Tensor) -> torch.Tensor:
        """An image embedding (B, D) as the prior samples it: (e - mean) / std."""
        return (embed - self.embed_mean) / self.embed_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """A sample (B, D) back to an image embedding: x * std + mean (diffusers' post_process_latents)."""
        return x * self.embed_std + self.embed_mean


def slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor | float) -> torch.Tensor:
    """Spherical interpolation of unit-normalised embeddings a, b (B, D) at w (B,) or a float (unCLIP sec. 3.2)."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    w = torch.as_tensor(w, dtype=a.dtype).reshape(-1, 1)  # (B|1, 1)
    theta = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))  # (B, 1)
    return (torch.sin((1 - w) * theta) * a + torch.sin(w * theta) * b) / torch.sin(theta)


def text_diff(image: torch.Tensor, toward: torch.Tensor, source: torch.Tensor, amount: float) -> torch.Tensor:
    """An image embedding moved toward a text: slerp(z_i, normalize(z_t - z_t0), amount) (unCLIP sec. 3.3, text diffs)."""
    return slerp(image, F.normalize(toward - source, dim=-1), amount)
