"""Learning-rate schedules (fairseq's ``inverse_sqrt`` and a linear decay to 0 over the budget)."""
from __future__ import annotations

import math

import torch


class InverseSqrtSchedule:
    """fairseq ``inverse_sqrt``: linear warm-up from ``init_lr`` to ``lr`` over ``warmup``
    updates, then ``lr · sqrt(warmup / step)``. ``step(progress)`` ignores the progress."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, warmup: int, init_lr: float = 1e-7):
        self.optimizer, self.lr, self.warmup, self.init_lr = optimizer, lr, warmup, init_lr
        self.step_count = 0
        self.progress = 0.0
        self._apply()

    def _ramp(self, step: int) -> float:
        """The warm-up line, ``lr`` from ``warmup`` updates on."""
        if step >= self.warmup:
            return self.lr
        return self.init_lr + (self.lr - self.init_lr) * step / self.warmup

    def value(self, step: int) -> float:
        if step < self.warmup:
            return self._ramp(step)
        return self.lr * math.sqrt(max(self.warmup, 1) / max(step, 1))

    def _apply(self) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.value(self.step_count)

    def step(self, progress: float = 0.0) -> None:
        """One update done; ``progress``: the fraction of the run's budget used so far."""
        self.step_count += 1
        self.progress = min(max(float(progress), 0.0), 1.0)
        self._apply()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "lr": self.lr, "warmup": self.warmup, "init_lr": self.init_lr,
                "progress": self.progress}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.progress = float(state.get("progress", 0.0))  # states written before the linear schedule
        self._apply()


class LinearDecaySchedule(InverseSqrtSchedule):
    """The same warm-up, then a straight line to 0 at the end of the run's budget:
    ``min(warm-up ramp, lr · (1 - progress))`` (fairseq's ``polynomial_decay`` with power 1
    and end lr 0, over a budget of updates and/or minutes: ``Trainer`` passes the progress)."""

    def value(self, step: int) -> float:
        return min(self._ramp(step), self.lr * (1.0 - self.progress))


LR_SCHEDULERS = {"inverse_sqrt": InverseSqrtSchedule, "linear": LinearDecaySchedule}
