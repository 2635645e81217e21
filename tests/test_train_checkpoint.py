"""Checkpoints: written aside and promoted atomically, verified by sha256, broken ones skipped, last K kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from t2i.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    save_checkpoint,
    verify,
)


def _state(seed: int):
    g = torch.Generator().manual_seed(seed)
    model = {"net.w": torch.randn(4, 3, generator=g), "net.b": torch.randn(4, generator=g)}
    ema = {k: v * 0.5 for k, v in model.items()}
    lin = torch.nn.Linear(3, 4)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3)
    lin(torch.randn(2, 3, generator=g)).sum().backward()
    opt.step()
    return model, ema, opt


def _save(root, step, seed=0, keep=3, on_file=None):
    model, ema, opt = _state(seed)
    return save_checkpoint(root, step, config={"stage": "x", "step": step}, model=model, ema=ema,
                           optimizer=opt.state_dict(), state={"step": step, "data": {"epoch": 0, "cursor": step}},
                           extras={"tokenizer.json": b"{}"}, keep=keep, on_file=on_file)


def test_round_trip_everything(tmp_path):
    path = _save(tmp_path, 7, seed=1)
    c = read_checkpoint(path)
    model, ema, opt = _state(1)
    assert c.step == 7 and c.config == {"stage": "x", "step": 7} and c.state["data"]["cursor"] == 7
    assert all(torch.equal(c.model[k], model[k]) and torch.equal(c.ema[k], ema[k]) for k in model)
    want = opt.state_dict()
    assert c.optimizer["param_groups"] == [dict(g, betas=list(g["betas"])) for g in want["param_groups"]]
    for i, st in want["state"].items():
        for k, v in st.items():
            assert torch.equal(c.optimizer["state"][i][k], v)
    assert c.extra("tokenizer.json") == b"{}"
    lin = torch.nn.Linear(3, 4)
    torch.optim.AdamW(lin.parameters(), lr=1e-3).load_state_dict(c.optimizer)  # loads back


def test_keeps_the_last_k(tmp_path):
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]


def test_corrupted_and_unfinished_checkpoints_are_skipped_with_a_message(tmp_path):
    good = _save(tmp_path, 1)
    bad = _save(tmp_path, 2)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the weights
    (bad / "model.safetensors").write_bytes(bytes(data))
    messages: list[str] = []
    assert latest_checkpoint(tmp_path, log=messages.append) == good
    assert any("model.safetensors does not match its sha256" in m for m in messages)
    with pytest.raises(CheckpointError):
        read_checkpoint(bad)

    half = _save(tmp_path, 3)
    (half / "manifest.json").unlink()  # as if killed before the manifest
    truncated = _save(tmp_path, 4)
    (truncated / "ema.safetensors").write_bytes(b"")
    messages.clear()
    assert latest_checkpoint(tmp_path, log=messages.append) == good
    assert any("no manifest.json" in m for m in messages) and any("ema.safetensors has 0 bytes" in m for m in messages)
    with pytest.raises(CheckpointError, match="no manifest.json"):
        verify(half)


KILLER = textwrap.dedent(
    """
    import sys, time, torch
    from t2i.train.checkpoint import save_checkpoint
    root = sys.argv[1]
    model = {"w": torch.arange(6.0)}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]).state_dict()
    def save(step, on_file=None):
        save_checkpoint(root, step, config={}, model=model, ema=model, optimizer=opt,
                        state={"step": step}, keep=3, on_file=on_file)
    save(1)
    def slow(name):
        print("writing", name, flush=True)
        time.sleep(0.3)
    save(2, on_file=slow)
    """
)


def test_kill_9_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        # wait until the second save is halfway through its files, then kill -9
        for line in proc.stdout:
            if "writing optimizer.safetensors" in line:
                break
        time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / ".tmp-step_00000002").is_dir()  # the partial save is there ...
    messages: list[str] = []
    found = latest_checkpoint(tmp_path, log=messages.append)
    assert found is not None and found.name == "step_00000001"  # ... but never loaded
    assert any(".tmp-step_00000002" in m and "unfinished save" in m for m in messages)
    assert torch.equal(read_checkpoint(found).model["w"], torch.arange(6.0))
    # the next save of the same step replaces the partial one
    model, ema, opt = _state(0)
    save_checkpoint(tmp_path, 2, config={}, model=model, ema=ema, optimizer=opt.state_dict(), state={})
    assert latest_checkpoint(tmp_path, log=messages.append).name == "step_00000002"
    assert not (tmp_path / ".tmp-step_00000002").exists()


def test_broken_saves_never_push_the_last_good_checkpoint_out(tmp_path):
    _save(tmp_path, 1, keep=2)
    for step in (2, 3):
        (_save(tmp_path, step, keep=2) / "manifest.json").unlink()  # two saves that died
    _save(tmp_path, 4, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001", "step_00000002", "step_00000003",
                                                             "step_00000004"]
    _save(tmp_path, 5, keep=2)  # now two good ones are newer: the old good one and the broken ones go
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]
