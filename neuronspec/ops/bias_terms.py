"""The inactive-neuron bias terms of docs/design.md §2, shared by every gathering backend.

Biases are not masked: an inactive neuron i of task t outputs the constant
h_i = act(b1_i) (gated: act(b1_i) · b_up_i), which reaches Y through W2[:, I]:

    c_t      = W2 h_I                              (output_bias adds b2)
    dW2[:,I] += (Σ_rows dY) ⊗ h_I
    db1[I]   += act'(b1_I) ⊙ g_I   (gated: ⊙ b_up_I),   g = W2ᵀ Σ_rows dY
    db_up[I] += g_I ⊙ act(b1_I)                     (gated only)

Each function takes one task (`inactive` and Σ dY 1-D: [f], [d_out]) or every task at once
(2-D: [T, f], [T, d_out]); the caller picks the dtype (the Triton and CUDA launchers pass fp32).
With mask_bias=True none of this applies (h_I = 0).
"""
from __future__ import annotations

import torch

from .activations import TABLE, act, act_backward


def inactive_output(b1: torch.Tensor, inactive: torch.Tensor, activation: str,
                    b_up: torch.Tensor | None = None) -> torch.Tensor:
    """h_I: act(b1) ⊙ inactive (⊙ b_up when gated), [f] or [T, f] like `inactive` (0/1)."""
    h = act(b1, activation) * inactive
    return h if b_up is None else h * b_up


def output_bias(b2: torch.Tensor, w2: torch.Tensor, hb: torch.Tensor) -> torch.Tensor:
    """b2 + c_t = b2 + W2 h_I: [d_out] for hb [f], [T, d_out] for hb [T, f]."""
    return torch.addmv(b2, w2, hb) if hb.dim() == 1 else torch.addmm(b2, hb, w2.t())


def add_inactive_grads(sdy: torch.Tensor, w2: torch.Tensor, b1: torch.Tensor, hb: torch.Tensor,
                       inactive: torch.Tensor, activation: str, dw2: torch.Tensor | None, db1: torch.Tensor | None,
                       b_up: torch.Tensor | None = None, db_up: torch.Tensor | None = None) -> tuple:
    """The bias terms' gradients for dw2 [d_out, f], db1 [f] (and db_up [f] when gated), added
    in place into the given accumulators, or returned as new tensors where one is None (only
    with every task at once) → (dw2, db1, db_up). sdy: Σ dY of one task [d_out] (hb, inactive
    [f]) or of each task [T, d_out] (hb, inactive [T, f])."""
    if sdy.dim() == 1:
        dw2.addr_(sdy, hb)
        g = w2.t().mv(sdy)
        if b_up is None and TABLE[activation].saves_output:  # relu: hb_i > 0 ⇔ i inactive and b1_i > 0
            return dw2, db1.add_(act_backward(g, hb, activation)), None
        g.mul_(inactive)
    else:
        part = hb.t().mm(sdy).t()
        dw2 = part if dw2 is None else dw2.add_(part)
        g = (sdy.mm(w2) * inactive).sum(0)
    if b_up is None:
        return dw2, _add(db1, act_backward(g, b1, activation)), None
    return dw2, _add(db1, act_backward(g * b_up, b1, activation)), _add(db_up, g * act(b1, activation))


def _add(acc: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value if acc is None else acc.add_(value)
