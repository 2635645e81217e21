"""Pre-LN transformer blocks (Vaswani et al. 2017; pre-LN as in GPT-2 / CLIP) and the CLIP-style text transformer.

One `Transformer` stack serves text encoders (causal or not, with a padding mask), the unCLIP
prior and a ViT image tower. `TextTransformer` is CLIP's text model (Radford et al. 2021):
token + learned position embeddings, a causal stack, a final LayerNorm, and a pooled vector
taken at the end-of-text token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from t2i.config import Config
from t2i.nn.attention import Attention

ACTIVATIONS = ("gelu", "quick_gelu", "gelu_tanh")
POOLING = ("eos", "argmax", "last", "mean")


@dataclass(frozen=True)
class TransformerConfig(Config):
    """A stack of pre-LN blocks: width, depth, heads, MLP size and activation, causal or not."""

    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 0  # 0 means 4 * width
    activation: str = "gelu"  # gelu (erf), quick_gelu (CLIP: x * sigmoid(1.702 x)), gelu_tanh
    causal: bool = False
    eps: float = 1e-5
    qkv_bias: bool = True

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")

    @property
    def hidden(self) -> int:
        return self.mlp_dim or 4 * self.width


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's GELU approximation x * sigmoid(1.702 x) (Radford et al. 2021)."""
    return x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    """Linear -> activation -> Linear."""

    def __init__(self, width: int, hidden: int, activation: str):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.activation == "quick_gelu":
            h = quick_gelu(h)
        else:
            h = F.gelu(h, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        return self.fc2(h)


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.causal = cfg.causal
        self.ln1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = Attention(cfg.width, heads=cfg.heads, head_dim=cfg.width // cfg.heads, qkv_bias=cfg.qkv_bias)
        self.ln2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = MLP(cfg.width, cfg.hidden, cfg.activation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask=mask, causal=self.causal)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """`layers` pre-LN blocks over (B, N, width) tokens; mask (B, N) bool, True = real token."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return x


@dataclass(frozen=True)
class TextTransformerConfig(Config):
    """CLIP-style text encoder: vocabulary, context length, the stack, pooling and optional projection."""

    vocab_size: int = 49408
    max_length: int = 77
    transformer: TransformerConfig = TransformerConfig(width=512, layers=12, heads=8, activation="quick_gelu", causal=True)
    pool: str = "eos"  # eos: first eos_token_id; argmax: highest token id (old CLIP configs); last: last real token; mean
    eos_token_id: int = 49407
    proj_dim: int = 0  # >0: a bias-free linear projection of the pooled vector (CLIP's text_projection)

    def __post_init__(self):
        if isinstance(self.transformer, dict):
            object.__setattr__(self, "transformer", TransformerConfig.from_dict(self.transformer))
        if self.pool not in POOLING:
            raise ValueError(f"pool must be one of {POOLING}, got {self.pool!r}")

    @property
    def width(self) -> int:
        return self.transformer.width


class TextTransformer(nn.Module):
    """Token ids (B, L) -> (pooled (B, D'), tokens (B, L, D), mask (B, L)), CLIP text model (Radford et al. 2021)."""

    def __init__(self, config: TextTransformerConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.position_embedding = nn.Parameter(torch.empty(config.max_length, width))
        self.transformer = Transformer(config.transformer)
        self.final_norm = nn.LayerNorm(width, eps=config.transformer.eps)
        self.proj = nn.Linear(width, config.proj_dim, bias=False) if config.proj_dim else None
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids (B, L) long; mask (B, L) bool, True = real token (None: all real)."""
        b, n = ids.shape
        if n > self.config.max_length:
            raise ValueError(f"sequence of {n} tokens exceeds max_length={self.config.max_length}")
        x = self.token_embedding(ids) + self.position_embedding[:n]  # (B, L, D)
        x = self.final_norm(self.transformer(x, mask))
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=ids.device)
        pooled = self.pool(x, ids, mask)  # (B, D)
        if self.proj is not None:
            pooled = self.proj(pooled)  # (B, proj_dim)
        return pooled, x, mask

    def pool(self, x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled vector from token states (B, L, D), as transformers' CLIPTextModel picks it."""
        if self.config.pool == "mean":
            m = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
            return (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        if self.config.pool == "eos":
            index = (ids == self.config.eos_token_id).int().argmax(-1)
        elif self.config.pool == "argmax":
            index = ids.int().argmax(-1)
        else:  # last real token
            index = mask.long().sum(-1).sub(1).clamp_min(0)
        return x[torch.arange(x.shape[0], device=x.device), index]


@dataclass(frozen=True)
class VectorPriorConfig(Config):
    """A diffusion prior over (D,) vectors (unCLIP's image embeddings, Ramesh et al. 2022, sec. 2.2)."""

    dim: int = 64  # the vector's size
    context_dim: int = 64  # the text tokens' width
    transformer: TransformerConfig = TransformerConfig(width=64, layers=2, heads=4)


class VectorPrior(nn.Module):
    """net(x (B, D), t (B,), context (B, L, C)) -> (B, D): a transformer over [text tokens, time, x]
    whose last token's output is the prediction (unCLIP's decoder-only prior, sec. 2.2)."""

    def __init__(self, config: VectorPriorConfig):
        super().__init__()
        from t2i.nn.embeddings import timestep_embedding

        w = config.transformer.width
        self.config, self.embed_t = config, lambda t: timestep_embedding(t, w)
        self.proj_context, self.proj_in = nn.Linear(config.context_dim, w), nn.Linear(config.dim, w)
        self.time = nn.Linear(w, w)
        self.transformer, self.norm, self.proj_out = Transformer(config.transformer), nn.LayerNorm(w), nn.Linear(w, config.dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:  # every token attends (mask unused)
        time = self.time(self.embed_t(t).to(x.dtype))[:, None]  # (B, 1, W)
        seq = torch.cat([self.proj_context(context), time, self.proj_in(x)[:, None]], dim=1)  # (B, L + 2, W)
        return self.proj_out(self.norm(self.transformer(seq))[:, -1])  # (B, D)
