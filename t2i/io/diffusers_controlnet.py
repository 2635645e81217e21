"""diffusers `ControlNetModel` folders and the original single-file ControlNet layout (lllyasviel/ControlNet's
cldm: `control_model.input_blocks...`, `input_hint_block`, `zero_convs`, `middle_block_out`) <-> t2i `ControlNet`.

The trainable encoder copy reuses the UNet maps (`diffusers_unet.diffusers_table`, `sd_single_file.ldm_unet_table`)
restricted to the encoder's tensors; only the hint encoder, the zero convolutions and the middle's zero
convolution are named here. A single file stores no config: its UNet config is the base's (head counts are
not in the tensors either), its hint encoder's widths are read from the tensors.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from t2i.io.diffusers_unet import WEIGHTS_NAME, diffusers_table, unet_config_from_diffusers
from t2i.io.keymap import Rename, from_layout, renames, to_layout
from t2i.io.sd_single_file import ldm_unet_table
from t2i.io.weights import load_into, load_model_folder, load_safetensors, save_safetensors
from t2i.nn.controlnet import ControlNet, ControlNetConfig
from t2i.nn.unet import UNetConfig

SINGLE_FILE_PREFIX = "control_model."
_REQUIRED = {"controlnet_conditioning_channel_order": "rgb", "global_pool_conditions": False}


@dataclass(frozen=True)
class ControlNetLayout:
    """A public layout of a ControlNet: its UNet table, and its names of the hint convs (in order: input conv,
    the blocks, output conv), of the i-th skip's zero conv and of the middle's zero conv."""

    unet_table: Callable[..., list[Rename]]
    hint: Callable[[int, int], str]  # (conv index, number of hint convs) -> module name
    zero: str  # format string of the i-th zero conv
    mid: str
    name: str

    def table(self, cfg: ControlNetConfig, *, linear_projection: bool = False) -> list[Rename]:
        """Every t2i ControlNet tensor and its name in this layout."""
        shapes = expected_shapes(cfg)
        unet = self.unet_table(cfg.unet, linear_projection=linear_projection)
        rows = [Rename(f"encoder.{r.ours}", r.theirs, r.conv1x1) for r in unet if f"encoder.{r.ours}" in shapes]
        convs = ["hint.conv_in"] + [f"hint.blocks.{j}" for j in range(2 * len(cfg.hint_block_channels) - 2)]
        convs.append("hint.conv_out")
        for i, ours in enumerate(convs):
            rows += renames(ours, self.hint(i, len(convs)))
        for i in range(sum(k.startswith("zero_convs.") and k.endswith(".weight") for k in shapes)):
            rows += renames(f"zero_convs.{i}", self.zero.format(i))
        return rows + renames("mid_out", self.mid)

    def read(self, state: dict[str, torch.Tensor], cfg: ControlNetConfig) -> dict[str, torch.Tensor]:
        return from_layout(self.table(cfg), state, expected=expected_shapes(cfg), where=self.name)

    def write(self, state: dict[str, torch.Tensor], cfg: ControlNetConfig, *,
              linear_projection: bool = False) -> dict[str, torch.Tensor]:
        return to_layout(self.table(cfg, linear_projection=linear_projection), state, where="t2i ControlNet")


def _diffusers_hint(i: int, n: int) -> str:
    return "controlnet_cond_embedding." + ("conv_in" if i == 0 else "conv_out" if i == n - 1 else f"blocks.{i - 1}")


DIFFUSERS_LAYOUT = ControlNetLayout(diffusers_table, _diffusers_hint, "controlnet_down_blocks.{}",
                                    "controlnet_mid_block", "diffusers ControlNet")
SINGLE_FILE_LAYOUT = ControlNetLayout(ldm_unet_table, lambda i, n: f"input_hint_block.{2 * i}", "zero_convs.{}.0",
                                      "middle_block_out.0", "single-file ControlNet")


def expected_shapes(cfg: ControlNetConfig) -> dict[str, torch.Size]:
    """t2i ControlNet tensor name -> shape (built on the meta device)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in ControlNet(cfg).state_dict().items()}


def controlnet_config_from_diffusers(d: dict[str, Any]) -> ControlNetConfig:
    """A diffusers ControlNetModel config (config.json) -> ControlNetConfig; refuses what t2i lacks."""
    for key, want in _REQUIRED.items():
        if d.get(key, want) != want:
            raise ValueError(f"unsupported diffusers ControlNet option {key}={d[key]!r} (t2i supports only {want!r})")
    down = list(d.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)))
    up = [b.replace("Down", "Up") for b in reversed(down)]  # a ControlNet has no up path: mirror the down path
    unet = unet_config_from_diffusers({**d, "up_block_types": up, "out_channels": d.get("in_channels", 4)})
    return ControlNetConfig(unet, d.get("conditioning_channels", 3),
                            tuple(d.get("conditioning_embedding_out_channels", (16, 32, 96, 256))))


def load_diffusers_controlnet(folder: str | os.PathLike) -> ControlNet:
    """A t2i ControlNet from a diffusers `ControlNetModel` folder (config.json + safetensors weights)."""
    return load_model_folder(folder, WEIGHTS_NAME, lambda d: ControlNet(controlnet_config_from_diffusers(d)),
                             DIFFUSERS_LAYOUT.read)


def _hint_widths(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The hint encoder's widths from the single-file `input_hint_block.<2i>.weight` shapes."""
    convs = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"input_hint_block\.(\d+)\.weight", k)))
    if len(convs) < 2:
        raise ValueError("single-file ControlNet: no input_hint_block convolutions")
    return tuple(int(state[f"input_hint_block.{i}.weight"].shape[0]) for i in convs[:-1:2])


def load_controlnet_single_file(path: str | os.PathLike, unet: UNetConfig) -> ControlNet:
    """A t2i ControlNet from an original single-file ControlNet (.safetensors) over a base UNet of config `unet`
    (tensors under `control_model.`, or unprefixed; any other tensors of the file are not read)."""
    state = load_safetensors(path)
    if any(k.startswith(SINGLE_FILE_PREFIX) for k in state):
        state = {k[len(SINGLE_FILE_PREFIX):]: v for k, v in state.items() if k.startswith(SINGLE_FILE_PREFIX)}
    first = state.get("input_hint_block.0.weight")
    if first is None:
        raise ValueError(f"{path}: no input_hint_block tensors: not an original-layout ControlNet file")
    net = ControlNet(ControlNetConfig(unet, int(first.shape[1]), _hint_widths(state)))
    load_into(net, SINGLE_FILE_LAYOUT.read(state, net.config), where=str(path))
    return net


def save_controlnet_single_file(net: ControlNet, path: str | os.PathLike, *, linear_projection: bool = False) -> Path:
    """Write a t2i ControlNet in the original single-file layout (tensors under `control_model.`)."""
    state = SINGLE_FILE_LAYOUT.write(net.state_dict(), net.config, linear_projection=linear_projection)
    return save_safetensors({SINGLE_FILE_PREFIX + k: v for k, v in state.items()}, path,
                            metadata={"format": "pt", "written_by": "t2i"})
