"""The loop: exact resume, wall-clock stop with a checkpoint, NaN stops naming the step, the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from t2i.cli import main
from t2i.train import NETWORKS, Trainer, TrainingError, load_recipe, read_checkpoint
from t2i.train.checkpoint import list_checkpoints


# 2 shared cores: one thread is faster and keeps float results identical between runs (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# Gradient accumulation, dropout (global RNG), caption dropout and an epoch boundary are all exercised.
RESUME = ["train.steps=6", "train.batch_size=4", "train.grad_accum=2", "train.checkpoint_every=3",
          "train.log_every=1", "train.ema_decay=0.9", "train.warmup_steps=2", "data.length=20",
          "diffusion.p_uncond=0.5", "diffusion.net.dropout=0.2", "diffusion.num_samples=2", "diffusion.sample_steps=2"]


def _assert_same_training_state(a, b) -> None:
    """Two checkpoints hold bit-identical weights, EMA weights and optimizer state."""
    assert a.step == b.step
    assert a.model.keys() == b.model.keys() and len(a.model) > 10
    for k in a.model:
        assert a.model[k].dtype == torch.float32, k
        assert torch.equal(a.model[k], b.model[k]), k
        assert torch.equal(a.ema[k], b.ema[k]), k
    assert a.optimizer["state"].keys() == b.optimizer["state"].keys()
    for i, st in a.optimizer["state"].items():
        for name, v in st.items():
            assert torch.equal(v, b.optimizer["state"][i][name]), (i, name)
    assert a.state["data"] == b.state["data"]


def test_resume_is_exact(tmp_path):
    recipe = load_recipe("tiny_pixel", RESUME)
    whole = Trainer(recipe, tmp_path / "whole", progress=False, log=lambda m: None).run()
    first = Trainer(recipe, tmp_path / "split", until_step=3, progress=False, log=lambda m: None).run()
    assert (whole.step, first.step, first.stopped_by) == (6, 3, "until")
    messages: list[str] = []
    second = Trainer(recipe, tmp_path / "split", resume=True, progress=False, log=messages.append).run()
    assert second.step == 6 and any("resumed from" in m and "step 3" in m for m in messages)

    a, b = read_checkpoint(whole.checkpoint), read_checkpoint(second.checkpoint)
    _assert_same_training_state(a, b)
    assert a.state["data"] == {"epoch": 1, "cursor": 4}  # 12 micro-batches of 2 over 20 samples
    losses = lambda run: [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").open()]
    assert losses("whole") == losses("split")
    assert (tmp_path / "split" / "checkpoints" / "step_00000006" / "tokenizer.json").is_file()


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path):
    """Forgetting --resume must not restart from step 0 over an earlier run's checkpoints."""
    recipe = load_recipe("tiny_pixel", RESUME)
    first = Trainer(recipe, tmp_path / "run", until_step=3, progress=False, log=lambda m: None).run()
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with pytest.raises(TrainingError, match="already holds checkpoints.*--resume"):
        Trainer(recipe, tmp_path / "run", progress=False, log=lambda m: None).run()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before
    assert read_checkpoint(first.checkpoint).step == 3


# The kill test's run: the RESUME features (accumulation, dropout, caption dropout, epoch boundary) over
# 12 steps with a checkpoint every 2, on the CPU in float32.
KILL_STEPS, KILL_AT = 12, 4
KILLED = RESUME + [f"train.steps={KILL_STEPS}", "train.checkpoint_every=2", "train.device='cpu'", "train.bf16=false"]


def test_resume_after_kill_9_is_exact(tmp_path):
    """A training process killed with SIGKILL (no handler runs: an OOM kill, a pre-empted node) and then
    resumed with --resume ends with the weights of a run that was never interrupted, bit for bit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    whole = Trainer(load_recipe("tiny_pixel", KILLED), tmp_path / "whole", progress=False, log=lambda m: None).run()
    assert whole.step == KILL_STEPS

    out = tmp_path / "killed"
    sets = [a for s in KILLED for a in ("--set", s)]
    cmd = [sys.executable, "-m", "t2i.cli", "train", "tiny_pixel", "--out", str(out), "--no-progress", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    target = out / "checkpoints" / f"step_{KILL_AT:08d}"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not target.is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert target.is_dir(), f"no {target.name} within 120 s; exit code {proc.poll()}"
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, stderr[-2000:]  # killed mid-run, not finished
    assert not (out / "checkpoints" / f"step_{KILL_STEPS:08d}").exists()

    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    found = [line for line in resumed.stdout.splitlines() if "resumed from" in line]
    assert len(found) == 1, resumed.stdout[-2000:]
    resumed_at = int(found[0].rsplit("(step ", 1)[1].rstrip(")"))
    assert KILL_AT <= resumed_at < KILL_STEPS and resumed_at % 2 == 0

    final = read_checkpoint(out / "checkpoints" / f"step_{KILL_STEPS:08d}")
    _assert_same_training_state(read_checkpoint(whole.checkpoint), final)
    # every step's logged loss, taking the resumed run's record where a step ran twice, is the same
    def losses(run):
        return {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl").open())}

    assert losses("whole") == losses("killed") and len(losses("whole")) == KILL_STEPS


def test_max_minutes_stops_cleanly_with_a_checkpoint(tmp_path):
    recipe = load_recipe("tiny_pixel", ["train.steps=50", "train.batch_size=2", "diffusion.num_samples=2",
                                         "diffusion.sample_steps=2"])
    result = Trainer(recipe, tmp_path, max_minutes=1e-6, progress=False, log=lambda m: None).run()
    assert result.stopped_by == "time" and result.step == 1
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000001"]
    assert (tmp_path / "samples" / "step_00000001.png").is_file()


class NanAfter(nn.Module):
    """A network whose output turns to NaN after `after` training forward passes."""

    def __init__(self, after: int):
        super().__init__()
        self.conv, self.after, self.calls = nn.Conv2d(3, 3, 3, padding=1), after, 0

    def forward(self, x, t, *, context=None, context_mask=None, pooled=None):
        self.calls += int(torch.is_grad_enabled())
        out = self.conv(x) + context.mean() * 0
        return out * float("nan") if self.calls > self.after else out


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    NETWORKS.add("test_nan_after_4", lambda net: NanAfter(4))
    try:
        recipe = load_recipe("tiny_pixel", ["diffusion.network='test_nan_after_4'", "diffusion.net={}",
                                             "train.steps=10", "train.checkpoint_every=2", "train.batch_size=2"])
        with pytest.raises(TrainingError) as e:
            Trainer(recipe, tmp_path, progress=False, log=lambda m: None).run()
    finally:
        NETWORKS.remove("test_nan_after_4")
    msg = str(e.value)
    assert "the loss is nan at step 5" in msg
    assert f"Last good checkpoint: {tmp_path / 'checkpoints' / 'step_00000004'}" in msg
    assert read_checkpoint(tmp_path / "checkpoints" / "step_00000004").step == 4


def test_cli_trains_reports_where_outputs_go_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    small = ["--set", "train.batch_size=2", "--set", "diffusion.num_samples=2", "--set", "diffusion.sample_steps=2",
             "--no-progress"]
    assert main(["train", "tiny_pixel", "--out", str(out), "--set", "train.steps=2", *small]) == 0
    text = capsys.readouterr().out
    assert f"checkpoints: {out / 'checkpoints'}" in text and "metrics.jsonl" in text and "samples" in text
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert records[-1]["step"] == 2 and {"loss", "lr", "grad_norm", "images_per_s"} <= set(records[-1])
    assert (out / "samples" / "step_00000002.png").is_file()

    assert main(["train", "tiny_pixel", "--out", str(out), "--resume", "--set", "train.steps=3", *small]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert read_checkpoint(out / "checkpoints" / "step_00000003").step == 3


def test_ctrl_c_saves_a_checkpoint_before_exiting(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "t2i.cli", "train", "tiny_pixel", "--out", str(out), "--no-progress",
           "--set", "train.steps=100000", "--set", "train.log_every=1", "--set", "train.checkpoint_every=100000",
           "--set", "train.batch_size=2", "--set", "diffusion.num_samples=2", "--set", "diffusion.sample_steps=2"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
    c = read_checkpoint(out / "checkpoints" / f"step_{steps[-1]:08d}")
    assert c.step == steps[-1] >= 1 and "(signal)" in stdout


def test_cli_until_step_stops_early_on_the_full_schedule(tmp_path, capsys):
    """--until-step N ends at step N with a checkpoint while the LR follows the recipe's whole schedule,
    so a run cut short by --max-minutes can be rerun to the same step."""
    small = ["--set", "train.batch_size=2", "--set", "diffusion.num_samples=2", "--set", "diffusion.sample_steps=2",
             "--set", "train.log_every=1", "--set", "train.warmup_steps=0", "--no-progress"]
    cut, full = tmp_path / "cut", tmp_path / "full"
    assert main(["train", "tiny_pixel", "--out", str(cut), "--set", "train.steps=4", "--until-step", "2", *small]) == 0
    assert main(["train", "tiny_pixel", "--out", str(full), "--set", "train.steps=4", *small]) == 0
    cut_logs = [json.loads(line) for line in (cut / "metrics.jsonl").open()]
    full_logs = [json.loads(line) for line in (full / "metrics.jsonl").open()]
    assert [r["step"] for r in cut_logs] == [1, 2] and cut_logs == [{**r, "images_per_s": c["images_per_s"],
                                                                   "elapsed_s": c["elapsed_s"]}
                                                                  for r, c in zip(full_logs[:2], cut_logs)]
    assert read_checkpoint(cut / "checkpoints" / "step_00000002").step == 2
    capsys.readouterr()
    assert main(["train", "tiny_pixel", "--out", str(tmp_path / "bad"), "--until-step", "0"]) == 2
