"""ControlNet's "sudden convergence" (Zhang et al. 2023, sec. 4.1): control accuracy of every kept checkpoint of
a `t2i train` ControlNet run, by `t2i eval control`'s measure, as JSON and a PNG.

    .venv/bin/python benchmarks/control_curve.py runs/shapes_controlnet_edges docs/controlnet_curve.json \
        docs/controlnet_curve.png --n 32

Points already in the JSON (same run label and step) are kept, so a second call after more training only
evaluates the new checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plot_learning_curve import plot  # noqa: E402

from t2i.api.runs import controlnet_from_training_runs  # noqa: E402
from t2i.eval.control import evaluate_control, system_generator  # noqa: E402
from t2i.train.checkpoint import list_checkpoints  # noqa: E402

SERIES = ["overall", "objects placed", "mean box IoU"]  # "overall": images with every object placed right


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a ControlNet training run folder")
    p.add_argument("data", help="the curve's JSON file (created or extended)")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--n", type=int, default=32, help="held-out scenes per checkpoint")
    args = p.parse_args(argv)
    path, run = Path(args.data), Path(args.run)
    data = json.loads(path.read_text()) if path.is_file() else {
        "title": "ControlNet control accuracy against training step (held-out scenes)", "series": SERIES,
        "labels": {"overall": "images placed"}, "y_label": "fraction", "runs": []}
    entry = next((r for r in data["runs"] if r["label"] == run.name), None)
    if entry is None:
        entry = {"label": run.name, "points": []}
        data["runs"].append(entry)
    done = {pt["step"] for pt in entry["points"]}
    for step in sorted(int(c.name.split("_")[-1]) for c in list_checkpoints(run / "checkpoints")):
        if step in done:
            continue
        system = controlnet_from_training_runs([run], step=step)
        kind = system.config.kinds[0]
        row = evaluate_control(system_generator(system), (kind,), n=args.n, reference=False)[kind]
        entry["points"].append({"step": step, "overall": row["placed_images"], "n": args.n, "categories": {
            "objects placed": row["placed_objects"], "mean box IoU": row["mean_iou"]}})
        entry["points"].sort(key=lambda pt: pt["step"])
        path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"step {step}: images placed {row['placed_images']:.3f}, objects {row['placed_objects']:.3f}, "
              f"IoU {row['mean_iou']:.3f}", flush=True)
    plot(data, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
