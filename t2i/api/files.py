"""File output: init images and masks read with one-line errors, predictable output names, and PNGs that
carry their generation parameters."""

from __future__ import annotations

import os
from pathlib import Path


def open_image(path: str | os.PathLike, what: str):
    """A PIL image from a file, or a ValueError saying plainly why not."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} '{path}': no such file")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{what} '{path}' is not an image PIL can read ({e.__class__.__name__})") from None


def output_paths(out: str | os.PathLike, n: int) -> tuple[list[Path], Path | None]:
    """OUT.png for one image; OUT-0.png ... OUT-{n-1}.png and OUT-grid.png for several."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        out = out.with_name(out.name + ".png")
    if n == 1:
        return [out], None
    return [out.with_name(f"{out.stem}-{i}.png") for i in range(n)], out.with_name(f"{out.stem}-grid.png")


def generate_files(system, prompt, out: str | os.PathLike, **options) -> list[Path]:
    """Generate and write PNGs carrying their parameters (and a grid when num_images > 1); return the paths.
    `prompt` is a GenerationRequest, or a prompt with generate()'s keywords (progress defaults to True)."""
    from t2i.io.images import image_grid, save_png
    from t2i.systems.request import GenerationRequest

    defaults = {} if isinstance(prompt, GenerationRequest) else {"progress": True}
    request = GenerationRequest.of(prompt, **{**defaults, **options})
    images = system.generate(request)
    paths, grid = output_paths(out, len(images))
    written = [save_png(im, p, im.info) for im, p in zip(images, paths)]
    if grid is not None:
        meta = {k: v for k, v in images[0].info.items() if k != "batch_index"}
        written.append(save_png(image_grid(images), grid, meta))
    return written

