"""Data-parallel training: 2 CPU processes (gloo, launched by torchrun) match one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from t2i.train import Trainer, load_recipe, read_checkpoint

OVERRIDES = ["train.steps=4", "train.batch_size=4", "train.checkpoint_every=2", "train.log_every=1",
             "train.warmup_steps=0", "train.lr_schedule='constant'", "data.length=16", "diffusion.p_uncond=0.5", "diffusion.num_samples=2",
             "diffusion.sample_steps=2"]


def _torchrun(out, *extra: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "t2i.cli", "train", "tiny_pixel", "--out", str(out), "--no-progress", *sets, *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "on cpu x 2" in proc.stdout  # rank 0 speaks, once
    assert proc.stdout.count("training 'diffusion'") == 1
    return proc.stdout


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    _torchrun(tmp_path / "ddp")
    _compare_with_one_process(tmp_path, tmp_path / "ddp")


@pytest.mark.slow
def test_two_processes_resume_and_still_match_one(tmp_path):
    # 2 processes: 2 steps, then a second launch resumes to 4 (constant LR: same as 4 in one go)
    _torchrun(tmp_path / "ddp", "--set", "train.steps=2")
    assert "resumed from" in _torchrun(tmp_path / "ddp", "--resume")
    _compare_with_one_process(tmp_path, tmp_path / "ddp")


def _compare_with_one_process(tmp_path, ddp_run):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Trainer(load_recipe("tiny_pixel", OVERRIDES), tmp_path / "one", progress=False,
                         log=lambda m: None).run()
    finally:
        torch.set_num_threads(threads)

    a = read_checkpoint(single.checkpoint)
    b = read_checkpoint(ddp_run / "checkpoints" / "step_00000004")
    assert b.state["world"] == 2 and len(b.state["rng"]) == 2  # every rank's RNG state is kept
    assert a.state["data"] == b.state["data"]
    moved = max(float((a.model[k] - _init(k)).abs().max()) for k in list(a.model)[:3])
    assert moved > 1e-4  # training did change the weights
    for k in a.model:
        torch.testing.assert_close(b.model[k], a.model[k], rtol=0, atol=1e-5, msg=k)
        torch.testing.assert_close(b.ema[k], a.ema[k], rtol=0, atol=1e-5, msg=k)


def _init(key: str) -> torch.Tensor:
    """The initial value of a weight (same seed as the trainer)."""
    from t2i.train.stages.diffusion import DiffusionStage  # noqa: F401
    from t2i.train.data import build_dataset
    from t2i.train.rng import seed_everything
    from t2i.train.registry import STAGES

    if key not in _INIT:
        recipe = load_recipe("tiny_pixel", OVERRIDES)
        seed_everything(recipe.train.seed)
        stage = STAGES.get("diffusion").build(recipe, build_dataset(recipe.data), torch.device("cpu"))
        _INIT.update(stage.model.state_dict())
    return _INIT[key]


_INIT: dict[str, torch.Tensor] = {}
