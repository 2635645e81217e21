"""Draw docs/ldm_samples.png, the README's picture: one prompt per row, four seeds, the prompt beside it.
Usage: python docs/make_samples.py [--model ldm] [--out docs/ldm_samples.png]"""

from __future__ import annotations

import argparse

from PIL import Image, ImageDraw

import t2i

PROMPTS = [
    "a red circle",
    "two blue squares",
    "a green triangle to the left of a yellow star",
    "a large purple cross in the top left",
    "three stars",
    "a pink circle and a brown triangle on a black background",
    "a purple circle",  # a held-out pair: never seen in training
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ldm")
    p.add_argument("--out", default="docs/ldm_samples.png")
    p.add_argument("--scale", type=int, default=2, help="pixel repeat of the 64 px samples")
    args = p.parse_args()
    system = t2i.load(args.model)
    side, label_w, n = 64 * args.scale, 330, 4
    sheet = Image.new("RGB", (label_w + n * side, len(PROMPTS) * side), "white")
    draw = ImageDraw.Draw(sheet)
    for row, prompt in enumerate(PROMPTS):
        draw.text((8, row * side + side // 2 - 6), prompt, fill="black")
        for k, im in enumerate(system.generate(prompt, num_images=n, seed=row)):
            sheet.paste(im.resize((side, side), Image.NEAREST), (label_w + k * side, row * side))
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
