"""The image parts of a `GenerationRequest`'s checks (init image, mask, control images) and the control
images at the output size; each failure a one-line ValueError, a resized control image a one-line note."""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
from PIL import Image

from t2i.io.images import image_to_tensor


class ControlNoteWarning(UserWarning):
    """A control image was resized to the output's size."""


def _short(v: Any) -> str:
    """A value for a one-line message: its repr, cut to 60 characters."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _finite(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {_short(v)}")


def _as_tuple(v: Any, n: int | None = None) -> tuple:
    """One value or a list of them as a tuple (one value repeated n times when n is given)."""
    if isinstance(v, (list, tuple)):
        return tuple(v)
    return (v,) * (n or 1)


def check_controls(r: Any, control_types: tuple[str, ...]) -> None:
    """control, control_type and control_scale as tuples of one entry per control image, checked."""
    if r.control is None:
        if r.control_type is not None:
            raise ValueError("control_type needs a control image (--control)")
        return
    images = _as_tuple(r.control)
    if not images:
        raise ValueError("control is an empty list: give at least one control image")
    types, scales = _as_tuple(r.control_type, len(images)), _as_tuple(r.control_scale, len(images))
    for what, values in (("control_type", types), ("control_scale", scales)):
        if len(values) != len(images):
            raise ValueError(f"{what} has {len(values)} entries for {len(images)} control images")
    for t in types:
        if t is not None and (not isinstance(t, str) or t not in control_types):
            raise ValueError(f"unknown control_type {_short(t)}; choose from {', '.join(control_types)}")
    for s in scales:
        _finite("control_scale", s)
    object.__setattr__(r, "control", images)
    object.__setattr__(r, "control_type", types)
    object.__setattr__(r, "control_scale", tuple(float(s) for s in scales))


def check_images(r: Any, raise_with: Callable[[str], str]) -> None:
    """Images are PIL images within the request's limits; the mask fits the init image."""
    named = [("image", r.image), ("mask", r.mask)] + [("control", c) for c in (r.control or ())]
    for name, im in named:
        if im is not None and not isinstance(im, Image.Image):
            raise ValueError(f"{name} must be a PIL image, got {type(im).__name__}")
        if im is not None and im.size[0] * im.size[1] > r.limits.max_input_pixels:
            raise ValueError(f"the {name} is {im.size[0]}x{im.size[1]} px, more than the "
                             f"{r.limits.max_input_pixels} pixels allowed" + raise_with("--max-input-pixels"))
        if im is not None and min(im.size) < 1:
            raise ValueError(f"the {name} is empty ({im.size[0]}x{im.size[1]} px)")
    if r.image is not None:  # the output takes the init image's size unless width / height say otherwise
        w, h = r.width or r.image.size[0], r.height or r.image.size[1]
        if w * h > r.limits.max_pixels:
            raise ValueError(f"the output would be {w}x{h} px (the init image's size), more than the "
                             f"{r.limits.max_pixels} pixels allowed (give --width / --height, or raise --max-pixels)")
    if r.mask is not None and r.image is None:
        raise ValueError("inpainting needs an init image as well as a mask")
    if r.mask is not None and r.mask.size != r.image.size:
        raise ValueError(f"the mask is {r.mask.size[0]}x{r.mask.size[1]} px but the image is "
                         f"{r.image.size[0]}x{r.image.size[1]}: they must be the same size")


def control_maps(request: Any, size: tuple[int, int]) -> torch.Tensor:
    """The request's control images at the output size (width, height) as (1, K, 3, H, W) in [0, 1]."""
    maps = []
    for image in request.control:
        if image.size != tuple(size):
            warnings.warn(f"the control image is {image.size[0]}x{image.size[1]} px: resized to the output's "
                          f"{size[0]}x{size[1]}", ControlNoteWarning, stacklevel=3)
        maps.append((image_to_tensor(image, size) + 1) / 2)  # (1, 3, H, W)
    return torch.stack(maps, dim=1)  # (1, K, 3, H, W)
