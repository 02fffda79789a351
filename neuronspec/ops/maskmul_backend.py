"""`maskmul` backend: the original method's dense mask-multiply, in one pass for any task mix.

    Z = where(M, X W1ᵀ + b1, b1)   (mask_bias: where(M, X W1ᵀ + b1, 0)),   M = active[task of each token]
    H = act(Z),   Y = H W2ᵀ + b2
    dZ = (dY W2) ⊙ act'(Z),  dZ_M = where(M, dZ, 0)
    dX = dZ_M W1,  dW1 = dZ_Mᵀ X,  db1 = Σ dZ (mask_bias: Σ dZ_M),  dW2 = dYᵀ H,  db2 = Σ dY
Masking W1's rows is masking the columns of X W1ᵀ, so this equals docs/design.md §2 with the
dense FFN's three GEMMs per direction plus one select, whatever the batch's task mix: the cost
of the original implementation (which multiplies the weights by dense masks). `auto` routes
here wherever computing only the active neurons is not measured faster (routing.py).
Saved for backward: M (a view of the masks' table when homogeneous) and H (ReLU) or Z (GELU).
"""
from __future__ import annotations

import torch

from .activations import act, act_backward, act_inplace


def available(device: torch.device) -> str | None:
    return None


def masked_ffn_fwd(x, w1, b1, w2, b2, plan, activation, mask_bias):
    """→ (y [N, d_out], saved tuple for masked_ffn_bwd)."""
    tables = plan.tables
    z = torch.addmm(b1, x, w1.t())
    if plan.mixed or plan.uniform:  # [N, f], or [1, f] broadcast over the tokens
        m = tables.active.index_select(0, plan.task_ids)
    else:
        m = None if tables.is_full(plan.task) else tables.active[plan.task]
    if m is not None:
        z = torch.where(m, z, 0 if mask_bias else b1)
    h = act_inplace(z, activation)
    y = torch.addmm(b2, h, w2.t())
    return y, (m, h if activation == "relu" else z)


def masked_ffn_bwd(dy, x, w1, b1, w2, b2, plan, saved, activation, mask_bias):
    """→ (dx, dw1, db1, dw2, db2)."""
    m, a = saved
    h = a if activation == "relu" else act(a, activation)
    dz = act_backward(dy.mm(w2), a, activation)
    dzm = dz if m is None else torch.where(m, dz, 0)
    return dzm.mm(w1), dzm.t().mm(x), (dzm if mask_bias else dz).sum(0), dy.t().mm(h), dy.sum(0)

