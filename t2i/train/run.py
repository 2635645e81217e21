"""`t2i train RECIPE --out DIR [--resume] [--max-minutes M] [--set KEY=VALUE]`: the command's work."""

from __future__ import annotations

import sys
from pathlib import Path

from t2i.train.config import RecipeError
from t2i.train.recipe import bundled_recipes, load_recipe
from t2i.train.trainer import Trainer, TrainingError


def list_recipes() -> str:
    """One line per bundled recipe: name and description."""
    import tomllib

    lines = []
    for name, path in sorted(bundled_recipes().items()):
        desc = tomllib.loads(path.read_text()).get("description", "")
        lines.append(f"{name:24s} {desc}")
    return "\n".join(lines)


def run_train(recipe: str, out: str | Path, *, resume: bool, max_minutes: float | None,
              overrides: list[str], until_step: int | None = None, progress: bool = True) -> int:
    """Train; RecipeError (bad recipe, missing data) propagates for the CLI to turn into exit 2,
    TrainingError (NaN loss, no device) prints one line and returns 1."""
    if max_minutes is not None and max_minutes <= 0:
        raise RecipeError(f"--max-minutes {max_minutes}: must be > 0")
    if until_step is not None and until_step < 1:
        raise RecipeError(f"--until-step {until_step}: must be at least 1")
    r = load_recipe(recipe, overrides)
    try:
        result = Trainer(r, out, resume=resume, max_minutes=max_minutes, until_step=until_step, progress=progress).run()
    except TrainingError as e:
        print(f"t2i train: error: {e}", file=sys.stderr)
        return 1
    return 130 if result.stopped_by == "signal" else 0
