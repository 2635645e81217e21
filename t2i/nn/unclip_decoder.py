"""unCLIP's decoder (Ramesh et al. 2022, sec. 2.1): the one UNet conditioned on a CLIP image embedding, projected
into the timestep embedding (the UNet's `pooled` path over [image embedding, text embedding]) and into four
extra context tokens put before the caption's projected, LayerNormed token states (diffusers'
UnCLIPTextProjModel computes the same). The caption is optional (`caption = False`: the image embedding alone)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from t2i.config import Config
from t2i.nn.unet import UNet, UNetConfig


@dataclass(frozen=True)
class DecoderConfig(Config):
    """The UNet (pooled_dim = embed_dim [+ text_dim], context_dim set) and the embedding's projections."""

    unet: UNetConfig = UNetConfig(in_channels=3, out_channels=3, block_channels=(32, 64), attention_levels=(1,),
                                  attention_block="adm", num_heads=2, context_dim=64, pooled_dim=128, norm_groups=8)
    embed_dim: int = 64  # the CLIP image embedding
    extra_tokens: int = 4  # context tokens projected from it
    caption: bool = True  # also conditioned on the caption: its token states and CLIP text embedding
    token_dim: int = 64  # width of the caption's token states
    text_dim: int = 64  # width of the CLIP text embedding

    def __post_init__(self) -> None:
        if isinstance(self.unet, dict):
            object.__setattr__(self, "unet", UNetConfig.from_dict(self.unet))
        want = self.embed_dim + self.text_dim * self.caption
        if self.unet.pooled_dim != want or self.unet.context_dim is None or self.unet.pooled_mlp:
            raise ValueError(f"the decoder's UNet needs pooled_dim = {want} (embed_dim [+ text_dim]), a Linear pooled "
                             f"projection and a context_dim; got pooled_dim={self.unet.pooled_dim}")
        if self.extra_tokens < 1:
            raise ValueError("extra_tokens must be at least 1")


class EmbeddingDecoder(nn.Module):
    """net(x, t, image_embed (B, E), context (B, L, C)?, context_mask?, pooled (B, P)?) -> the UNet's output."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config, width = config, config.unet.context_dim
        self.unet = UNet(config.unet)
        self.null = nn.Parameter(torch.zeros(config.embed_dim))  # the dropped embedding (classifier-free guidance)
        self.to_tokens = nn.Linear(config.embed_dim, config.extra_tokens * width)
        self.proj_text = nn.Linear(config.token_dim, width) if config.caption else None
        self.text_norm = nn.LayerNorm(width) if config.caption else None

    def condition(self, image_embed: torch.Tensor, context: torch.Tensor | None = None,
                  context_mask: torch.Tensor | None = None, pooled: torch.Tensor | None = None):
        """(context tokens (B, k [+ L], C), their mask or None, the pooled vector (B, E [+ P])) the UNet takes."""
        b, k, dtype = image_embed.shape[0], self.config.extra_tokens, self.to_tokens.weight.dtype
        e = image_embed.to(dtype)
        tokens = self.to_tokens(e).view(b, -1, k).transpose(1, 2)  # (B, k, C); diffusers' (C, k) order
        if self.proj_text is None:
            return tokens, None, e
        if context is None or pooled is None:
            raise ValueError("this decoder is caption-conditioned: pass context= and pooled= (the caption's)")
        tokens = torch.cat([tokens, self.text_norm(self.proj_text(context.to(dtype)))], dim=1)  # (B, k + L, C)
        mask = None if context_mask is None else torch.cat([context_mask.new_ones(b, k), context_mask], dim=1)
        return tokens, mask, torch.cat([e, pooled.to(dtype)], dim=-1)  # (B, E + P)

    def forward(self, x: torch.Tensor, t: torch.Tensor, image_embed: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, pooled: torch.Tensor | None = None) -> torch.Tensor:
        tokens, mask, vector = self.condition(image_embed, context, context_mask, pooled)
        return self.unet(x, t, context=tokens, context_mask=mask, pooled=vector)
