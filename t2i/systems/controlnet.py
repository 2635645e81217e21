"""ControlNet (Zhang, Rao & Agrawala 2023): a frozen LDM steered by control images (edges, segmentation,
scribble, ...), one trainable ControlNet per control kind; several controls at once sum their residuals, each
with its scale; an empty prompt is guess mode (the control acts in the conditional branch of classifier-free
guidance only, its residuals scaled shallow to deep, paper sec. 4).

Composition only: the networks are `t2i.nn.controlnet`, the sampling is the LDM's own `run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from t2i.config import Config
from t2i.nn.controlnet import ControlledUNet, ControlNet, ControlNetConfig
from t2i.systems.base import load_module, read_system, save_module, system_folder, write_system_json
from t2i.systems.image_checks import ControlNoteWarning, control_maps  # noqa: F401  (re-exported)
from t2i.systems.ldm import LDM
from t2i.systems.request import GenerationRequest
from t2i.systems.system import SystemBase, register

FORMAT = 1
BASE_FOLDER = "base"  # where a base that is no shipped system is stored, inside the ControlNet folder


@dataclass(frozen=True)
class ControlNetSystemConfig(Config):
    """Which base LDM (a shipped system's name, or "" = stored in the folder's base/), the control kinds (one
    ControlNet each, files controlnet_<kind>.safetensors) and their architecture."""

    base: str = "ldm"
    kinds: tuple[str, ...] = ("edges",)
    controlnet: ControlNetConfig = ControlNetConfig()


@register("controlnet")
class ControlNetSystem(SystemBase):
    """A frozen LDM + ControlNets by control kind: `generate(prompt, control=image, control_type="edges")`."""

    def __init__(self, config: ControlNetSystemConfig, base: LDM, controlnets: dict[str, ControlNet],
                 name: str = "controlnet"):
        super().__init__()
        self.config, self.name = config, name
        self.base = base.requires_grad_(False)  # frozen: only the ControlNets train (paper sec. 3.2)
        self.controlnets = nn.ModuleDict(controlnets)

    @classmethod
    def over(cls, base: LDM, kinds: tuple[str, ...], hint_width: int = 16, base_name: str = "") -> "ControlNetSystem":
        """Fresh ControlNets copied from the base's UNet encoder (zero convolutions: the base's images); the hint
        encoder doubles hint_width at each of its log2(f) stride-2 convs (f: the autoencoder's factor)."""
        widths = tuple(hint_width * 2**i for i in range(base.config.autoencoder.downscale.bit_length()))
        return cls.of(base, {k: ControlNet.from_unet(base.unet, widths) for k in kinds}, base_name)

    @classmethod
    def of(cls, base: LDM, nets: dict[str, ControlNet], base_name: str = "") -> "ControlNetSystem":
        """Trained or imported ControlNets (one config) over their base; base_name: a shipped system's name."""
        ae, config = base.config.autoencoder, next(iter(nets.values())).config
        fits = (config.unet.block_channels, config.hint_downscale) == (base.unet.config.block_channels, ae.downscale)
        if not fits or any(n.config != config for n in nets.values()):
            raise ValueError(f"the ControlNets for {', '.join(nets)} do not fit one another or the base {base.name!r}")
        return cls(ControlNetSystemConfig(base_name, tuple(nets), config), base, nets, f"controlnet-{base.name}")

    @classmethod
    def tiny(cls, seed: int = 0) -> "ControlNetSystem":
        """Two ControlNets over the tiny LDM (16 px images, 4 px latents) for contract tests."""
        return cls.over(LDM.tiny(seed), ("edges", "scribble"), 8)

    @property
    def capabilities(self) -> frozenset[str]:
        return self.base.capabilities | {"control"}

    @property
    def inpainting_only(self) -> bool:
        return self.base.inpainting_only

    @property
    def per_image_noise(self) -> bool:  # the base LDM's run draws the noise, so its scheme
        return self.base.per_image_noise

    @property
    def default_sampling(self):
        return self.base.default_sampling

    def check(self, request: GenerationRequest) -> GenerationRequest:
        request = super().check(request)
        for _, kind, _ in request.controls:
            self.kind_of(kind)  # raises on a kind without a ControlNet here
        return request

    def kind_of(self, kind: str | None) -> str:
        """The ControlNet a control uses: its control_type, or the only kind this system has."""
        kinds = list(self.controlnets)
        if kind is None and len(kinds) == 1:
            return kinds[0]
        if kind is None or kind not in self.controlnets:
            raise ValueError(f"{'give a control_type' if kind is None else f'no ControlNet for {kind!r}'}: "
                             f"{self.name!r} has ControlNets for {', '.join(kinds)} (--control-type)")
        return kind

    def extra_metadata(self, request: GenerationRequest) -> dict[str, str]:
        return {"control_type": ",".join(self.kind_of(k) for _, k, _ in request.controls)} if request.controls else {}

    def controlled(self, request: GenerationRequest) -> Callable | None:
        """The LDM run's network hook: the UNet under the request's ControlNets; guess mode on an empty prompt."""
        if not request.controls:
            return None
        nets = [self.controlnets[self.kind_of(k)] for _, k, _ in request.controls]
        guess = not any(p.strip() for p in request.prompts)

        def hook(unet: nn.Module, cond: dict, uncond: dict | None, size: tuple[int, int]) -> tuple:
            hints = control_maps(request, size).to(self.device, next(unet.parameters()).dtype)
            b = len(request.batch)
            extra = {"hints": hints.expand(b, *hints.shape[1:])}
            net = ControlledUNet(unet, nets, [s for _, _, s in request.controls], guess=guess)
            if uncond is None:
                return net, {**cond, **extra}, None
            weight = torch.ones(b, device=self.device)  # guess mode: control in the conditional branch only
            return net, {**cond, **extra, "control_weight": weight}, {**uncond, **extra,
                                                                        "control_weight": weight * (not guess)}
        return hook

    def run(self, request: GenerationRequest, progress: Callable[[int], None] | None,
            generator: torch.Generator) -> torch.Tensor:
        return self.base.run(request, progress, generator, network=self.controlled(request))

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """system.json and controlnet_<kind>.safetensors; the base under base/ unless it is a shipped system."""
        folder = Path(folder)
        if not self.config.base:
            self.base.save(folder / BASE_FOLDER, dtype)
        for kind, net in self.controlnets.items():
            save_module(net, folder / f"controlnet_{kind}.safetensors", dtype)
        write_system_json(folder, "controlnet", FORMAT, self.name, self.config)
        return folder

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None) -> "ControlNetSystem":
        config, saved_name = read_system(folder := Path(folder), "controlnet", FORMAT, ControlNetSystemConfig)
        base = _load_base(config.base or folder / BASE_FOLDER)
        nets = {kind: ControlNet(config.controlnet) for kind in config.kinds}
        for kind, net in nets.items():
            load_module(net, folder / f"controlnet_{kind}.safetensors")
        return cls(config, base, nets, name or saved_name).eval()


def _load_base(name_or_path: Any) -> LDM:
    folder = system_folder(name_or_path)
    if folder is None:
        raise ValueError(f"the ControlNet's base LDM {str(name_or_path)!r} is not installed (no system.json)")
    return LDM.load(folder)
