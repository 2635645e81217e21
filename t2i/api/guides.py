"""Guides: a noise-aware CLIP or classifier for GLIDE's gradient guidance, from a guide folder or a
`t2i train` run."""

from __future__ import annotations

import json
import os
from pathlib import Path

from t2i.api.runs import _load_ema, _run_checkpoint, _run_schedule, is_training_run


def guide_kind(path: Path) -> str | None:
    """"clip" / "classifier" when path is a guide folder or a `t2i train` run (or checkpoint) of a guide stage."""
    from t2i.systems.guide_folders import GUIDES, folder_guide_kind

    if is_training_run(path):  # its newest checkpoint's config says (loading it verifies the checkpoint)
        from t2i.train.checkpoint import list_checkpoints

        ckpts = [path] if (path / "manifest.json").is_file() else list_checkpoints(path / "checkpoints")
        config = ckpts[-1] / "config.json" if ckpts else None
        stage = json.loads(config.read_text()).get("stage") if config is not None and config.is_file() else None
        return stage if stage in GUIDES else None
    return folder_guide_kind(path)


def load_guide(path: str | os.PathLike, kind: str | None = None):
    """A GLIDE guide from a guide folder or a `t2i train` noise-aware clip / classifier run; with `kind`,
    refuse a guide of another kind. Raises ValueError with a one-line reason."""
    from t2i.systems.guide_folders import check_guide_kind, load_guide as load_guide_folder

    path = Path(path)
    if not path.exists():
        raise ValueError(f"guide '{path}': no such folder")
    if not is_training_run(path):
        return load_guide_folder(path, kind)
    check_guide_kind(path, guide_kind(path), kind)
    return guide_from_training_run(path)


def guide_from_training_run(run: str | os.PathLike):
    """The guide of a `t2i train` clip (noise-aware) or classifier run: EMA weights of its newest good
    checkpoint and the schedule it was trained on; `t2i convert RUN FOLDER` saves it as a guide folder."""
    from t2i.systems.guides import GUIDES, GuideConfig

    run = Path(run)
    ckpt_path, ckpt = _run_checkpoint(run)
    stage = ckpt.config.get("stage")
    if stage not in GUIDES:
        raise ValueError(f"{ckpt_path}: a {stage!r} run, not a guide (a noise-aware clip run or a classifier run)")
    options = ckpt.config.get(stage) or {}
    net = _guide_network(stage, options, ckpt)
    try:
        config = GuideConfig(stage, net.config.to_dict(), _run_schedule(options))
    except ValueError as e:
        raise ValueError(f"{ckpt_path}: {e}") from None
    guide = GUIDES[stage](config, net, name=run.name)
    _load_ema(ckpt, ckpt_path, {stage: guide.net})
    return guide.eval().requires_grad_(False)


def _guide_network(stage: str, options: dict, ckpt):
    """The network a guide stage trains, built as the stage builds it (its [clip] / [classifier] table)."""
    if stage == "clip":
        from t2i.train.stages.clip import CLIPOptions, build_clip

        return build_clip(CLIPOptions.from_dict(options), ckpt.extra("tokenizer.json").decode())
    from t2i.train.stages.classifier import ClassifierOptions, build_classifier

    return build_classifier(ClassifierOptions.from_dict(options))

