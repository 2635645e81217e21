"""Which precision runs fast here: bf16 autocast only where the hardware does bf16 natively.

PyTorch's CPU autocast runs bf16 matmuls and convolutions through oneDNN, which is fast with AVX-512
BF16 or AMX and emulated (measured ~12x slower than fp32 on an AVX2-only EPYC) without them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 dot products


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_description() -> str:
    """torch's CPU capability and whether bf16 is native, e.g. 'AVX512, native bf16 (avx512_bf16)'."""
    native = [f for f in NATIVE_BF16_FLAGS if f in cpu_flags()]
    bf16 = f"native bf16 ({', '.join(native)})" if native else "no native bf16"
    return f"{torch.backends.cpu.get_cpu_capability()}, {bf16}"


def bf16_is_fast(device: torch.device | str) -> bool:
    """True where bf16 autocast is known to beat fp32: CUDA GPUs with bf16, CPUs with AVX-512 BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(f in cpu_flags() for f in NATIVE_BF16_FLAGS)
    return False


def resolve_bf16(setting: bool | str, device: torch.device | str) -> tuple[bool, str]:
    """(use bf16, why) for a `bf16 = true | false | "auto"` setting on `device`."""
    if setting == "auto":
        fast = bf16_is_fast(device)
        where = cpu_description() if torch.device(device).type == "cpu" else str(device)
        return fast, f"bf16 = auto -> {'bf16 autocast' if fast else 'fp32'} ({where})"
    return bool(setting), f"bf16 = {str(bool(setting)).lower()} (set by the recipe)"
