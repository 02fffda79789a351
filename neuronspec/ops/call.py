"""The small typed objects a backend receives: the weights, the options and (ops/plan.py) the plan.

A call's tensors travel as these objects from the public ops to the backends; the flat argument
list exists only at the two `torch.library` custom ops (registry.py), which need it. They are
named tuples: built on every call, so they must cost next to nothing.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .plan import Routing


class FFNWeights(NamedTuple):
    """w1 [f, d], b1 [f], w2 [d_out, f], b2 [d_out]; a gated FFN also has w_up [f, d], b_up [f]:
    h = act(x w1ᵀ + b1) ⊙ (x w_upᵀ + b_up), y = h w2ᵀ + b2 (masks select rows of w1 and w_up).
    Counting reads w1 and b1 only (w2, b2 None). Gradients come back in the same shape."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor | None = None
    b2: torch.Tensor | None = None
    w_up: torch.Tensor | None = None
    b_up: torch.Tensor | None = None

    @property
    def gated(self) -> bool:
        return self.w_up is not None

    def tensors(self) -> tuple:
        """(w1, b1, w2, b2, w_up, b_up), None where absent."""
        return tuple(self)


class FFNOptions(NamedTuple):
    """activation: a name of ops/activations.py; mask_bias: inactive neurons output 0 instead
    of the constant act(b1_i) (docs/design.md §2)."""

    activation: str
    mask_bias: bool = False


class Counting(NamedTuple):
    """What a counting call updates: counts int64 [T, f] (in place) over the tokens of `routing`
    whose `valid` (bool [N] or None: all) is set; write_output: also return H [N, f]."""

    counts: torch.Tensor
    routing: Routing
    valid: torch.Tensor | None
    write_output: bool
