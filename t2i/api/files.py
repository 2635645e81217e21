"""File output: init images and masks read with one-line errors, predictable output names, and PNGs that
carry their generation parameters."""

from __future__ import annotations

import os
from pathlib import Path


DEFAULT_NAME = "t2i"  # the file stem written inside an --out directory
SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_GRID = 64  # a grid is written for 2 .. MAX_GRID images


def open_image(path: str | os.PathLike, what: str, max_pixels: int | None = None):
    """A PIL image from a file, or a ValueError saying plainly why not; an image of more than `max_pixels`
    (default: the request's limit) is refused from its header, before it is decoded (decompression bombs)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    from t2i.systems.request import RequestLimits

    limit = RequestLimits().max_input_pixels if max_pixels is None else max_pixels
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} '{path}': no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > limit:
                    raise ValueError(f"{what} '{path}' is {im.size[0]}x{im.size[1]} px, more than the {limit} pixels "
                                     "allowed (raise the limit with --max-input-pixels)")
                im.load()
                return im.copy()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ValueError(f"{what} '{path}' is refused as a decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{what} '{path}' is not an image PIL can read ({e.__class__.__name__})") from None


def output_paths(out: str | os.PathLike, n: int) -> tuple[list[Path], Path | None]:
    """Where n images go. OUT.png / OUT.jpg / OUT.jpeg as named (no suffix: OUT.png); an existing directory
    (or a path ending in /) gets t2i.png inside it. Several images: OUT-0.png ... OUT-{n-1}.png and, for up to
    MAX_GRID images, OUT-grid.png. Any other suffix is a ValueError."""
    text = os.fspath(out)
    out = Path(text)
    if out.is_dir() or text.endswith(("/", os.sep)):
        out = out / f"{DEFAULT_NAME}.png"
    elif out.suffix.lower() not in SUFFIXES:
        if out.suffix and not out.suffix[1:].isdigit():
            raise ValueError(f"--out '{text}': t2i writes {', '.join(SUFFIXES)} images (or give a directory, "
                             f"or a name without a suffix for .png)")
        out = out.with_name(out.name + ".png")
    if n == 1:
        return [out], None
    paths = [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(n)]
    return paths, out.with_name(f"{out.stem}-grid{out.suffix}") if n <= MAX_GRID else None


def check_writable(paths: list[Path]) -> None:
    """A ValueError (one line) unless every path can be written: not a directory, and its nearest existing
    folder writable (missing folders are made when writing). Checked before any model work."""
    for path in dict.fromkeys(p.parent for p in paths):
        folder = path
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise ValueError(f"cannot write to '{path}': '{folder}' is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write to '{path}': no permission to write in '{folder}'")
    for path in paths:
        if path.is_dir():
            raise ValueError(f"cannot write '{path}': it is a directory")
        if path.exists() and not os.access(path, os.W_OK):
            raise ValueError(f"cannot write '{path}': the file exists and is read-only")


def output_plan(out: str | os.PathLike, n: int) -> tuple[list[Path], Path | None]:
    """`output_paths`, checked to be writable."""
    paths, grid = output_paths(out, n)
    check_writable(paths + ([grid] if grid is not None else []))
    return paths, grid


def generate_files(system, prompt, out: str | os.PathLike, **options) -> list[Path]:
    """Generate and write images carrying their parameters (and a grid for 2 .. MAX_GRID images), each
    written (atomically) as soon as its chunk is made; return the paths. The output paths are checked
    before any model work. `prompt` is a GenerationRequest, or a prompt with generate()'s keywords
    (progress defaults to True)."""
    from t2i.io.images import image_grid, save_png
    from t2i.systems.request import GenerationRequest

    defaults = {} if isinstance(prompt, GenerationRequest) else {"progress": True}
    request = GenerationRequest.of(prompt, **{**defaults, **options})
    paths, grid = output_plan(out, len(request.batch))
    written, images = [], []
    for im, path in zip(system.images(request), paths):
        written.append(save_png(im, path, im.info))
        if grid is not None:
            images.append(im)
    if grid is not None:
        meta = {k: v for k, v in images[0].info.items() if k != "batch_index"}
        written.append(save_png(image_grid(images), grid, meta))
    return written
