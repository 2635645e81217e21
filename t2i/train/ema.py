"""An exponential moving average of a model's weights, kept apart from the raw weights."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class EMA:
    """ema <- d ema + (1 - d) w after each step, with d warmed up as min(decay, (1 + n) / (10 + n)).

    The warm-up (as in many diffusion codebases) keeps early averages from being dominated by
    the random initialisation. Buffers and frozen parameters (requires_grad False, e.g. a
    pretrained text encoder) are copied, not averaged, so rounding never drifts them. State is
    float32 on the weights' device, keyed like `module.state_dict()`.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.module, self.decay = module, decay
        self.updates = 0
        self.averaged = {k for k, p in module.named_parameters(remove_duplicate=False)
                         if p.requires_grad and p.is_floating_point()}
        self.frozen = {k for k, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
        self.state = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                      for k, v in module.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        averaged, weights = [], []
        for k, v in self.module.state_dict().items():
            if k in self.averaged:
                averaged.append(self.state[k])
                weights.append(v.detach().float())
            else:
                self.state[k].copy_(v)
        if averaged:
            torch._foreach_lerp_(averaged, weights, 1 - d)  # ema + (1 - d)(w - ema) = d ema + (1 - d) w, one kernel
        self.updates += 1

    @contextmanager
    @torch.no_grad()
    def swapped_in(self) -> Iterator[None]:
        """Temporarily load the EMA weights into the module (e.g. for sample grids)."""
        raw = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.module.load_state_dict({k: v.to(raw[k].dtype) for k, v in self.state.items()})
        try:
            yield
        finally:
            self.module.load_state_dict(raw)

    def saved_state(self) -> dict[str, torch.Tensor]:
        """The state a checkpoint stores: frozen parameters (a pretrained text encoder) left out, since they
        equal the model's own and the checkpoint already holds those (`read_checkpoint` fills them back)."""
        return {k: v for k, v in self.state.items() if k not in self.frozen}

    def load(self, state: dict[str, torch.Tensor], updates: int) -> None:
        for k, v in state.items():
            if k not in self.state:
                raise ValueError(f"EMA state has an unexpected key '{k}'")
            self.state[k].copy_(v)
        missing = set(self.state) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks keys: {sorted(missing)[:5]}")
        self.updates = updates
