"""bf16 = "auto" picks bf16 autocast only where the hardware does bf16 natively, and says so."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from t2i.nn import attention as attention_module
from t2i.nn import precision
from t2i.train import RecipeError, Trainer, load_recipe


@pytest.mark.parametrize("flags,expected", [({"avx2", "fma"}, False), ({"avx512f", "avx512_bf16"}, True),
                                             ({"amx_bf16", "avx512f"}, True), (set(), False)])
def test_auto_uses_bf16_only_with_native_bf16(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    use, why = precision.resolve_bf16("auto", "cpu")
    assert use is expected
    assert ("bf16 autocast" if expected else "fp32") in why and "auto" in why
    assert precision.resolve_bf16(True, "cpu")[0] is True and precision.resolve_bf16(False, "cpu")[0] is False


def test_the_run_records_its_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    logs = []
    recipe = load_recipe("tiny_pixel", ["train.steps=1", "train.batch_size=2", "train.bf16='auto'"])
    trainer = Trainer(recipe, tmp_path, progress=False, log=logs.append)
    trainer.run()
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["bf16"] is False and "fp32" in env["precision"] and env["cpu_capability"]
    assert any("bf16 = auto -> fp32" in m for m in logs)
    with pytest.raises(RecipeError, match="bf16"):
        load_recipe("tiny_pixel", ["train.bf16='sometimes'"])


def test_cpu_attention_under_bf16_autocast_runs_in_float32():
    """Under CPU bf16 autocast `attention` computes in float32 (PyTorch's bf16 CPU kernel is slow), returning
    the inputs' dtype; turned off, it is PyTorch's bf16 kernel."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 16, 8, generator=g).bfloat16() for _ in range(3))
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention_module.attention(q, k, v)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, exact.bfloat16())
    try:
        attention_module.set_cpu_fp32_attention(False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = attention_module.attention(q, k, v)
        assert (low.float() - exact).abs().max() < 0.05
    finally:
        attention_module.set_cpu_fp32_attention(True)
