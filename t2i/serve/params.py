"""OpenAI images-API fields -> a `GenerationRequest`, checked before any work: `ApiError` carries the HTTP
status and OpenAI's error body. Uploaded images are decoded here (never a path: requests name no files).

Masks (POST /v1/images/edits) come in two conventions, chosen per mask by `mask_convention`:
- "alpha" (OpenAI's): the mask is a PNG whose fully or partly transparent pixels (alpha < 128) are repainted;
- "white" (t2i's, as `t2i inpaint --mask`): white pixels (grayscale >= 128) are repainted.
- "auto" (the default): "alpha" when the mask has an alpha channel with any pixel below 255, else "white".
Without a mask, an image with transparent pixels is its own OpenAI-style mask; an opaque image without a
mask is redrawn whole (img2img, `strength`, default 0.75)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

# Fields the official client may send that t2i reads but cannot honour otherwise: accepted and ignored.
IGNORED = {"user", "quality", "style", "background", "moderation", "output_compression", "partial_images",
           "input_fidelity", "safety_identifier"}
T2I_FIELDS = {"seed", "steps", "guidance", "negative_prompt", "sampler", "strength", "mask_convention", "stream"}
OPENAI_FIELDS = {"model", "prompt", "n", "size", "response_format", "output_format"}


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
             429: "rate_limit_error", 500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask: the service's flags (`t2i serve --max-*`)."""

    max_body_bytes: int = 8 << 20  # a whole request body (uploads included)
    max_image_bytes: int = 4 << 20  # one uploaded image (OpenAI's limit too)
    max_side: int = 512  # width and height of asked and uploaded images, pixels
    max_n: int = 8  # images per request
    max_steps: int = 150  # sampler steps per request


def check_fields(body: dict, allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed - IGNORED)
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0]!r}; this endpoint takes "
                            f"{', '.join(sorted(allowed))}", param=unknown[0], code="unknown_parameter")


def _number(body: dict, name: str, kind: type, default: Any = None, low: float | None = None,
            high: float | None = None) -> Any:
    """A field as int or float; form fields arrive as text and are parsed here."""
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, str):
        try:
            v = int(v) if kind is int else float(v)
        except ValueError:
            raise ApiError(400, f"{name} must be a {'whole ' if kind is int else ''}number, got {v!r}",
                           param=name, code="invalid_value") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and isinstance(v, float)
                                                                    and not v.is_integer()):
        raise ApiError(400, f"{name} must be a {'whole ' if kind is int else ''}number, got {v!r}", param=name,
                       code="invalid_value")
    v = kind(v) if math.isfinite(v) else v
    if not math.isfinite(v):
        raise ApiError(400, f"{name} must be a finite number, got {v!r}", param=name, code="invalid_value")
    if low is not None and v < low or high is not None and v > high:
        raise ApiError(400, f"{name} must be between {low} and {high}, got {v}", param=name, code="invalid_value")
    return v


def _text(body: dict, name: str, default: str | None = None, required: bool = False) -> str | None:
    v = body.get(name, default)
    if v is None and required:
        raise ApiError(400, f"missing required parameter {name!r}", param=name, code="missing_parameter")
    if v is not None and not isinstance(v, str):
        raise ApiError(400, f"{name} must be text, got {type(v).__name__}", param=name, code="invalid_value")
    return v


def size(body: dict, limits: Limits) -> tuple[int | None, int | None]:
    """OpenAI's size "WxH" (or "auto" / absent: the system's default) -> (width, height)."""
    v = _text(body, "size")
    if v is None or v == "auto":
        return None, None
    parts = v.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ApiError(400, f"size must be 'WIDTHxHEIGHT' in pixels (e.g. '64x64') or 'auto', got {v!r}",
                       param="size", code="invalid_size")
    w, h = int(parts[0]), int(parts[1])
    if not (8 <= w <= limits.max_side and 8 <= h <= limits.max_side):
        raise ApiError(400, f"size {v} is out of range: width and height must be 8 to {limits.max_side} px",
                       param="size", code="invalid_size")
    return w, h


def response_format(body: dict) -> str:
    v = _text(body, "response_format", "b64_json")
    if v not in ("b64_json", "url"):
        raise ApiError(400, f"response_format must be 'b64_json' or 'url', got {v!r}", param="response_format",
                       code="invalid_value")
    if body.get("output_format", "png") != "png":
        raise ApiError(400, f"output_format must be 'png' (the format that carries the generation parameters), "
                            f"got {body['output_format']!r}", param="output_format", code="invalid_value")
    return v


def stream(body: dict) -> bool:
    v = body.get("stream", False)
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    if not isinstance(v, bool):
        raise ApiError(400, f"stream must be true or false, got {v!r}", param="stream", code="invalid_value")
    return v


def options(body: dict, limits: Limits) -> dict[str, Any]:
    """The GenerationRequest keywords common to every endpoint (the request checks their values again)."""
    width, height = size(body, limits)
    return dict(
        num_images=_number(body, "n", int, 1, 1, limits.max_n),
        seed=_number(body, "seed", int, 0, 0, 2**63 - 1),
        steps=_number(body, "steps", int, None, 1, limits.max_steps),
        guidance=_number(body, "guidance", float, None, -100, 100),
        negative_prompt=_text(body, "negative_prompt", ""),
        sampler=_text(body, "sampler"),
        width=width, height=height)


def image(data: Any, name: str, limits: Limits) -> Image.Image:
    """An uploaded file (a multipart part's bytes) -> a PIL image, decoded and size-checked."""
    if data is None:
        raise ApiError(400, f"missing required file {name!r} (send it as a multipart/form-data file)",
                       param=name, code="missing_parameter")
    if isinstance(data, str):
        raise ApiError(400, f"{name} must be an uploaded file, not text (no paths or URLs are read)", param=name,
                       code="invalid_image")
    if len(data) > limits.max_image_bytes:
        raise ApiError(413, f"{name} is {len(data)} bytes; the limit is {limits.max_image_bytes}", param=name,
                       code="image_too_large")
    try:
        im = Image.open(io.BytesIO(data))
        if im.size[0] > limits.max_side or im.size[1] > limits.max_side:
            raise ApiError(413, f"{name} is {im.size[0]}x{im.size[1]} px; the limit is {limits.max_side} px a side",
                           param=name, code="image_too_large")
        im.load()
    except ApiError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise ApiError(400, f"{name} is not an image t2i can read (PNG, JPEG or WebP)", param=name,
                       code="invalid_image") from None
    return im


def _has_transparency(im: Image.Image) -> bool:
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode not in ("RGBA", "LA", "PA"):
        return False
    return im.getchannel("A").getextrema()[0] < 255


def repaint_mask(mask: Image.Image, convention: str) -> Image.Image:
    """A mask in either convention -> t2i's: mode "L", 255 = repaint, 0 = keep."""
    if convention not in ("auto", "alpha", "white"):
        raise ApiError(400, f"mask_convention must be 'auto', 'alpha' (transparent = edit, OpenAI's) or 'white' "
                            f"(white = edit, t2i's), got {convention!r}", param="mask_convention",
                       code="invalid_value")
    if convention == "auto":
        convention = "alpha" if _has_transparency(mask) else "white"
    if convention == "alpha":
        if mask.mode not in ("RGBA", "LA", "PA"):
            mask = mask.convert("RGBA")
        return mask.getchannel("A").point(lambda a: 255 if a < 128 else 0)
    return mask.convert("L").point(lambda v: 255 if v >= 128 else 0)


def edit_inputs(init: Image.Image, mask: Image.Image | None, convention: str,
                size_wh: tuple[int | None, int | None]) -> tuple[Image.Image, Image.Image | None]:
    """The init image (RGB) and the t2i mask (or None: img2img), both at the output size."""
    if mask is None and _has_transparency(init):
        mask = init  # OpenAI: an image's transparent pixels are what to edit
        convention = "alpha"
    t2i_mask = repaint_mask(mask, convention) if mask is not None else None
    if t2i_mask is not None and t2i_mask.size != init.size:
        raise ApiError(400, f"the mask is {t2i_mask.size[0]}x{t2i_mask.size[1]} px but the image is "
                            f"{init.size[0]}x{init.size[1]}: they must be the same size", param="mask",
                       code="invalid_mask")
    rgb = init.convert("RGB")
    w, h = size_wh
    if w is not None and (w, h) != rgb.size:
        rgb = rgb.resize((w, h), Image.LANCZOS)
        t2i_mask = t2i_mask.resize((w, h), Image.NEAREST) if t2i_mask is not None else None
    return rgb, t2i_mask
