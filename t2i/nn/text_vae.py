"""The text latent of Versatile Diffusion's text flows: an Optimus-style VAE (Li et al. 2020; Xu et al. 2023 sec. 3.4).

A transformer encoder reads the caption after a learned summary token; the summary's state gives a diagonal
Gaussian over a latent vector z. A causal transformer decoder reads z as its first token and predicts the caption
word by word. The diffusion text flows denoise z (t2i.nn.multiflow's text data layers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from t2i.config import Config
from t2i.nn.distributions import DiagonalGaussian
from t2i.nn.transformer import Transformer, TransformerConfig


@dataclass(frozen=True)
class TextVAEConfig(Config):
    """Vocabulary, caption length (tokens, <eos> included), latent width, the encoder and the causal decoder."""

    vocab_size: int = 64
    max_length: int = 16
    latent_dim: int = 32
    encoder: TransformerConfig = TransformerConfig(width=128, layers=2, heads=4)
    decoder: TransformerConfig = TransformerConfig(width=128, layers=2, heads=4, causal=True)

    def __post_init__(self) -> None:
        if not self.decoder.causal or self.encoder.causal:
            raise ValueError("TextVAEConfig: the encoder reads the whole caption (causal=False), the decoder is causal")
        if min(self.vocab_size, self.max_length, self.latent_dim) < 1:
            raise ValueError("TextVAEConfig: vocab_size, max_length and latent_dim must be >= 1")


class TextVAE(nn.Module):
    """Captions as token ids (B, L) <-> latent vectors (B, latent_dim) (Optimus, Li et al. 2020)."""

    def __init__(self, config: TextVAEConfig):
        super().__init__()
        self.config = c = config
        we, wd = c.encoder.width, c.decoder.width
        self.summary = nn.Parameter(torch.randn(we) * we**-0.5)  # BERT's [CLS] role: its state summarises
        self.enc_embed, self.enc_pos = nn.Embedding(c.vocab_size, we), nn.Parameter(torch.randn(c.max_length + 1, we) * 0.01)
        self.encoder, self.enc_norm = Transformer(c.encoder), nn.LayerNorm(we)
        self.to_moments = nn.Linear(we, 2 * c.latent_dim)
        self.dec_embed, self.dec_pos = nn.Embedding(c.vocab_size, wd), nn.Parameter(torch.randn(c.max_length, wd) * 0.01)
        self.from_latent = nn.Linear(c.latent_dim, wd)  # z as the decoder's first token (Optimus' memory injection)
        self.decoder, self.dec_norm = Transformer(c.decoder), nn.LayerNorm(wd)
        self.head = nn.Linear(wd, c.vocab_size)

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> DiagonalGaussian:
        """ids (B, L), mask (B, L) bool (True = real token) -> the posterior q(z | caption) over (B, latent_dim)."""
        b, n = ids.shape
        h = torch.cat([self.summary.expand(b, 1, -1), self.enc_embed(ids)], 1) + self.enc_pos[: n + 1]  # (B, 1+L, D)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=ids.device), mask.bool()], 1)  # (B, 1+L)
        h = self.enc_norm(self.encoder(h, mask))
        return DiagonalGaussian.from_moments(self.to_moments(h[:, 0]))  # (B, latent_dim) each

    def logits(self, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: z (B, Z) and the caption ids (B, L) -> next-token logits (B, L, V) for every position."""
        x = torch.cat([self.from_latent(z)[:, None], self.dec_embed(ids[:, :-1])], 1)  # (B, L, D)
        return self.head(self.dec_norm(self.decoder(x + self.dec_pos[: ids.shape[1]])))  # (B, L, V)

    def loss(self, ids: torch.Tensor, mask: torch.Tensor, beta: float,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO per caption: token cross-entropy (real tokens, <eos> included) + beta * KL(q || N(0, I))."""
        post = self.encode(ids, mask)
        logits = self.logits(post.sample(generator), ids)  # (B, L, V)
        ce = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")  # (B, L)
        rec = (ce * mask).sum(1).mean()
        kl = post.kl().mean()
        return rec + beta * kl, {"rec": float(rec.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Greedy decoding of latents (B, Z) -> ids (B, max_length) (the tokenizer's decode stops at <eos>)."""
        ids = torch.zeros(z.shape[0], 1, dtype=torch.long, device=z.device)  # a placeholder after the last real one
        for _ in range(self.config.max_length):
            nxt = self.logits(z, ids)[:, -1].argmax(-1)  # (B,)
            ids = torch.cat([ids[:, :-1], nxt[:, None], ids[:, -1:]], 1)
        return ids[:, :-1]  # (B, max_length)
