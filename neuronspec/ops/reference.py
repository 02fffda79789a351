"""Plain-torch oracle of docs/design.md §2 and §9: dense weights times dense masks (the original
method), for plain and gated FFNs.

Differentiable by autograd; every other backend is tested against these functions. As a
backend, its backward is the same mask-multiply's, written out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .activations import ACTIVATIONS, act, act_grad
from .backends import ALL_FLOATS, Caps
from .call import FFNWeights

CAPS = Caps(dtypes={"cpu": ALL_FLOATS, "cuda": ALL_FLOATS}, activations=ACTIVATIONS, gated=True, counting=True)


def dense_task_masks(indices: torch.Tensor, offsets: torch.Tensor, num_neurons: int) -> torch.Tensor:
    """CSR (indices, offsets) → float 0/1 masks [T, f]."""
    T = offsets.numel() - 1
    sizes = (offsets[1:] - offsets[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(T, device=indices.device), sizes)
    m = torch.zeros(T, num_neurons, device=indices.device)
    m[rows, indices.long()] = 1.0
    return m


def ffn_reference(x, w: FFNWeights, indices, offsets, task_ids, activation="relu", mask_bias=False):
    """Per token of task t with mask m_t: H = act(X (m_t ⊙ W1)ᵀ + b1'), gated ⊙ (X (m_t ⊙ W_up)ᵀ
    + b_up'), Y = H W2ᵀ + b2, where b' = m_t ⊙ b if mask_bias else b (any bias may be None).

    x [N, d]; task_ids LongTensor [N]; returns [N, d_out]. Tokens of each task are computed with
    that task's masked weights and written back in the original order."""
    masks = dense_task_masks(indices, offsets, w.w1.shape[0]).to(w.w1.dtype)
    # zeros that depend on x (a sum over no columns: 0 even for non-finite x), so that the
    # result is differentiable even when there are no tokens
    y = x.new_zeros(x.shape[0], w.w2.shape[0]) + x[:, :0].sum(1, keepdim=True)
    for t in torch.unique(task_ids).tolist():
        rows = (task_ids == t).nonzero().squeeze(1)
        m = masks[t]

        def masked(weight, bias):
            return F.linear(x[rows], weight * m[:, None], bias * m if mask_bias and bias is not None else bias)

        h = act(masked(w.w1, w.b1), activation)
        if w.gated:
            h = h * masked(w.w_up, w.b_up)
        y = y.index_put((rows,), F.linear(h, w.w2, w.b2))
    return y


def masked_ffn_reference(x, w1, b1, w2, b2, indices, offsets, task_ids, activation="relu", mask_bias=False):
    """Y = act(X (m_t ⊙ W1)ᵀ + b1') W2ᵀ + b2 per token, b1' = m_t ⊙ b1 if mask_bias else b1."""
    return ffn_reference(x, FFNWeights(w1, b1, w2, b2), indices, offsets, task_ids, activation, mask_bias)


def glu_ffn_reference(x, w_gate, b_gate, w_up, b_up, w_down, b_down, indices, offsets, task_ids,
                      activation="silu", mask_bias=False):
    """The gated FFN's mask-multiply (docs/design.md §9); w_up None: ungated."""
    return ffn_reference(x, FFNWeights(w_gate, b_gate, w_down, b_down, w_up, b_up), indices, offsets, task_ids,
                         activation, mask_bias)


def fc1_act_count_reference(x, w1, b1, counts, task_ids, valid, activation="relu"):
    """H = act(X W1ᵀ + b1) [N, f]; counts[t, n] += #{valid tokens of task t with Z[., n] > 0}."""
    z = F.linear(x, w1, b1)
    active = (z > 0).long()
    if valid is not None:
        active = active * valid.long()[:, None]
    counts.index_add_(0, task_ids, active)
    return act(z, activation)


# ---- backend protocol (ops/backends.py): the oracle as a backend -----------------------
def forward(x, weights: FFNWeights, plan, opts):
    y = ffn_reference(x, weights, plan.indices, plan.offsets, plan.ids(), opts.activation, opts.mask_bias)
    return y, ()


def backward(dy, x, weights: FFNWeights, plan, opts, saved):
    """Dense mask-multiply backward (the original method's cost): per task t with mask m,
    G = X (m ⊙ W1)ᵀ + b1', U = X (m ⊙ W_up)ᵀ + b_up' (gated), dH = dY W2,
    dG = dH (⊙ U) ⊙ act'(G), dU = dH ⊙ act(G), dX = dG (m ⊙ W1) + dU (m ⊙ W_up),
    dW1 += m ⊙ (dGᵀ X), db1 += Σ dG (⊙ m if mask_bias), likewise dW_up, db_up from dU,
    dW2 += dYᵀ H, db2 = Σ dY."""
    w, ids = weights, plan.ids()
    masks = dense_task_masks(plan.indices, plan.offsets, w.w1.shape[0]).to(w.w1.dtype)
    dx = torch.zeros_like(x)
    grads = FFNWeights(*(None if t is None else torch.zeros_like(t) for t in w.tensors()))
    for t in torch.unique(ids).tolist():
        rows = (ids == t).nonzero().squeeze(1)
        m, xt, dyt = masks[t], x[rows], dy[rows]
        g = F.linear(xt, w.w1 * m[:, None], w.b1 * m if opts.mask_bias else w.b1)
        h, dh = act(g, opts.activation), dyt @ w.w2
        parts = [(grads.w1, grads.b1, w.w1, None)]
        if w.gated:
            u = F.linear(xt, w.w_up * m[:, None], w.b_up * m if opts.mask_bias else w.b_up)
            parts.append((grads.w_up, grads.b_up, w.w_up, dh * h))
            dh, h = dh * u, h * u
        parts[0] = (*parts[0][:3], dh * act_grad(g, opts.activation))
        for dw, db, weight, d in parts:
            dx[rows] += d @ (weight * m[:, None])
            dw += m[:, None] * (d.t() @ xt)
            db += d.sum(0) * m if opts.mask_bias else d.sum(0)
        grads.w2.add_(dyt.t() @ h)
    grads.b2.copy_(dy.sum(0))
    return dx, grads


def act_count(x, weights: FFNWeights, counting, opts):
    h = fc1_act_count_reference(x, weights.w1, weights.b1, counting.counts, counting.routing.ids(), counting.valid,
                                opts.activation)
    return h if counting.write_output else h.new_empty(0, weights.w1.shape[0])
