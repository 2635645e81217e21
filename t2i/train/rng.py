"""Random numbers that survive a restart and a change of process count.

`SampleRNG` gives each sample of a global batch its own generator, seeded from (seed, step,
micro-batch, slot): a sample draws the same noise whether the batch runs in one process or is
split over several, and a resumed run draws what the uninterrupted one would have.
`capture` / `restore` save the global generators (torch CPU and CUDA, Python, NumPy), which
dropout and other library code use.
"""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of integers (stable across machines and Python versions)."""
    digest = hashlib.blake2b("/".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SampleRNG:
    """One CPU generator per sample; draws are stacked into a batch (B, ...)."""

    def __init__(self, seeds: list[int]):
        self.seeds = list(seeds)
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    @classmethod
    def for_slots(cls, seed: int, step: int, micro: int, slots: range | list[int]) -> "SampleRNG":
        return cls([derive_seed(seed, step, micro, slot) for slot in slots])

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal noise (B, *shape)."""
        return torch.stack([torch.randn(shape, generator=g) for g in self.generators])

    def rand(self) -> torch.Tensor:
        """Uniform [0, 1) (B,)."""
        return torch.cat([torch.rand(1, generator=g) for g in self.generators])

    def batch_generator(self) -> torch.Generator:
        """One generator for library calls that draw for a whole batch at once (resumable, but its
        draws depend on how the global batch is split over processes)."""
        return torch.Generator().manual_seed(derive_seed(*self.seeds))

    def each(self, draw) -> torch.Tensor:
        """Concatenate `draw(generator)` over the samples, e.g. a denoiser's training sigmas."""
        return torch.cat([draw(g) for g in self.generators])


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def capture() -> dict[str, Any]:
    """The global RNG states of this process as JSON-ready values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch_cpu": _b64(torch.get_rng_state()),
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def restore(state: dict[str, Any]) -> None:
    """Put back states from `capture` (CUDA ones when this machine has as many devices)."""
    torch.set_rng_state(_unb64(state["torch_cpu"]))
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python and NumPy."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
