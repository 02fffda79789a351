"""Exponential moving average (EMA) of a model's parameters.

``shadow ← d·shadow + (1 − d)·param`` after every update, with the usual warm-up of the
decay, ``d_t = min(decay, (1 + t) / (10 + t))``, so early averages do not drag the random
initialisation along. Small, noisy batches (the tiny preset's 800 tokens) make the averaged
weights translate better than the last ones (docs/nmt-tiny-cpu.md); the trainer validates,
scores and saves the average, and keeps the online weights in the checkpoint for ``--resume``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


class EMA:
    """Shadow copies of ``model``'s parameters (same dtype and device)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay: must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.updates = 0
        self.names = [n for n, _ in model.named_parameters()]
        self.shadow = [p.detach().clone() for _, p in model.named_parameters()]

    def _params(self, model: torch.nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        return [params[n].detach() for n in self.names]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold ``model``'s current parameters into the average."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, self._params(model), 1.0 - d)

    @contextmanager
    @torch.no_grad()
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """Within the block ``model`` holds the averaged parameters; the online ones come back
        afterwards (also on an exception)."""
        params = self._params(model)
        online = [p.clone() for p in params]
        torch._foreach_copy_(params, self.shadow)
        try:
            yield
        finally:
            torch._foreach_copy_(params, online)

    def averaged_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``model.state_dict()`` with the averaged parameters (buffers as they are)."""
        state = dict(model.state_dict())
        state.update({n: t.clone() for n, t in zip(self.names, self.shadow)})
        return state

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates}

    def load(self, state: dict, averaged: dict[str, torch.Tensor]) -> None:
        """Restore from ``state_dict()`` and the averaged weights (``averaged_state``)."""
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        missing = [n for n in self.names if n not in averaged]
        if missing:
            raise ValueError(f"averaged weights lack {missing[:3]}")
        with torch.no_grad():
            for t, n in zip(self.shadow, self.names):
                t.copy_(averaged[n])
