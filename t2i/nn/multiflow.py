"""Versatile Diffusion's multi-flow network (Xu et al. 2023, sec. 3.2): one trunk, layers picked per flow.

Global layers (the timestep embedding) serve every flow. Data layers belong to a data modality: the image UNet's
convolutional res blocks over latents (C, H, W), or the flat UNet's fully connected res blocks over a text
latent vector (t2i.nn.flat_blocks). Context layers belong to a context modality: the cross-attention
transformers that read CLIP text tokens or CLIP image tokens. Both UNets have the same levels, so each attention
slot has one layer per context modality. A flow (data, context) runs the data modality's UNet with the context
modality's layer in every slot: the network assembles that UNet from the shared modules (what diffusers does by
swapping Transformer2DModel blocks between its image and text UNets), so the UNet's own forward runs every flow.
A dual flow puts both context layers in every slot and mixes their changes (VD's DualTransformer2DModel).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from t2i.nn.flat_blocks import FlatUNet
from t2i.nn.unet import MiddleBlock, UNet, UNetBlock, UNetConfig

DATA = ("image", "text")  # data modalities: image latents (C, H, W), text latent vectors (D,)
CONTEXTS = ("text", "image")  # context modalities: CLIP text tokens, CLIP image tokens


@dataclass(frozen=True)
class Flow:
    """Which data layers and which context layers a pass uses (a VD flow); context "dual" mixes both (Xu et al. 2023).

    A dual context is [text tokens | image tokens] along L, the first text_length tokens the text's; each slot's
    output is x + mix * (text layer's change) + (1 - mix) * (image layer's change)."""

    data: str = "image"
    context: str = "text"
    mix: float = 1.0
    text_length: int = 0

    def __post_init__(self) -> None:
        if self.data not in DATA:
            raise ValueError(f"Flow: data must be one of {DATA}, got {self.data!r}")
        if self.context not in CONTEXTS + ("dual",):
            raise ValueError(f"Flow: context must be one of {CONTEXTS + ('dual',)}, got {self.context!r}")
        if not 0.0 <= float(self.mix) <= 1.0:
            raise ValueError(f"Flow: mix must be in [0, 1], got {self.mix}")
        if self.context == "dual" and self.text_length < 1:
            raise ValueError("Flow: a dual context needs text_length, the number of text tokens before the image's")

    @classmethod
    def dual(cls, data: str, mix: float, text_length: int) -> Flow:
        """Text and image contexts at once, the text's attention weighted mix (VD's dual guidance)."""
        return cls(data, "dual", float(mix), int(text_length))


@dataclass(frozen=True)
class MultiFlowConfig:
    """The image UNet (levels, attention slots, context width: the trunk every flow shares) and the text latent width."""

    image: UNetConfig = UNetConfig()
    text_dim: int = 768  # width of the text latent vector the text flows denoise (Optimus's z)
    text_rows: int = 4  # the flat levels' rows S (diffusers' second_dim); the text layers grow as S^2
    text_norm_groups: int = 0  # GroupNorm groups of the text data layers (0: the image UNet's; fewer when C*S is small)

    @property
    def text(self) -> UNetConfig:
        """The flat UNet: the image UNet's topology over a (text_dim,) vector."""
        return dataclasses.replace(self.image, in_channels=self.text_dim, out_channels=self.text_dim)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image.to_dict(), "text_dim": self.text_dim, "text_rows": self.text_rows,
                "text_norm_groups": self.text_norm_groups}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MultiFlowConfig:
        unknown = sorted(set(d) - {"image", "text_dim", "text_rows", "text_norm_groups"})
        if unknown:
            raise ValueError(f"MultiFlowConfig: unknown fields {unknown}")
        return cls(UNetConfig.from_dict(d["image"]), int(d.get("text_dim", 768)), int(d.get("text_rows", 4)),
                   int(d.get("text_norm_groups", 0)))


class MixedAttention(nn.Module):
    """Both contexts' layers on one state, their changes mixed by mix (VD's DualTransformer2DModel)."""

    def __init__(self, text: nn.Module, image: nn.Module, mix: float, text_length: int):
        super().__init__()
        self.text, self.image, self.mix, self.text_length = text, image, mix, text_length

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C, H, W); context (B, L_text + L_image, D) -> (B, C, H, W)."""
        n = self.text_length
        mask_t, mask_i = (None, None) if context_mask is None else (context_mask[:, :n], context_mask[:, n:])
        text = self.text(x, context[:, :n], mask_t) - x  # (B, C, H, W)
        image = self.image(x, context[:, n:], mask_i) - x
        return text * self.mix + image * (1 - self.mix) + x


def attention_slots(unet: UNet) -> dict[str, nn.Module]:
    """The UNet's attention layers by slot name ("down.i", "mid", "up.i"), in forward order."""
    blocks = [(f"down.{i}", b) for i, b in enumerate(unet.down)] + [("mid", unet.mid)]
    blocks += [(f"up.{i}", b) for i, b in enumerate(unet.up)]
    return {name: b.attn for name, b in blocks if b.attn is not None}


def _take_attention(unet: UNet) -> nn.ModuleList:
    """Removes a UNet's attention layers and returns them in slot order (they become context layers)."""
    layers = nn.ModuleList(attention_slots(unet).values())
    for block in [*unet.down, unet.mid, *unet.up]:
        block.attn = None
    return layers


def _assemble(unet: UNet, time_embed: nn.Module, attn: dict[str, nn.Module]) -> UNet:
    """A UNet over shared modules: unet's data layers, the global time embedding, these slot layers (a flow)."""
    view = copy.copy(unet)
    view.__dict__["_modules"] = dict(unet._modules)  # its own child table; the children stay shared
    view.time_embed = time_embed

    def shell(name: str, b: UNetBlock) -> UNetBlock:
        s = UNetBlock(b.res, attn.get(name), b.down, b.up)
        s.res_up = b.res_up
        return s

    view.down = nn.ModuleList(shell(f"down.{i}", b) for i, b in enumerate(unet.down))
    view.mid = MiddleBlock(unet.mid.res1, attn.get("mid"), unet.mid.res2)
    view.up = nn.ModuleList(shell(f"up.{i}", b) for i, b in enumerate(unet.up))
    return view


class MultiFlowUNet(nn.Module):
    """VD's network: x (B, C, H, W) image latents or (B, D) text latents, t (B,), context tokens -> prediction."""

    def __init__(self, config: MultiFlowConfig):
        super().__init__()
        self.config = config
        image, text = UNet(config.image), FlatUNet(config.text, config.text_rows, config.text_norm_groups)
        self.time_embed = image.time_embed  # global layer: one timestep embedding for every flow
        image.time_embed = text.time_embed = None
        self.data = nn.ModuleDict({"image": image, "text": text})
        self.slots = tuple(attention_slots(image))
        # each UNet's attention layers become its modality's context layers (VD stores them so)
        self.context = nn.ModuleDict({"image": _take_attention(image), "text": _take_attention(text)})

    @torch.no_grad()
    def init_from_unet(self, unet: UNet) -> list[str]:
        """Start the global time embedding and the image data layers from a text-to-image UNet of the same levels,
        and both contexts' attention layers from its attention wherever shapes fit (VD starts from Stable
        Diffusion, Xu et al. 2023 sec. 4); returns the keys left as initialised (other context widths, ...)."""
        src, left = unet.state_dict(), []

        def take(module: nn.Module, prefix: str) -> None:
            for k, v in module.state_dict().items():
                s = src.get(prefix + k)
                if s is not None and s.shape == v.shape:
                    v.copy_(s)
                else:
                    left.append(prefix + k)

        take(self.time_embed, "time_embed.")
        take(self.data["image"], "")
        for i, slot in enumerate(self.slots):  # "down.0" -> the UNet's down.0.attn, "mid" -> mid.attn
            for modality in CONTEXTS:
                take(self.context[modality][i], f"{slot}.attn.")
        return left

    def flow(self, flow: Flow) -> UNet:
        """The UNet of one flow, assembled from the shared global, data and context layers (no copies)."""
        if flow.context == "dual":
            layers = [MixedAttention(t, i, flow.mix, flow.text_length)
                      for t, i in zip(self.context["text"], self.context["image"])]
        else:
            layers = list(self.context[flow.context])
        return _assemble(self.data[flow.data], self.time_embed, dict(zip(self.slots, layers)))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        *,
        flow: Flow,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, C, H, W) for image data or (B, D) for text data; context (B, L, context_dim); same shape out."""
        vector = flow.data == "text" and x.ndim == 2
        out = self.flow(flow)(x[:, :, None, None] if vector else x, t, context=context, context_mask=context_mask)
        return out[:, :, 0, 0] if vector else out  # (B, D) or (B, C, H, W)


def token_context(tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Projected CLIP tokens (B, L, E) over the norm of the projected pooled vector (B, E): VD's context scale."""
    return tokens / pooled.norm(dim=-1)[:, None, None]  # (B, L, E)


class FlowNet(nn.Module):
    """One flow of a MultiFlowUNet as a plain network (x, t, context) -> prediction: what a stage's denoiser calls,
    text latents (B, D) included."""

    def __init__(self, net: MultiFlowUNet, flow: Flow):
        super().__init__()
        self.net, self.flow = net, flow

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, t, flow=self.flow, context=context, context_mask=context_mask)
