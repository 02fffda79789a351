"""Plain-torch oracle of docs/design.md §2: dense weights times dense masks (the original method).

Differentiable by autograd; every other backend is tested against these two functions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .activations import act, act_grad


def dense_task_masks(indices: torch.Tensor, offsets: torch.Tensor, num_neurons: int) -> torch.Tensor:
    """CSR (indices, offsets) → float 0/1 masks [T, f]."""
    T = offsets.numel() - 1
    sizes = (offsets[1:] - offsets[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(T, device=indices.device), sizes)
    m = torch.zeros(T, num_neurons, device=indices.device)
    m[rows, indices.long()] = 1.0
    return m


def masked_ffn_reference(x, w1, b1, w2, b2, indices, offsets, task_ids, activation="relu", mask_bias=False):
    """Y = act(X (m_t ⊙ W1)ᵀ + b1') W2ᵀ + b2 per token, b1' = m_t ⊙ b1 if mask_bias else b1.

    x [N, d]; task_ids LongTensor [N]; returns [N, d]. Tokens of each task are computed with
    that task's masked weights and written back in the original order.
    """
    masks = dense_task_masks(indices, offsets, w1.shape[0]).to(w1.dtype)
    # zeros that depend on x (a sum over no columns: 0 even for non-finite x), so that the
    # result is differentiable even when there are no tokens
    y = x.new_zeros(x.shape[0], w2.shape[0]) + x[:, :0].sum(1, keepdim=True)
    for t in torch.unique(task_ids).tolist():
        rows = (task_ids == t).nonzero().squeeze(1)
        m = masks[t]
        bias1 = b1 * m if mask_bias else b1
        h = act(F.linear(x[rows], w1 * m[:, None], bias1), activation)
        y = y.index_put((rows,), F.linear(h, w2, b2))
    return y


def fc1_act_count_reference(x, w1, b1, counts, task_ids, valid, activation="relu"):
    """H = act(X W1ᵀ + b1) [N, f]; counts[t, n] += #{valid tokens of task t with Z[., n] > 0}."""
    z = F.linear(x, w1, b1)
    active = (z > 0).long()
    if valid is not None:
        active = active * valid.long()[:, None]
    counts.index_add_(0, task_ids, active)
    return act(z, activation)


# ---- backend protocol (see registry.py): the oracle as a backend -----------------------
def available(device: torch.device) -> str | None:
    return None


def masked_ffn_fwd(x, w1, b1, w2, b2, plan, activation, mask_bias):
    y = masked_ffn_reference(x, w1, b1, w2, b2, plan.indices, plan.offsets, plan.ids(), activation, mask_bias)
    return y, ()


def masked_ffn_bwd(dy, x, w1, b1, w2, b2, plan, saved, activation, mask_bias):
    """Dense mask-multiply backward (the original method's cost): per task t with mask m,
    dZ = (dY W2) ⊙ act'(Z), dX = dZ (m ⊙ W1), dW1 += m ⊙ (dZᵀ X), db1 += Σ dZ (⊙ m if mask_bias),
    dW2 += dYᵀ act(Z), db2 += Σ dY."""
    ids = plan.ids()
    masks = dense_task_masks(plan.indices, plan.offsets, w1.shape[0]).to(w1.dtype)
    dx = torch.zeros_like(x)
    dw1, db1, dw2 = torch.zeros_like(w1), torch.zeros_like(b1), torch.zeros_like(w2)
    for t in torch.unique(ids).tolist():
        rows = (ids == t).nonzero().squeeze(1)
        m, xt, dyt = masks[t], x[rows], dy[rows]
        zt = F.linear(xt, w1 * m[:, None], b1 * m if mask_bias else b1)
        dzt = (dyt @ w2) * act_grad(zt, activation)
        dx[rows] = dzt @ (w1 * m[:, None])
        dw1 += m[:, None] * (dzt.t() @ xt)
        db1 += dzt.sum(0) * m if mask_bias else dzt.sum(0)
        dw2 += dyt.t() @ act(zt, activation)
    return dx, dw1, db1, dw2, dy.sum(0)


def act_count(x, w1, b1, counts, routing, valid, activation, write_output):
    h = fc1_act_count_reference(x, w1, b1, counts, routing.ids(), valid, activation)
    return h if write_output else h.new_empty(0, w1.shape[0])
