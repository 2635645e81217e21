"""An inpainting twin shipped beside an LDM's text-to-image UNet, as Stable Diffusion ships its inpainting
model (Rombach et al. 2022): same autoencoder and text encoder, a UNet that also takes the mask and the
masked image's latents; `LDM.run` picks it whenever a request has a mask."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from t2i.systems.ldm import LDM


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    theirs = b.state_dict()
    return all(k in theirs and torch.equal(v, theirs[k].to(v.dtype)) for k, v in a.state_dict().items())


def with_inpainting(base: LDM, inpainter: LDM) -> LDM:
    """`base` with `inpainter`'s UNet as its inpainting twin; both must share autoencoder and text encoder
    (an inpainting run started from `base` with `freeze_text = true` over `first_stage = base`)."""
    if not inpainter.config.inpainting or inpainter.config.unet != base.config.inpainting_twin():
        raise ValueError(f"{inpainter.name!r} is not an inpainting twin of {base.name!r}: its UNet is "
                         f"{inpainter.config.unet}, the twin would be {base.config.inpainting_twin()}")
    for part in ("autoencoder", "text_encoder"):
        if not _same(getattr(inpainter, part), getattr(base, part)):
            raise ValueError(f"{inpainter.name!r} has another {part} than {base.name!r} (train it with "
                             "freeze_text = true, init_from and first_stage = the base system)")
    config = dataclasses.replace(base.config, inpaint_unet=True)
    return LDM(config, base.unet, base.autoencoder, base.text_encoder, base.name, inpainter.unet)


def add_inpainting(system: str | os.PathLike, run: str | os.PathLike, dst: str | os.PathLike,
                   dtype: torch.dtype | None = None) -> Path:
    """Save the LDM `system` (a folder or shipped name) with the inpainting UNet of the `t2i train` run `run`
    to `dst` (may be the system's own folder), cast to `dtype` when given."""
    from t2i.api.runs import system_from_training_run
    from t2i.io.weights import system_folder

    folder = system_folder(system)
    if folder is None:
        raise ValueError(f"{system!r}: neither a t2i system folder (system.json) nor a shipped system")
    return with_inpainting(LDM.load(folder), system_from_training_run(run)).save(dst, dtype)
