"""ControlNet (Zhang, Rao & Agrawala 2023): a trainable copy of a UNet's encoder half and middle block, fed the
control image through a small hint encoder, whose activations reach the frozen UNet through zero-initialised
1x1 convolutions ("zero convolutions") added to its skips and its middle output (paper eq. 2-4).

At initialisation every zero convolution outputs exactly 0, so the controlled UNet computes exactly the base
UNet's function (the paper's sec. 3.1 argument): a test shows the generated images are bit-identical.
`ControlledUNet` is the network a denoiser wraps: the base UNet plus any number of ControlNets, their
residuals summed, each scaled (the paper's composition of several conditions, sec. 3.4 / fig. 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from t2i.config import Config
from t2i.nn.unet import ControlResiduals, UNet, UNetConfig, UNetEncoder


def zero_module(module: nn.Module) -> nn.Module:
    """Every parameter set to 0 (ControlNet's zero convolution, ADM's zero_module)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


@dataclass(frozen=True)
class ControlNetConfig(Config):
    """A ControlNet over a UNet of config `unet`; `hint_block_channels` are the hint encoder's widths, one stride-2
    convolution between consecutive entries, so the control image is 2 ** (len - 1) times the UNet's input side
    (3 entries: 4x, the shipped LDM's f = 4 autoencoder; diffusers' SD default (16, 32, 96, 256): 8x)."""

    unet: UNetConfig = UNetConfig()
    hint_in_channels: int = 3  # the control image's channels (RGB in [0, 1])
    hint_block_channels: tuple[int, ...] = (16, 32, 96, 256)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hint_block_channels", tuple(int(c) for c in self.hint_block_channels))
        if not self.hint_block_channels or min(self.hint_block_channels) < 1 or self.hint_in_channels < 1:
            raise ValueError("ControlNetConfig: hint_block_channels needs at least one width >= 1, "
                             "hint_in_channels >= 1")

    @property
    def hint_downscale(self) -> int:
        """Control-image side / UNet-input side."""
        return 2 ** (len(self.hint_block_channels) - 1)


class HintEncoder(nn.Module):
    """Control image (B, C_hint, H, W) -> (B, C0, H / f, W / f), the UNet input conv's width: 3x3 convs with
    SiLU, a stride-2 conv between widths, and a zero-initialised last conv (diffusers'
    ControlNetConditioningEmbedding; the paper's 4x4-kernel 'tiny network' E, sec. 3.2)."""

    def __init__(self, in_channels: int, widths: Sequence[int], out_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(a, a, 3, padding=1))
            self.blocks.append(nn.Conv2d(a, b, 3, padding=1, stride=2))
        self.conv_out = zero_module(nn.Conv2d(widths[-1], out_channels, 3, padding=1))

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(hint))  # (B, W0, H, W)
        for conv in self.blocks:
            h = F.silu(conv(h))  # (B, W_i, H / 2^i, W / 2^i)
        return self.conv_out(h)  # (B, C0, H / f, W / f)


class ControlNet(nn.Module):
    """(x, t, hint image, text conditioning) -> ControlResiduals for a UNet of the same config."""

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        self.config = config
        self.encoder = UNetEncoder(config.unet)
        self.hint = HintEncoder(config.hint_in_channels, config.hint_block_channels, config.unet.block_channels[0])
        self.zero_convs = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in self.encoder.skip_channels)
        last = config.unet.block_channels[-1]
        self.mid_out = zero_module(nn.Conv2d(last, last, 1))

    @classmethod
    def from_unet(cls, unet: UNetEncoder, hint_block_channels: Sequence[int] = (16, 32, 96, 256),
                  hint_in_channels: int = 3) -> ControlNet:
        """A ControlNet whose encoder is a copy of the UNet's (the paper's trainable copy, sec. 3.1)."""
        net = cls(ControlNetConfig(unet.config, hint_in_channels, tuple(hint_block_channels)))
        net.encoder.load_state_dict(unet.encoder_state_dict())  # strict
        return net.to(unet.conv_in.weight)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        hint: torch.Tensor,
        *,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        aug_level: torch.Tensor | float | None = None,
    ) -> ControlResiduals:
        """x (B, C_in, h, w) as the UNet's input; hint (B, C_hint, h * f, w * f) the control image in [0, 1]."""
        f = self.config.hint_downscale
        want = (x.shape[0], self.config.hint_in_channels, x.shape[-2] * f, x.shape[-1] * f)
        if tuple(hint.shape) != want:
            raise ValueError(f"ControlNet: the control image must be {want} (the input's side x {f}), "
                             f"got {tuple(hint.shape)}")
        enc = self.encoder.encode(x, t, context=context, context_mask=context_mask, pooled=pooled,
                                  aug_level=aug_level, hint=self.hint(hint.to(x.dtype)))
        skips = tuple(conv(s) for conv, s in zip(self.zero_convs, enc.skips))  # each (B, C_i, H_i, W_i)
        return ControlResiduals(skips, self.mid_out(enc.mid))


def guess_mode_scales(n: int) -> torch.Tensor:
    """Per-residual scales of guess mode, shallow to deep (skips then middle): 10^-1 .. 10^0, as diffusers'
    `torch.logspace(-1, 0, n)` (the paper's 0.825^(12 - i) for SD's 13 residuals, sec. 4 / fig. 14)."""
    return torch.logspace(-1, 0, n)


class ControlledUNet:
    """A UNet steered by ControlNets: net(x, t, hints=(B, K, C, H, W), ...) sums the K ControlNets'
    residuals, the k-th times scales[k], and adds them to the UNet's skips and middle (paper eq. 4). With
    `guess`, residual i is also scaled by guess_mode_scales; `control_weight` (B,) weighs each sample's
    residuals (classifier-free guidance in guess mode: 1 in the conditional branch, 0 in the other)."""

    def __init__(self, unet: UNet, nets: Sequence[ControlNet], scales: Sequence[float], guess: bool = False):
        if len(nets) != len(scales):
            raise ValueError(f"ControlledUNet: {len(nets)} ControlNets but {len(scales)} scales")
        self.unet, self.nets, self.scales, self.guess = unet, list(nets), [float(s) for s in scales], guess

    def residuals(self, x: torch.Tensor, t: torch.Tensor, hints: torch.Tensor, text: dict) -> ControlResiduals:
        """The summed, scaled residuals of every ControlNet; hints (B, K, C, H, W)."""
        if hints.ndim != 5 or hints.shape[1] != len(self.nets):
            raise ValueError(f"ControlledUNet: hints must be (B, {len(self.nets)}, C, H, W), got {tuple(hints.shape)}")
        total = None
        for k, (net, scale) in enumerate(zip(self.nets, self.scales)):
            r = net(x, t, hints[:, k], **text).scaled(scale)
            total = r if total is None else total + r
        return total

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        hints: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        control_weight: torch.Tensor | None = None,
        aug_level: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        text = dict(context=context, context_mask=context_mask, pooled=pooled, aug_level=aug_level)
        r = self.residuals(x, t, hints, text)
        parts = [*r.skips, r.mid]
        if self.guess:
            parts = [p * s for p, s in zip(parts, guess_mode_scales(len(parts)).tolist())]
        if control_weight is not None:
            parts = [p * control_weight.to(p).reshape(-1, 1, 1, 1) for p in parts]
        return self.unet(x, t, control=ControlResiduals(tuple(parts[:-1]), parts[-1]), **text)
