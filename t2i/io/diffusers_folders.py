"""diffusers pipeline folders -> whole t2i systems: model_index.json's `_class_name` picks the loader.

`PIPELINES` is the one table of the pipeline classes t2i assembles; `t2i.load(FOLDER)` and `t2i convert` go
through `load_diffusers_folders`. A loader takes the folder, and where `FOLLOWERS` says so the folder of the
next pipeline of its cascade (DeepFloyd IF's stage II after its stage I).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from t2i.io.diffusers_if import convert_if
from t2i.io.diffusers_pipeline import PIPELINES as SD_PIPELINES, load_diffusers_pipeline, load_sd_parts
from t2i.systems.base import read_json_object

# a diffusers ControlNet folder names no control kind: words of its folder name -> t2i's kind, else "edges"
_CONTROL_WORDS = {"seg": "segmentation", "scribble": "scribble", "depth": "depth"}


def load_controlnet_pipeline(folder: str | os.PathLike, name: str | None = None):
    """A StableDiffusionControlNetPipeline folder (the SD parts + controlnet/, one ControlNetModel) -> a t2i
    ControlNetSystem over the folder's SD as its base, the ControlNet's kind guessed from the folder's name."""
    from t2i.io.diffusers_controlnet import load_diffusers_controlnet
    from t2i.systems.controlnet import ControlNetSystem

    folder = Path(folder)
    net = read_json_object(folder / "model_index.json").get("controlnet", [None, None])[1]
    if net != "ControlNetModel":
        raise ValueError(f"{folder}: its controlnet is a {net}; t2i loads one ControlNetModel (controlnet/)")
    kind = next((k for word, k in _CONTROL_WORDS.items() if word in folder.name.lower()), "edges")
    return ControlNetSystem.of(load_sd_parts(folder, name), {kind: load_diffusers_controlnet(folder / "controlnet")})


# model_index.json's _class_name -> the loader of the whole t2i system (LDM, ControlNetSystem, Imagen)
PIPELINES: dict[str, Callable[..., Any]] = {
    **{cls: load_diffusers_pipeline for cls in SD_PIPELINES},
    "StableDiffusionControlNetPipeline": load_controlnet_pipeline,
    "IFPipeline": convert_if,  # stage I alone, or with its IFSuperResolutionPipeline folder: one Imagen cascade
}
FOLLOWERS = {"IFPipeline": "IFSuperResolutionPipeline"}  # the class of the second folder a loader takes
_HINTS = {"IFSuperResolutionPipeline": " (IF's stage II: give it after its IFPipeline folder, "
                                       "`t2i convert IF_I IF_II DST --to t2i`)"}


def pipeline_class(folder: str | os.PathLike) -> str:
    """The diffusers pipeline class a folder's model_index.json names."""
    return str(read_json_object(Path(folder) / "model_index.json").get("_class_name"))


def load_diffusers_folders(*folders: str | os.PathLike):
    """One t2i system from a diffusers pipeline folder, or from a pipeline folder and its follower's (IF stage
    I, stage II); anything else is a one-line ValueError naming the classes t2i loads."""
    folders_ = [Path(f) for f in folders]
    kinds = [pipeline_class(f) for f in folders_]
    loader = PIPELINES.get(kinds[0])
    if loader is None:
        raise ValueError(f"{folders_[0]}: a diffusers {kinds[0]} folder{_HINTS.get(kinds[0], '')}; t2i loads "
                         f"{', '.join(PIPELINES)}")
    follower = FOLLOWERS.get(kinds[0])
    if len(kinds) > 2 or (len(kinds) == 2 and kinds[1] != follower):
        raise ValueError(f"{folders_[0]}: a {kinds[0]} folder takes "
                         f"{f'one {follower} folder after it' if follower else 'no second folder'}, not "
                         f"{', '.join(kinds[1:])}")
    return loader(*folders_)

