"""Exponential moving average of model parameters (Polyak averaging), updated once per optimizer step."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copy of every floating-point entry of a module's state dict.

    After optimizer step t (counting from 1) the shadow follows the recurrence
        ema_t = d_t * ema_{t-1} + (1 - d_t) * theta_t,  ema_0 = theta_0,
    with d_t = decay, or with warm-up d_t = min(decay, (1 + t) / (10 + t)) so that early, poorly trained
    weights are forgotten quickly. Integer buffers are copied, not averaged.
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay={decay!r} must be in [0, 1); 0.999 is typical, 0 disables averaging")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def decay_at(self, update: int) -> float:
        """The factor d_t used by the ``update``-th call (1-based)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + update) / (10.0 + update))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        d = self.decay_at(self.num_updates)
        for key, value in module.state_dict().items():
            shadow = self.shadow[key]
            if shadow.is_floating_point():
                shadow.mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                shadow.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise ValueError(f"EMA state does not match the model: differing keys {sorted(missing)[:5]}")
        for key, value in state.items():
            self.shadow[key].copy_(value)
        self.num_updates = num_updates
