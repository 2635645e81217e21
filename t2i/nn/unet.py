"""The one UNet of the ADM / LDM family, configured (never subclassed) by every system.

Ho et al. 2020 (DDPM UNet), Dhariwal & Nichol 2021 (ADM: scale-shift norm, class embedding),
Nichol et al. 2021 (GLIDE: pooled text token, context keys/values in every attention layer),
Rombach et al. 2022 (LDM: spatial transformers with cross-attention), Saharia et al. 2022
(Imagen: pooled + token conditioning, the augmentation level of the low-res conditioning, and the
Efficient UNet's options: more res blocks at low resolution, skips scaled by 1/sqrt(2), resampling
before the convolutions on the way down and after them on the way up), Zhang
et al. 2023 (ControlNet: additive residuals). A feature is on when its config field or its
conditioning input is set. `UNetEncoder` (embeddings, input conv, down path, middle) is a module of
its own so ControlNet can copy it; `UNet` extends it with the up path, so the children keep their
names and the state-dict keys are the same as a single flat module's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from t2i.nn.embeddings import TextTimeEmbedding, TimestepMLP, timestep_embedding
from t2i.nn.resblock import ACTIVATIONS, Downsample, ResBlock, ResStyle, Upsample
from t2i.nn.spatial_transformer import AttentionBlock, SpatialTransformer

ATTENTION_BLOCKS = ("transformer", "adm")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a UNet; defaults are Stable Diffusion 1.x's."""

    in_channels: int = 4  # larger for inpainting (mask + masked image) or super-resolution (low-res image)
    out_channels: int = 4
    block_channels: tuple[int, ...] = (320, 640, 1280, 1280)  # width of each resolution level
    num_res_blocks: int | tuple[int, ...] = 2  # per model or per level on the way down (one more on the way up)
    attention_levels: tuple[int, ...] = (0, 1, 2)  # levels (0 = full resolution) that have attention
    mid_attention: bool = True
    num_heads: int | tuple[int, ...] | None = 8  # per model or per level; exclusive with head_dim
    head_dim: int | None = None  # fixed head width (heads = channels // head_dim)
    transformer_depth: int = 1  # transformer blocks per attention layer ("transformer" only)
    position_encoding: bool = False  # "transformer" only: Fourier features of each pixel's place, zero-initialised
    attention_block: str = "transformer"  # "transformer": LDM spatial transformer; "adm": ADM/GLIDE block
    context_dim: int | None = 768  # token context width: cross-attention, or GLIDE's concatenated k/v ("adm")
    time_embed_dim: int | None = None  # default 4 * block_channels[0]
    scale_shift: bool = False  # ADM's AdaGN (timestep as scale and shift) instead of LDM's addition
    pooled_dim: int | None = None  # a (B, P) vector added to the time embedding after a projection
    pooled_mlp: bool = False  # project pooled with Linear-SiLU-Linear instead of one Linear
    num_classes: int | None = None  # integer labels (B,) looked up in a table and added to the time embedding
    aug_level_embed: bool = False  # a (B,) augmentation level embedded like t and added (Imagen noise-conditioning aug)
    skip_scale: float = 1.0  # skip activations times this before they are concatenated (Imagen: 2 ** -0.5)
    resample_first: bool = False  # Imagen's Efficient UNet: every level downsamples before its res blocks and
    # upsamples after them (the convolutions run at half the resolution; the skips are the res blocks' outputs,
    # and the up path has as many res blocks as the down path)
    norm_groups: int = 32
    norm_eps: float = 1e-5
    dropout: float = 0.0
    # DeepFloyd IF's options (an Imagen-style cascade; Brock et al. 2019 / ADM for the resampling res blocks)
    act: str = "silu"  # the nonlinearity everywhere: "silu" or "gelu"
    resblock_updown: bool = False  # resample with a res block that pools / repeats inside (ADM) instead of convs
    res_out_scale: float = 1.0  # every res block's output divided by this (IF stage II: 1.414)
    context_in_dim: int | None = None  # tokens arrive this wide; a Linear maps them to context_dim
    context_norm_groups: int | None = None  # GroupNorm of the context before every "adm" attention's k/v
    text_pool_heads: int | None = None  # attention-pool the arriving tokens into the time embedding (heads)

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"UNetConfig: {msg}")

        object.__setattr__(self, "block_channels", tuple(int(c) for c in self.block_channels))
        object.__setattr__(self, "attention_levels", tuple(sorted(int(i) for i in self.attention_levels)))
        for key in ("num_heads", "num_res_blocks"):
            if isinstance(getattr(self, key), (list, tuple)):
                object.__setattr__(self, key, tuple(int(n) for n in getattr(self, key)))
        blocks = self.num_res_blocks if isinstance(self.num_res_blocks, tuple) else (self.num_res_blocks,)
        if not self.block_channels or min(blocks, default=0) < 1:
            bad("needs at least one level and one res block per level")
        if isinstance(self.num_res_blocks, tuple) and len(self.num_res_blocks) != len(self.block_channels):
            bad(f"num_res_blocks per level needs {len(self.block_channels)} entries, got {len(self.num_res_blocks)}")
        if not self.skip_scale > 0:
            bad(f"skip_scale must be > 0, got {self.skip_scale}")
        if any(not 0 <= i < len(self.block_channels) for i in self.attention_levels):
            bad(f"attention_levels {self.attention_levels} outside levels 0..{len(self.block_channels) - 1}")
        if self.attention_block not in ATTENTION_BLOCKS:
            bad(f"attention_block must be one of {ATTENTION_BLOCKS}, got {self.attention_block!r}")
        if self.position_encoding and self.attention_block != "transformer":
            bad("position_encoding needs attention_block='transformer'")
        if (self.num_heads is None) == (self.head_dim is None):
            bad("set exactly one of num_heads and head_dim")
        if isinstance(self.num_heads, tuple) and len(self.num_heads) != len(self.block_channels):
            bad(f"num_heads per level needs {len(self.block_channels)} entries, got {len(self.num_heads)}")
        if self.pooled_dim is not None and self.num_classes is not None:
            bad("pooled_dim and num_classes are exclusive (one vector is added to the time embedding)")
        if self.act not in ACTIVATIONS:
            bad(f"act must be one of {tuple(ACTIVATIONS)}, got {self.act!r}")
        if self.resblock_updown and self.resample_first:
            bad("resblock_updown and resample_first are exclusive")
        if (self.context_in_dim or self.context_norm_groups or self.text_pool_heads) and self.context_dim is None:
            bad("context_in_dim / context_norm_groups / text_pool_heads need a context_dim")
        if any(c % self.norm_groups for c in self.block_channels):
            bad(f"every block channel count must be divisible by norm_groups={self.norm_groups}")
        for level in set(self.attention_levels) | ({len(self.block_channels) - 1} if self.mid_attention else set()):
            self.heads_at(level)  # raises on widths that heads do not divide

    @property
    def downsamples(self) -> int:
        """How many times the network halves its input (sides must be multiples of 2 ** downsamples)."""
        return len(self.block_channels) - (0 if self.resample_first else 1)

    @property
    def emb_dim(self) -> int:
        return self.time_embed_dim or 4 * self.block_channels[0]

    def res_blocks_at(self, level: int) -> int:
        """Res blocks of a level on the way down."""
        return self.num_res_blocks[level] if isinstance(self.num_res_blocks, tuple) else self.num_res_blocks

    def heads_at(self, level: int) -> tuple[int, int]:
        """(heads, head_dim) of the attention layers at a level; the middle block uses the last level's."""
        ch = self.block_channels[level]
        if self.head_dim is not None:
            heads, width = ch // self.head_dim, self.head_dim
        else:
            heads = self.num_heads[level] if isinstance(self.num_heads, tuple) else self.num_heads
            width = ch // heads
        if heads < 1 or heads * width != ch:
            raise ValueError(f"UNetConfig: level {level} has {ch} channels, not divisible into {heads} heads")
        return heads, width

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"UNetConfig: unknown fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class UNetBlock(nn.Module):
    """One step of the UNet path: an optional ResBlock, optional attention, optional resampling (ADM)."""

    def __init__(
        self,
        res: ResBlock | None = None,
        attn: nn.Module | None = None,
        down: Downsample | None = None,
        up: Upsample | None = None,
    ):
        super().__init__()
        self.res, self.attn, self.down, self.up = res, attn, down, up
        self.res_up: ResBlock | None = None  # an upsampling res block after the rest (ADM resblock_updown)

    def forward(
        self,
        h: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        if self.res is not None:
            h = self.res(h, emb)
        if self.attn is not None:
            h = self.attn(h, context, context_mask)
        if self.down is not None:
            h = self.down(h)
        if self.up is not None:
            h = self.up(h, size)
        if self.res_up is not None:
            h = self.res_up(h, emb)
        return h


class MiddleBlock(nn.Module):
    """ResBlock, attention (optional), ResBlock at the lowest resolution (ADM)."""

    def __init__(self, res1: ResBlock, attn: nn.Module | None, res2: ResBlock):
        super().__init__()
        self.res1, self.attn, self.res2 = res1, attn, res2

    def forward(
        self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.res1(h, emb)
        if self.attn is not None:
            h = self.attn(h, context, context_mask)
        return self.res2(h, emb)


@dataclass(frozen=True, eq=False)
class ControlResiduals:
    """Additive residuals for the UNet's skips (one per skip, in order) and middle output (ControlNet, Zhang 2023)."""

    skips: tuple[torch.Tensor, ...]
    mid: torch.Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "skips", tuple(self.skips))

    def __add__(self, other: ControlResiduals) -> ControlResiduals:
        """Several controls at once: their residuals sum (ControlNet's composition of conditions, Zhang et al. 2023)."""
        if len(self.skips) != len(other.skips):
            raise ValueError(f"ControlResiduals: cannot add {len(other.skips)} skip residuals to {len(self.skips)}")
        return ControlResiduals(tuple(a + b for a, b in zip(self.skips, other.skips)), self.mid + other.mid)

    def scaled(self, scale: float) -> ControlResiduals:
        """Every residual times scale (a control's strength)."""
        return ControlResiduals(tuple(s * scale for s in self.skips), self.mid * scale)

    @classmethod
    def coerce(cls, control: ControlResiduals | Sequence[Any]) -> ControlResiduals:
        """ControlResiduals, a pair (skip residuals, mid residual), or diffusers' flat order [*skips, mid]."""
        if isinstance(control, cls):
            return control
        if isinstance(control, (list, tuple)) and len(control) == 2 and isinstance(control[0], (list, tuple)):
            return cls(tuple(control[0]), control[1])
        flat = isinstance(control, (list, tuple)) and len(control) >= 2
        if flat and all(isinstance(c, torch.Tensor) for c in control):
            return cls(tuple(control[:-1]), control[-1])
        raise ValueError("UNet: control must be ControlResiduals, a pair (skip residuals, mid residual) "
                         "or a flat list [*skip residuals, mid residual] of tensors")


class EncoderOutput(NamedTuple):
    """What the encoder half hands the decoder: skip activations, the middle output and the embedding."""

    skips: list[torch.Tensor]  # one (B, C_i, H_i, W_i) per skip connection, input conv first
    mid: torch.Tensor  # (B, C_last, H', W')
    emb: torch.Tensor  # (B, E)


class UNetEncoder(nn.Module):
    """The UNet's encoder half: embeddings, input conv, down path, middle block (ADM; ControlNet's trainable copy)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        self.gradient_checkpointing = False
        ch0, emb = cfg.block_channels[0], cfg.emb_dim
        self.time_embed = TimestepMLP(ch0, emb, cfg.act)
        self.class_embed = nn.Embedding(cfg.num_classes, emb) if cfg.num_classes is not None else None
        self.pooled_proj = None
        if cfg.pooled_dim is not None:
            self.pooled_proj = TimestepMLP(cfg.pooled_dim, emb, cfg.act) if cfg.pooled_mlp else nn.Linear(cfg.pooled_dim, emb)
        self.aug_embed = TimestepMLP(ch0, emb, cfg.act) if cfg.aug_level_embed else None
        tokens = cfg.context_in_dim or cfg.context_dim
        self.text_pool = TextTimeEmbedding(tokens, emb, cfg.text_pool_heads) if cfg.text_pool_heads else None
        self.context_proj = nn.Linear(tokens, cfg.context_dim) if cfg.context_in_dim else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch0, 3, padding=1)

        self.down = nn.ModuleList()
        skips = [] if cfg.resample_first else [ch0]
        self._skip_after: list[bool] = []  # whether each down block's output is a skip activation
        ch = ch0
        last = len(cfg.block_channels) - 1
        for level, out_ch in enumerate(cfg.block_channels):
            if cfg.resample_first:  # Imagen's DBlock: downsample, then the convolutions at the lower resolution
                self.down.append(UNetBlock(down=Downsample(ch)))
                self._skip_after.append(False)
            for _ in range(cfg.res_blocks_at(level)):
                self.down.append(UNetBlock(self._res(ch, out_ch), self._attn(level, out_ch)))
                ch = out_ch
                skips.append(ch)
                self._skip_after.append(True)
            if level != last and not cfg.resample_first and cfg.resblock_updown:
                self.down.append(UNetBlock(self._res(ch, ch, "down")))  # ADM resblock_updown
                skips.append(ch)
                self._skip_after.append(True)
            elif level != last and not cfg.resample_first:
                self.down.append(UNetBlock(down=Downsample(ch)))
                skips.append(ch)
                self._skip_after.append(True)

        self.mid = MiddleBlock(
            self._res(ch, ch), self._attn_layer(last, ch) if cfg.mid_attention else None, self._res(ch, ch)
        )
        self.skip_channels = tuple(skips)  # channels of each skip activation, in order
        self._encoder_parts = tuple(self._modules)  # the children a UNet's up path does not add

    @classmethod
    def from_unet(cls, unet: UNetEncoder) -> UNetEncoder:
        """A standalone copy of a UNet's encoder with its weights (ControlNet's initialisation, Zhang et al. 2023)."""
        encoder = cls(unet.config)
        encoder.load_state_dict(unet.encoder_state_dict())  # strict
        return encoder.to(unet.conv_in.weight)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The state-dict entries of the encoder half, under the same keys a standalone UNetEncoder has."""
        return {k: v for k, v in self.state_dict().items() if k.split(".", 1)[0] in self._encoder_parts}

    def _res(self, in_ch: int, out_ch: int, resample: str | None = None) -> ResBlock:
        c = self.config
        return ResBlock(in_ch, out_ch, c.emb_dim, groups=c.norm_groups, eps=c.norm_eps, scale_shift=c.scale_shift,
                        dropout=c.dropout, style=ResStyle(c.act, resample, c.res_out_scale))

    def _attn(self, level: int, ch: int) -> nn.Module | None:
        c = self.config
        if level not in c.attention_levels:
            return None
        return self._attn_layer(level, ch)

    def _attn_layer(self, level: int, ch: int) -> nn.Module:
        c = self.config
        heads, head_dim = c.heads_at(level)
        if c.attention_block == "adm":
            return AttentionBlock(ch, heads=heads, head_dim=head_dim, context_dim=c.context_dim, groups=c.norm_groups,
                                  context_groups=c.context_norm_groups)
        return SpatialTransformer(
            ch, heads=heads, head_dim=head_dim, context_dim=c.context_dim, depth=c.transformer_depth, groups=c.norm_groups,
            position=c.position_encoding,
        )

    @staticmethod
    def _per_sample(v: torch.Tensor | float, batch: int, device: torch.device, name: str) -> torch.Tensor:
        """A scalar or (B,) input as (B,)."""
        v = torch.as_tensor(v, device=device)
        v = v.reshape(-1).expand(batch) if v.numel() == 1 else v.reshape(-1)
        if v.shape[0] != batch:
            raise ValueError(f"UNet: {name} has {v.shape[0]} values for a batch of {batch}")
        return v  # (B,)

    def _embed(
        self,
        t: torch.Tensor | float,
        batch: int,
        pooled: torch.Tensor | None,
        device: torch.device,
        aug_level: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """Time embedding (B, E), plus the pooled / class and augmentation-level embeddings when the model has them."""
        ch0, dtype = self.config.block_channels[0], self.conv_in.weight.dtype
        t = self._per_sample(t, batch, device, "t")
        emb = self.time_embed(timestep_embedding(t, ch0).to(dtype))  # (B, E)
        if (self.aug_embed is None) != (aug_level is None):
            if aug_level is not None:
                raise ValueError("UNet: got `aug_level` but the model has no aug_level_embed")
            raise ValueError("UNet: this model is conditioned on `aug_level`, the (B,) augmentation level of its "
                             "low-res input (aug_level_embed=True); pass aug_level=")
        if self.aug_embed is not None:
            level = self._per_sample(aug_level, batch, device, "aug_level")
            emb = emb + self.aug_embed(timestep_embedding(level, ch0).to(dtype))  # (B, E); Ho et al. 2021 sec. 4.1
        extra = self.class_embed if self.class_embed is not None else self.pooled_proj
        if extra is None:
            if pooled is not None:
                raise ValueError("UNet: got `pooled` but the model has no pooled_dim / num_classes")
            return emb
        if pooled is None:
            raise ValueError("UNet: this model is conditioned on `pooled` (a (B, P) vector or (B,) class ids)")
        if self.class_embed is not None:
            if pooled.is_floating_point():
                raise ValueError("UNet: num_classes is set, so `pooled` must hold integer class ids (B,)")
            return emb + self.class_embed(pooled.reshape(batch))  # (B, E)
        return emb + self.pooled_proj(pooled.to(dtype))  # (B, E)

    def _call(self, block: nn.Module, *args: Any) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _check(self, x: torch.Tensor, context: torch.Tensor | None) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet: x must be (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        if cfg.context_dim is None and context is not None:
            raise ValueError("UNet: got `context` but the model has no context_dim")
        if cfg.context_dim is not None and context is None and self._has_attention():
            raise ValueError(f"UNet: this model attends to a token context (B, L, {cfg.context_dim}); pass context=")
        width = cfg.context_in_dim or cfg.context_dim
        if context is not None and (context.ndim != 3 or context.shape[-1] != width):
            raise ValueError(f"UNet: context must be (B, L, {width}), got {tuple(context.shape)}")

    def _has_attention(self) -> bool:
        return bool(self.config.attention_levels) or self.config.mid_attention

    def encode(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        *,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        aug_level: torch.Tensor | float | None = None,
        hint: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Inputs as `UNet.forward`; hint (B, C0, H, W) is added after the input conv (ControlNet's hint features)."""
        self._check(x, context)
        context_mask = _bool_mask(context_mask)
        emb = self._embed(t, x.shape[0], pooled, x.device, aug_level)  # (B, E)
        if self.text_pool is not None and context is not None:
            emb = emb + self.text_pool(context.to(emb.dtype))  # (B, E); IF's pooled text
        context = self._project(context)  # (B, L, context_dim)
        h = self.conv_in(x)  # (B, C0, H, W)
        if hint is not None:
            if hint.shape != h.shape:
                raise ValueError(f"UNet: hint must be {tuple(h.shape)} (the input conv's output), "
                                 f"got {tuple(hint.shape)}")
            h = h + hint
        skips = [] if self.config.resample_first else [h]
        for block, is_skip in zip(self.down, self._skip_after):
            h = self._call(block, h, emb, context, context_mask)
            if is_skip:
                skips.append(h)
        h = self._call(self.mid, h, emb, context, context_mask)  # (B, C_last, H', W')
        return EncoderOutput(skips, h, emb)

    def _project(self, context: torch.Tensor | None) -> torch.Tensor | None:
        """Arriving tokens mapped to context_dim where the model has context_in_dim (IF's text projection)."""
        if self.context_proj is None or context is None:
            return context
        return self.context_proj(context.to(self.context_proj.weight.dtype))  # (B, L, context_dim)

    forward = encode  # calling a standalone encoder encodes; UNet overrides forward with the whole network


class UNet(UNetEncoder):
    """ADM/LDM UNet: x (B, C_in, H, W), t (B,) -> (B, C_out, H, W); the encoder half plus an up path (DDPM)."""

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        cfg = config
        skips = list(self.skip_channels)
        ch = cfg.block_channels[-1]
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.block_channels))):
            out_ch = cfg.block_channels[level]
            n = cfg.res_blocks_at(level) + (0 if cfg.resample_first else 1)  # ADM: one more on the way up
            for i in range(n):  # Imagen's UBlock upsamples after its convolutions, at every level
                resample = i == n - 1 and (level != 0 or cfg.resample_first)
                up = Upsample(out_ch) if resample and not cfg.resblock_updown else None
                self.up.append(UNetBlock(self._res(ch + skips.pop(), out_ch), self._attn(level, out_ch), up=up))
                if resample and cfg.resblock_updown:
                    self.up[-1].res_up = self._res(out_ch, out_ch, "up")
                ch = out_ch

        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # a fresh model predicts zero (ADM zero_module)
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        *,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        control: ControlResiduals | Sequence[Any] | None = None,
        aug_level: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """x (B, C_in, H, W); t (B,) or scalar, may be fractional; context (B, L, D) tokens with
        context_mask (B, L) bool (True = real token); pooled (B, P) floats or (B,) class ids;
        control: additive residuals for every skip and the middle output (ControlNet; ControlResiduals,
        a pair (skips, mid) or diffusers' flat down_block_additional_residuals + mid order);
        aug_level (B,) or scalar: the low-res input's augmentation level, in timestep units (Imagen)."""
        context_mask = _bool_mask(context_mask)
        enc = self.encode(x, t, context=context, context_mask=context_mask, pooled=pooled, aug_level=aug_level)
        skips, h, emb = enc.skips, enc.mid, enc.emb
        context = self._project(context)  # (B, L, context_dim)
        if control is not None:
            skips, h = _add_control(ControlResiduals.coerce(control), skips, h)
        scale = self.config.skip_scale
        for block in self.up:
            skip = skips.pop()
            h = torch.cat([h, skip * scale if scale != 1 else skip], dim=1)  # (B, C + C_skip, H, W); Imagen: 2^-0.5
            size = tuple(skips[-1].shape[-2:]) if skips else tuple(x.shape[-2:])  # where an upsample goes
            h = self._call(block, h, emb, context, context_mask, size)
        return self.conv_out(ACTIVATIONS[self.config.act](self.norm_out(h)))  # (B, C_out, H, W)


def _add_control(
    control: ControlResiduals, skips: list[torch.Tensor], mid: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Skips and middle output plus their residuals, count and shapes checked (ControlNet, Zhang et al. 2023 eq. 2)."""
    if len(control.skips) != len(skips):
        raise ValueError(f"UNet: control needs {len(skips)} skip residuals (one per skip connection) and one for "
                         f"the middle block, got {len(control.skips)} skip residuals")
    for i, (s, c) in enumerate(zip(skips, control.skips)):
        if c.shape != s.shape:
            raise ValueError(f"UNet: control skip residual {i} is {tuple(c.shape)}, its skip is {tuple(s.shape)}")
    if control.mid.shape != mid.shape:
        raise ValueError(f"UNet: control mid residual is {tuple(control.mid.shape)}, "
                         f"the middle output is {tuple(mid.shape)}")
    return [s + c.to(s.dtype) for s, c in zip(skips, control.skips)], mid + control.mid.to(mid.dtype)


def _bool_mask(context_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A (B, L) token mask as bool (True = real token); float masks are thresholded at 0.5."""
    if context_mask is None or context_mask.dtype == torch.bool:
        return context_mask
    return context_mask > 0.5  # (B, L) bool
