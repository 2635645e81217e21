"""The text flow's data layers: the UNet's topology over a vector instead of an image (Xu et al. 2023, Versatile
Diffusion sec. 3.2: fully connected residual blocks). A level's state is a (B, C, S, 1) map (S = 4 "rows"), every
convolution is a Linear over its C*S flattening, as diffusers' UNetFlatConditionModel (LinearMultiDim,
ResnetBlockFlat) computes; the attention layers are the image UNet's, attending over the S rows."""

from __future__ import annotations

import math

import torch
from torch import nn

from t2i.nn.resblock import ResBlock, ResStyle
from t2i.nn.unet import UNet, UNetConfig

ROWS = 4  # S: the rows of every flat level (diffusers' second_dim); fewer make the text layers ~S^2 times smaller


class FlatLinear(nn.Linear):
    """A Linear from a (C_in, S_in, 1) state to a (C_out, S_out, 1) one over their flattenings (VD's LinearMultiDim)."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        super().__init__(math.prod(in_shape), math.prod(out_shape))
        self.out_shape = tuple(out_shape)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """x (B, *in_shape) -> (B, *out_shape); size (an upsampling target) is ignored: flat levels do not resample."""
        b = x.shape[0]
        return super().forward(x.reshape(b, -1)).view(b, *self.out_shape)


class FlatResBlock(ResBlock):
    """A ResBlock with 1x1 kernels over the (B, C*S, 1, 1) flattening of a (B, C, S, 1) state (VD's ResnetBlockFlat)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, *, groups: int, eps: float,
                 dropout: float = 0.0, rows: int = ROWS):
        super().__init__(in_channels * rows, out_channels * rows, emb_dim, groups=groups, eps=eps, dropout=dropout,
                         style=ResStyle(kernel=1))
        self.out_channels, self.rows = out_channels, rows

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, S, 1), emb (B, E) -> (B, C_out, S, 1)."""
        b = x.shape[0]
        return super().forward(x.reshape(b, -1, 1, 1), emb).view(b, self.out_channels, self.rows, 1)


class FlatUNet(UNet):
    """The UNet over a (B, D) vector: same levels, skips and attention; Linear in/out and resampling, flat res blocks.

    Called with x (B, D, 1, 1) like a UNet; no level halves anything. `rows` is S (diffusers' second_dim, 4);
    `groups` (0: config.norm_groups) the GroupNorm groups of its res blocks and output norm, not of its attention."""

    def __init__(self, config: UNetConfig, rows: int = ROWS, groups: int = 0):
        if rows < 1 or groups < 0:
            raise ValueError(f"FlatUNet: rows must be at least 1 and groups at least 0, got {rows}, {groups}")
        self.rows, self.groups = rows, groups or config.norm_groups  # read by _res during UNet.__init__
        if config.scale_shift or config.resblock_updown or config.resample_first or config.attention_block != "transformer":
            raise ValueError("FlatUNet: only the LDM layout (transformer attention, no scale-shift, conv resampling)")
        super().__init__(config)
        ch0 = config.block_channels[0]
        self.conv_in = FlatLinear((config.in_channels, 1, 1), (ch0, rows, 1))
        for block in list(self.down) + list(self.up):
            for name in ("down", "up"):
                if getattr(block, name) is not None:
                    ch = getattr(block, name).conv.in_channels
                    setattr(block, name, FlatLinear((ch, rows, 1), (ch, rows, 1)))
        self.norm_out = nn.GroupNorm(self.groups, ch0, eps=config.norm_eps)
        self.conv_out = FlatLinear((ch0, rows, 1), (config.out_channels, 1, 1))
        nn.init.zeros_(self.conv_out.weight)  # a fresh model predicts zero, as the image UNet does
        nn.init.zeros_(self.conv_out.bias)

    def _res(self, in_ch: int, out_ch: int, resample: str | None = None) -> ResBlock:
        c = self.config
        return FlatResBlock(in_ch, out_ch, c.emb_dim, groups=self.groups, eps=c.norm_eps, dropout=c.dropout,
                            rows=self.rows)
