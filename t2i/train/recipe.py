"""Training recipes: small TOML files, one per system stage, parsed into frozen dataclasses.

A recipe has a top-level `stage = "..."` (a key of `t2i.train.registry.STAGES`), a `[data]`
table, a `[train]` table, and one table named after the stage (`[diffusion]`, `[autoencoder]`)
that the stage's own config class reads. Bundled recipes live in `t2i/train/recipes/`.
`extends = "other_recipe"` starts from another recipe (a bundled name or a path beside this file) and
changes only the keys this file sets: tables merge key by key, other values replace.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from t2i.train.config import RecipeError, TableConfig, bad
from t2i.train.registry import STAGES

LR_SCHEDULES = ("cosine", "constant")
TOP_LEVEL = ("stage", "description", "data", "train")
MAX_EXTENDS = 8  # the longest chain of `extends` followed


@dataclass(frozen=True)
class DataConfig(TableConfig):
    """Which dataset and how it is read."""

    dataset: str = "shapes"  # a key of DATASETS: shapes | folder
    size: int = 32  # image side in pixels
    length: int = 10_000  # samples in one epoch (shapes); folder datasets use what is there
    seed: int = 0  # the dataset's own seed (which world), not the training seed
    path: str = ""  # folder datasets: directory of images with same-name .txt captions
    num_workers: int = 0  # DataLoader worker processes
    caption_weights: dict = field(default_factory=dict)  # shapes: caption kind -> weight ({}: uniform)
    object_counts: tuple[float, ...] = ()  # shapes: weights of scenes with 1, 2, 3, 4 objects (empty: uniform)

    def check(self) -> None:
        from t2i.data.captions import CAPTION_KINDS

        if self.object_counts and (len(self.object_counts) != 4 or min(self.object_counts) < 0
                                   or not sum(self.object_counts) > 0):
            raise bad("object_counts", list(self.object_counts), "must be 4 weights >= 0 (scenes of 1..4 objects)")
        for kind, w in self.caption_weights.items():
            if kind not in CAPTION_KINDS:
                raise bad("caption_weights", self.caption_weights, f"'{kind}' is not a caption kind; kinds: "
                          f"{', '.join(CAPTION_KINDS)}")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
                raise bad("caption_weights", self.caption_weights, f"the weight of '{kind}' must be a number >= 0")
        if self.size < 8:
            raise bad("size", self.size, "must be at least 8")
        if self.length < 1:
            raise bad("length", self.length, "must be at least 1")
        if self.num_workers < 0:
            raise bad("num_workers", self.num_workers, "must be >= 0")


@dataclass(frozen=True)
class TrainConfig(TableConfig):
    """The optimisation loop: steps, batch, AdamW, LR schedule, EMA, precision, logging, checkpoints."""

    steps: int = 1000  # optimizer steps
    max_minutes: float = 0.0  # wall-clock limit for this run (0: none); a final checkpoint is written
    batch_size: int = 16  # global batch per optimizer step, over all processes and accumulation
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4
    lr_schedule: str = "cosine"  # cosine | constant, both after a linear warmup
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm (0: off)
    ema_decay: float = 0.999  # EMA of the weights, kept and saved apart (0: EMA = raw weights)
    bf16: Any = "auto"  # bf16 autocast (weights and optimizer stay float32): true | false | "auto" (where it is faster)
    channels_last: bool = False  # convolution activations in NHWC memory order (oneDNN's fast path on CPU)
    compile: bool = False  # torch.compile the stage's network ("net"; same weights and state-dict keys)
    fp32_attention: bool = True  # CPU: attention in float32 under bf16 autocast (PyTorch's bf16 CPU kernel is slow)
    fused_adamw: bool = True  # AdamW's fused / foreach kernels instead of a loop over parameters
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # weights init, noise, caption dropout
    log_every: int = 10  # steps between metrics.jsonl lines
    sample_every: int = 0  # steps between sample grids (0: only at the end)
    checkpoint_every: int = 500  # steps between checkpoints (a final one is always written)
    keep_checkpoints: int = 3  # the last K checkpoints are kept

    def check(self) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "log_every": self.log_every, "checkpoint_every": self.checkpoint_every,
                    "keep_checkpoints": self.keep_checkpoints}
        for key, value in positive.items():
            if value < 1:
                raise bad(key, value, "must be at least 1")
        if not self.lr > 0:
            raise bad("lr", self.lr, "must be > 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", self.lr_schedule, f"must be one of {', '.join(LR_SCHEDULES)}")
        for key, value in {"warmup_steps": self.warmup_steps, "sample_every": self.sample_every,
                           "weight_decay": self.weight_decay, "grad_clip": self.grad_clip,
                           "max_minutes": self.max_minutes}.items():
            if value < 0:
                raise bad(key, value, "must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        if not 0 <= self.ema_decay < 1:
            raise bad("ema_decay", self.ema_decay, "must be in [0, 1)")
        if not all(0 <= b < 1 for b in self.betas):
            raise bad("betas", list(self.betas), "each must be in [0, 1)")
        if self.batch_size % self.grad_accum:
            raise bad("batch_size", self.batch_size, f"must be divisible by grad_accum = {self.grad_accum}")
        if self.bf16 not in (True, False, "auto"):
            raise bad("bf16", self.bf16, 'must be true, false or "auto"')
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise bad("device", self.device, "must be auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class Recipe:
    """A whole recipe: the stage kind, its data, its loop, and the stage's own options."""

    stage: str
    data: DataConfig
    train: TrainConfig
    options: Any  # the stage's config dataclass (a TableConfig), read from the table named `stage`
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "description": self.description, "data": self.data.to_dict(),
                "train": self.train.to_dict(), self.stage: self.options.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        d = dict(d)
        stage = d.get("stage")
        if not isinstance(stage, str):
            raise RecipeError("missing top-level key 'stage' (e.g. stage = \"diffusion\")")
        import t2i.train.stages  # noqa: F401  (registers the stage kinds)

        kind = STAGES.get(stage)
        for key in d:
            if key not in TOP_LEVEL and key != stage:
                raise RecipeError(f"unknown top-level key '{key}'; a '{stage}' recipe has "
                                  f"{', '.join(TOP_LEVEL)} and [{stage}]")
        description = d.get("description", "")
        if not isinstance(description, str):
            raise bad("description", description, "must be a string")
        return cls(stage=stage, description=description,
                   data=DataConfig.from_dict(d.get("data"), "[data]"),
                   train=TrainConfig.from_dict(d.get("train"), "[train]"),
                   options=kind.Options.from_dict(d.get(stage), f"[{stage}]"))


def bundled_recipes() -> dict[str, Path]:
    """Recipes shipped in the package: name (file stem) -> path."""
    folder = resources.files("t2i.train") / "recipes"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe file path from a path, or the name of a bundled recipe."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = bundled_recipes()
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    raise RecipeError(f"no recipe file '{name_or_path}' and no bundled recipe of that name; "
                      f"bundled: {', '.join(sorted(bundled))}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], 0.0003); values are TOML, bare words are strings."""
    if "=" not in text:
        raise RecipeError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(table: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested table (a copy)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in table.items()}
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override '{text}': '{k}' is not a table")
        node[keys[-1]] = value
    return out


def merge_tables(base: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `change` applied: tables present in both merge key by key, any other value replaces."""
    out = dict(base)
    for key, value in change.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = merge_tables(out[key], value) if both else value
    return out


def read_table(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file's table with its `extends` chain resolved (a bundled name, or a path relative to it)."""
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe {path}: not valid TOML: {e}") from None
    parent = table.pop("extends", None)
    if parent is None:
        return table
    if not isinstance(parent, str) or not parent:
        raise RecipeError(f"recipe {path.name}: extends = {parent!r} must name a recipe")
    beside = path.parent / parent
    parent_path = beside if beside.is_file() else resolve_recipe(parent)
    if parent_path.resolve() in chain or len(chain) >= MAX_EXTENDS:
        names = " -> ".join(p.stem for p in (*chain, path.resolve(), parent_path.resolve()))
        raise RecipeError(f"recipe {path.name}: extends loops or runs too deep: {names}")
    return merge_tables(read_table(parent_path, (*chain, path.resolve())), table)


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and check a recipe; errors name the file, section, key and value."""
    path = resolve_recipe(name_or_path)
    table = read_table(path)
    try:
        return Recipe.from_dict(apply_overrides(table, overrides or []))
    except (RecipeError, ValueError) as e:
        raise RecipeError(f"recipe {path.name}: {e}") from None
