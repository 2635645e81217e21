"""Plot ShapesEval against training step, one line per (run, category), as a PNG drawn with PIL.

The input is a JSON file {"title": ..., "series": [...], "y_label": ..., "runs": [{"label": ..., "points":
[{"step": N, "categories": {...}, "overall": x, "n_per_prompt": k}, ...]}]} ("series": which of "overall" and
the categories to draw, default ShapesEval's; "labels": legend names for them); `--add LABEL STEP RESULT.json` appends the result of
`t2i eval shapes --json` to it first (the file is created when missing).

    .venv/bin/python benchmarks/plot_learning_curve.py docs/ldm_curve.json docs/ldm_curve.png
    .venv/bin/python benchmarks/plot_learning_curve.py docs/ldm_curve.json docs/ldm_curve.png \
        --add "weighted caption mix" 5800 runs/ldm_curve/step_800.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

CATEGORIES = ("overall", "position", "color_attr", "two_object", "held_out")
PALETTE = [(20, 20, 20), (40, 80, 220), (220, 40, 40), (40, 170, 70), (145, 60, 190)]
DASHES = [None, (6, 4), (2, 3)]  # one per run: solid, dashed, dotted


def add_point(data: dict, label: str, step: int, result_path: str) -> None:
    result = json.loads(Path(result_path).read_text())
    runs = data.setdefault("runs", [])
    run = next((r for r in runs if r["label"] == label), None)
    if run is None:
        run = {"label": label, "points": []}
        runs.append(run)
    n = result.get("model", {}).get("n_per_prompt")
    run["points"] = [p for p in run["points"] if p["step"] != step] + [
        {"step": step, "overall": result["overall"], "categories": result["categories"], "n_per_prompt": n}]
    run["points"].sort(key=lambda p: p["step"])


def _line(draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float], fill, dash) -> None:
    if dash is None:
        draw.line([a, b], fill=fill, width=2)
        return
    (x0, y0), (x1, y1) = a, b
    length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1e-9)
    on, off = dash
    t = 0.0
    while t < length:
        t1 = min(t + on, length)
        draw.line([(x0 + (x1 - x0) * t / length, y0 + (y1 - y0) * t / length),
                   (x0 + (x1 - x0) * t1 / length, y0 + (y1 - y0) * t1 / length)], fill=fill, width=2)
        t = t1 + off


def plot(data: dict, out: Path, width: int = 760, height: int = 440) -> None:
    im = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(im)
    left, right, top, bottom = 50, width - 190, 30, height - 40
    steps = [p["step"] for r in data["runs"] for p in r["points"]]
    series = data.get("series", CATEGORIES)
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    s0, s1 = min(steps), max(steps)
    s1 = s1 if s1 > s0 else s0 + 1
    x = lambda s: left + (s - s0) / (s1 - s0) * (right - left)  # noqa: E731
    y = lambda v: bottom - v * (bottom - top)  # noqa: E731
    d.text((left, 8), data.get("title", "ShapesEval against training step"), fill=(0, 0, 0))
    for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        d.line([(left, y(v)), (right, y(v))], fill=(225, 225, 225))
        d.text((left - 30, y(v) - 6), f"{v:.1f}", fill=(90, 90, 90))
    for s in sorted(set(steps)):
        d.text((x(s) - 14, bottom + 6), str(s), fill=(90, 90, 90))
    d.text(((left + right) // 2 - 40, height - 18), "training step", fill=(0, 0, 0))
    if data.get("y_label"):
        d.text((8, top - 22), data["y_label"], fill=(90, 90, 90))
    for ri, run in enumerate(data["runs"]):
        dash = DASHES[ri % len(DASHES)]
        for cat in series:
            pts = [(x(p["step"]), y(p["overall"] if cat == "overall" else p["categories"].get(cat, 0.0)))
                   for p in run["points"]]
            for a, b in zip(pts, pts[1:]):
                _line(d, a, b, colors[cat], dash)
            for px, py in pts:
                d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colors[cat])
    ly = top
    for cat in series:
        d.line([(right + 15, ly + 6), (right + 40, ly + 6)], fill=colors[cat], width=3)
        d.text((right + 46, ly), data.get("labels", {}).get(cat, cat), fill=(0, 0, 0))
        ly += 18
    ly += 10
    for ri, run in enumerate(data["runs"]):
        _line(d, (right + 15, ly + 6), (right + 40, ly + 6), (0, 0, 0), DASHES[ri % len(DASHES)])
        d.text((right + 46, ly), run["label"][:22], fill=(0, 0, 0))
        ly += 18
    out.parent.mkdir(parents=True, exist_ok=True)
    im.save(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="the curve's JSON file")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--add", nargs=3, action="append", default=[], metavar=("LABEL", "STEP", "RESULT_JSON"),
                   help="append a `t2i eval shapes --json` result as a point (repeatable)")
    args = p.parse_args(argv)
    path = Path(args.data)
    data = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    for label, step, result in args.add:
        add_point(data, label, int(step), result)
    if args.add:
        path.write_text(json.dumps(data, indent=1) + "\n")
    if not data.get("runs"):
        p.error(f"{path} has no runs: add points with --add")
    plot(data, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
