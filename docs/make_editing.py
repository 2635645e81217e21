"""Draw docs/glide_editing.png, the README's iterative-editing picture (GLIDE, Nichol et al. 2022, fig. 4): per
row, an image generated from text, then two inpainting edits, each repainting a region (outlined) of the image
before it. Usage: python docs/make_editing.py [--model glide] [--out docs/glide_editing.png] [--rows 3]"""

from __future__ import annotations

import argparse
import textwrap

from PIL import Image, ImageDraw

import t2i

# (prompt, region to repaint as fractions (x0, y0, x1, y1) or None to generate from text)
STEPS = [
    ("a red circle", None),
    ("a red circle and a yellow star", (0.0, 0.0, 0.5, 0.5)),
    ("a red circle, a yellow star and a blue square", (0.5, 0.5, 1.0, 1.0)),
]


def region_mask(size: int, box: tuple[float, float, float, float]) -> Image.Image:
    """A white-on-black mask (white = repaint) of the box given in fractions of the side."""
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle([round(v * size) for v in box], fill=255)
    return mask


def edit_row(system, seed: int) -> list[tuple[Image.Image, tuple | None]]:
    """The images of one row: generated, then each edit applied to the previous image."""
    images, image = [], None
    for k, (prompt, box) in enumerate(STEPS):
        if box is None:
            image = system.generate(prompt, seed=seed)[0]
        else:
            image = system.generate(prompt, image=image, mask=region_mask(image.width, box), seed=seed + k)[0]
        images.append((image, box))
    return images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="glide")
    p.add_argument("--out", default="docs/glide_editing.png")
    p.add_argument("--rows", type=int, default=3, help="rows, one seed each")
    p.add_argument("--side", type=int, default=160, help="pixels per image in the sheet")
    args = p.parse_args()
    system = t2i.load(args.model)
    side, head = args.side, 40
    sheet = Image.new("RGB", (len(STEPS) * side, head + args.rows * side), "white")
    draw = ImageDraw.Draw(sheet)
    for col, (prompt, box) in enumerate(STEPS):
        words = ("generate: " if box is None else "inpaint: ") + prompt
        draw.multiline_text((col * side + 4, 2), "\n".join(textwrap.wrap(words, 26)[:3]), fill="black", spacing=1)
    for row in range(args.rows):
        for col, (image, box) in enumerate(edit_row(system, seed=100 * row)):
            tile = image.resize((side, side), Image.NEAREST)
            if box is not None:
                ImageDraw.Draw(tile).rectangle([round(v * (side - 1)) for v in box], outline="white", width=2)
            sheet.paste(tile, (col * side, head + row * side))
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
