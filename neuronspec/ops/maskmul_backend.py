"""`maskmul` backend: the original method's dense mask-multiply, in one pass for any task mix.

    Z = where(M, X W1ᵀ + b1, b1)   (mask_bias: where(M, X W1ᵀ + b1, 0)),   M = active[task of each token]
    H = act(Z),   Y = H W2ᵀ + b2
    dZ = (dY W2) ⊙ act'(Z),  dZ_M = where(M, dZ, 0)
    dX = dZ_M W1,  dW1 = dZ_Mᵀ X,  db1 = Σ dZ (mask_bias: Σ dZ_M),  dW2 = dYᵀ H,  db2 = Σ dY
Masking W1's rows is masking the columns of X W1ᵀ, so this equals docs/design.md §2 with the
dense FFN's three GEMMs per direction plus one select, whatever the batch's task mix: the cost
of the original implementation (which multiplies the weights by dense masks). `auto` routes
here wherever computing only the active neurons is not measured faster (routing.py).
Plain FFNs only (CAPS: `auto` sends gated ones to the torch backend).
Saved for backward: M (a view of the masks' table when homogeneous) and H (ReLU) or Z otherwise.
"""
from __future__ import annotations

import torch

from .activations import ACTIVATIONS, act_backward, act_inplace, from_saved, saved_for_backward
from .backends import ALL_FLOATS, Caps
from .call import FFNWeights

CAPS = Caps(dtypes={"cpu": ALL_FLOATS, "cuda": ALL_FLOATS}, activations=ACTIVATIONS, uniform=True)


def forward(x, weights: FFNWeights, plan, opts):
    """→ (y [N, d_out], saved tuple for backward)."""
    w1, b1, w2, b2 = weights.tensors()[:4]
    tables = plan.tables
    z = torch.addmm(b1, x, w1.t())
    if plan.mixed or plan.uniform:  # [N, f], or [1, f] broadcast over the tokens
        m = tables.active.index_select(0, plan.task_ids)
    else:
        m = None if tables.is_full(plan.task) else tables.active[plan.task]
    if m is not None:
        z = torch.where(m, z, 0 if opts.mask_bias else b1)
    h = act_inplace(z, opts.activation)
    y = torch.addmm(b2, h, w2.t())
    return y, (m, saved_for_backward(z, h, opts.activation))


def backward(dy, x, weights: FFNWeights, plan, opts, saved):
    """→ (dx, FFNWeights of gradients)."""
    m, a = saved
    h = from_saved(a, opts.activation)
    dz = act_backward(dy.mm(weights.w2), a, opts.activation)
    dzm = dz if m is None else torch.where(m, dz, 0)
    grads = FFNWeights(dzm.t().mm(x), (dzm if opts.mask_bias else dz).sum(0), dy.t().mm(h), dy.sum(0))
    return dzm.mm(weights.w1), grads
