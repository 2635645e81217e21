"""Every check of a `GenerationRequest`, in one place: types, ranges, finiteness, text that is valid
Unicode, sizes within `RequestLimits`; each failure a one-line ValueError that names the field, the
value and what is allowed (the CLI turns a field's name into its flag)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from t2i.diffusion.guidance import parse_threshold
from t2i.diffusion.samplers import SAMPLERS
from t2i.systems.image_checks import _finite, _short, check_controls, check_images

GUIDANCE_TYPES = ("cfg", "clip", "classifier")
PRECISIONS = ("fp32", "bf16", "auto")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64 bits
CONTROL_TYPES = ("edges", "segmentation", "scribble", "depth", "layout")  # = t2i.data.control.CONTROL_KINDS


def _int(name: str, v: Any, low: int, high: int | None = None, raise_with: str = "") -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be a whole number, got {_short(v)}")
    if v < low:
        raise ValueError(f"{name} must be at least {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be at most {high}, got {_short(v)}{raise_with}")


def _text(name: str, v: Any) -> None:
    """Text a tokenizer can read and a PNG can carry: a str of valid Unicode (no undecodable bytes)."""
    if not isinstance(v, str):
        raise ValueError(f"the {name} must be text (str), got {type(v).__name__}"
                         + (": decode the bytes first" if isinstance(v, (bytes, bytearray)) else ""))
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates: bytes the command line could not decode
        raise ValueError(f"the {name} holds undecodable bytes at character {e.start} ({v[e.start:e.end]!r}); "
                         "give UTF-8 text") from None
    if "\x00" in v:
        raise ValueError(f"the {name} holds a NUL character at {v.index(chr(0))}")


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask, with defaults that fit a laptop; raise them for bigger jobs
    (`t2i generate --max-pixels ... --max-images ...`)."""

    max_pixels: int = 2048 * 2048  # width x height of each image made
    max_input_pixels: int = 4096 * 4096  # of each init image, mask or control image (decompression bombs)
    max_images: int = 1000  # prompts x num_images
    max_steps: int = 1000  # sampler steps
    max_guidance: float = 1000.0  # |guidance scale|

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_input_pixels", "max_images", "max_steps"):
            _int(name, getattr(self, name), 1)
        _finite("max_guidance", self.max_guidance)


def _raise_with(flag: str) -> str:
    return f" (raise the limit with {flag})"


def check_request(r: Any) -> None:
    """Check a GenerationRequest's fields (its prompts made a tuple); raise the first problem."""
    if not isinstance(r.limits, RequestLimits):
        raise ValueError(f"limits must be a RequestLimits, got {type(r.limits).__name__}")
    lim = r.limits
    if isinstance(r.prompts, (list, tuple)):
        object.__setattr__(r, "prompts", tuple(r.prompts))
    elif isinstance(r.prompts, str):
        object.__setattr__(r, "prompts", (r.prompts,))
    else:
        _text("prompt", r.prompts)  # raises: None, bytes, a number ...
    for p in r.prompts:
        _text("prompt", p)
    check_controls(r, CONTROL_TYPES)  # first: a control allows an empty prompt (ControlNet's guess mode)
    if not r.prompts or (r.control is None and any(not p.strip() for p in r.prompts)):
        raise ValueError("the prompt is empty: give the text to draw")
    _text("negative prompt", r.negative_prompt)
    if isinstance(r.num_images, int) and not isinstance(r.num_images, bool) and r.num_images < 1:
        raise ValueError(f"the number of images must be at least 1, got {r.num_images}")
    _int("num_images", r.num_images, 1)
    if len(r.prompts) * r.num_images > lim.max_images:
        raise ValueError(f"num_images must be at most {lim.max_images} in all (prompts x num_images), got "
                         f"{_short(len(r.prompts) * r.num_images)}" + _raise_with("--max-images"))
    _int("seed", r.seed, 0, MAX_SEED)
    _int("batch_size", r.batch_size, 1)
    if r.steps is not None:
        _int("steps", r.steps, 1, lim.max_steps, _raise_with("RequestLimits.max_steps"))
    if r.sampler is not None and (not isinstance(r.sampler, str) or r.sampler not in SAMPLERS):
        raise ValueError(f"unknown sampler {_short(r.sampler)}; choose from {', '.join(sorted(SAMPLERS))}")
    if r.guidance is not None:
        _finite("guidance", r.guidance)
        if abs(r.guidance) > lim.max_guidance:
            raise ValueError(f"guidance must be within +-{lim.max_guidance:g}, got {r.guidance:g}")
    if not isinstance(r.guidance_type, str) or r.guidance_type not in GUIDANCE_TYPES:
        raise ValueError(f"unknown guidance type {_short(r.guidance_type)}; choose from {', '.join(GUIDANCE_TYPES)}")
    if r.guidance_type == "cfg" and r.guide is not None:
        raise ValueError("guidance_type 'cfg' (classifier-free) takes no guide; give guidance_type "
                         "'clip' or 'classifier' with it")
    if r.threshold is not None:
        if not isinstance(r.threshold, str):
            raise ValueError(f"threshold must be text such as 'dynamic:0.995', got {_short(r.threshold)}")
        parse_threshold(r.threshold)
    if r.aug_level is not None:
        _finite("aug_level", r.aug_level)
        if not 0.0 <= r.aug_level <= 1.0:
            raise ValueError(f"aug_level must be in [0, 1] (a fraction of the timesteps), got {r.aug_level}")
    for name in ("width", "height"):
        if getattr(r, name) is not None:
            _int(name, getattr(r, name), 1, lim.max_pixels)
    if r.width is not None and r.height is not None and r.width * r.height > lim.max_pixels:
        raise ValueError(f"width x height must be at most {lim.max_pixels} pixels, got {r.width}x{r.height}"
                         + _raise_with("--max-pixels"))
    if not isinstance(r.precision, str) or r.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {_short(r.precision)}; choose from {', '.join(PRECISIONS)}")
    _finite("strength", r.strength)
    if not 0.0 < r.strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {r.strength}")
    _finite("feather", r.feather)
    if not 0.0 <= r.feather <= 256:
        raise ValueError(f"feather must be in [0, 256] px, got {r.feather}")
    check_images(r, _raise_with)
    if r.mix is not None:
        _finite("mix", r.mix)
        if not 0.0 <= r.mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1] (the prompt's weight against the image's), got {r.mix}")
        if r.image is None or r.mask is not None or r.control is not None:
            raise ValueError("mix needs an image (dual guidance mixes the prompt with an image) and no mask or control")
