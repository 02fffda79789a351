"""`torch` backend: gather + GEMM over each task's active neurons only (docs/design.md §2-3).

Homogeneous batch (task t, active rows A): six GEMMs over |A| columns,
    W1a = W1[A], W2a = W2[:, A]         gathered once per call, kept for backward
    Z = X W1aᵀ + b1[A]   H = act(Z)   Y = H W2aᵀ + b2 + c,   c = W2 (act(b1) ⊙ inactive)
    dH = dY W2a   dZ = dH ⊙ act'(Z)   dX = dZ W1a   dW1[A] = dZᵀ X   dW2[:, A] = dYᵀ H
(a full mask skips the gathers). Mixed batch: tokens sorted by task (plan.order), and the same
six GEMMs run as `torch.nn.functional.grouped_mm` calls over per-task weight tables [T, K, ·]
padded to the largest task with zero rows: a zero row of W1 and b1 gives Z = 0, H = act(0) = 0,
and W2's zero column takes nothing from it, so pads add nothing to any output or gradient.
No host syncs. Float64, and sizes that break grouped_mm's 16-byte stride rule, run the grouped
GEMMs as a loop over the tasks instead (one host copy of the group boundaries per call).
Saved for backward: the gathered weights and H for ReLU (relu'(Z) = [H > 0]) or Z for GELU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .activations import act, act_backward, act_inplace


def available(device: torch.device) -> str | None:
    return None


# ---- homogeneous batches ------------------------------------------------------------------
def _homogeneous_fwd(x, w1, b1, w2, b2, plan, activation, mask_bias):
    tables, t = plan.tables, plan.task
    if tables.is_full(t):
        w1a, b1a, w2a, hb, c = w1, b1, w2, None, b2
    else:
        idx = tables.active_idx(t)
        w1a, b1a, w2a = w1.index_select(0, idx), b1.index_select(0, idx), w2.index_select(1, idx)
        hb = None if mask_bias else act(b1, activation).mul_(tables.inactive(t, b1.dtype))
        c = b2 if hb is None else torch.addmv(b2, w2, hb)
    z = torch.addmm(b1a, x, w1a.t())
    h = act_inplace(z, activation)
    y = torch.addmm(c, h, w2a.t())
    return y, (w1a, w2a, h if activation == "relu" else z, hb)


def _homogeneous_bwd(dy, x, w1, b1, w2, plan, saved, activation):
    w1a, w2a, a, hb = saved
    h = a if activation == "relu" else act(a, activation)
    dz = act_backward(dy.mm(w2a), a, activation)
    dx = dz.mm(w1a)
    db2 = dy.sum(0)
    if plan.tables.is_full(plan.task):
        return dx, dz.t().mm(x), dz.sum(0), dy.t().mm(h), db2
    idx = plan.tables.active_idx(plan.task)
    dw1 = w1.new_zeros(w1.shape).index_copy_(0, idx, dz.t().mm(x))
    if hb is None:  # mask_bias: inactive neurons output 0 and get no gradient
        dw2, db1 = w2.new_zeros(w2.shape), b1.new_zeros(b1.shape)
    else:  # inactive neurons output the constant act(b1_i): dW2[:, I] = ΣdY ⊗ act(b1_I),
        dw2 = torch.outer(db2, hb)  # db1[I] = act'(b1_I) ⊙ W2[:, I]ᵀ ΣdY
        g = w2.t().mv(db2)
        if activation == "relu":  # hb_i > 0 ⇔ i inactive and b1_i > 0
            db1 = act_backward(g, hb, activation)
        else:
            db1 = act_backward(g.mul_(plan.tables.inactive(plan.task, b1.dtype)), b1, activation)
    dw2.index_copy_(1, idx, dy.t().mm(h))
    db1.index_copy_(0, idx, dz.sum(0))
    return dx, dw1, db1, dw2, db2


# ---- mixed batches --------------------------------------------------------------------------
def _native_grouped(x: torch.Tensor, *cols: int) -> bool:
    """grouped_mm takes these operands: fp32/bf16/fp16 on CPU, bf16 on a Hopper-class GPU, and
    every row length a multiple of 16 bytes (the padded task width always is)."""
    if not hasattr(F, "grouped_mm") or any(c * x.element_size() % 16 for c in cols):
        return False
    if x.device.type == "cpu":
        return x.dtype in (torch.float32, torch.bfloat16, torch.float16)
    return x.dtype == torch.bfloat16 and x.device.type == "cuda" and torch.cuda.get_device_capability(x.device) >= (9, 0)


def grouped_mm(a: torch.Tensor, b: torch.Tensor, ends: torch.Tensor, native: bool, out_dtype=None) -> torch.Tensor:
    """F.grouped_mm semantics: a [M, K] with b [G, K, N] → [M, N] (rows of group g use b[g]);
    a [M, S] with b [S, N] → [G, M, N] (group g sums over its slice of S). ends int32 [G];
    out_dtype float32 keeps a bf16/fp16 product unrounded (for a bias added before rounding)."""
    if native and out_dtype not in (None, a.dtype) and a.device.type == "cpu":
        return F.grouped_mm(a.to(out_dtype), b.to(out_dtype), offs=ends)  # no mixed-precision output on CPU
    if native:
        return F.grouped_mm(a, b, offs=ends, out_dtype=out_dtype)
    bounds = [0] + ends.tolist()  # fallback only (float64, unaligned sizes): one host copy
    dtype = out_dtype or a.dtype
    if b.dim() == 3:
        out = a.new_empty(a.shape[0], b.shape[2], dtype=dtype)
        for g, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            torch.mm(a[s:e].to(dtype), b[g].to(dtype), out=out[s:e])
        return out
    out = a.new_empty(len(bounds) - 1, a.shape[0], b.shape[1], dtype=dtype)
    for g, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        torch.mm(a[:, s:e].to(dtype), b[s:e].to(dtype), out=out[g])
    return out


def _mixed_fwd(x, w1, b1, w2, b2, plan, activation, mask_bias):
    (idx, valid, pad), tables = plan.tables.padded, plan.tables
    num_tasks, width = idx.shape
    flat = idx.view(-1)
    ends = plan.starts[1:]
    native = _native_grouped(x, x.shape[1], w2.shape[0])
    w1g = w1.index_select(0, flat).view(num_tasks, width, -1)
    b1g = b1.index_select(0, flat).view(num_tasks, width)
    w2g = w2.index_select(1, flat).view(-1, num_tasks, width)
    if tables.has_pads:
        w1g.masked_fill_(pad[..., None], 0)
        b1g.masked_fill_(pad, 0)
        w2g.masked_fill_(pad, 0)
    # biases join the products before rounding to bf16/fp16, as addmm's epilogue does (a
    # rounded Z + b1 could cancel to 0 and flip act'(Z))
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None
    xs = x.index_select(0, plan.order)
    z = grouped_mm(xs, w1g.transpose(1, 2), ends, native, acc).add_(b1g.index_select(0, plan.sorted_ids))
    z = z.to(x.dtype)
    h = act_inplace(z, activation)
    ys = grouped_mm(h, w2g.permute(1, 2, 0), ends, native, acc)
    if mask_bias:
        hb = None
        ys.add_(b2)
    else:  # per-task constant b2 + c_t, c_t = act(b1) ⊙ inactive_t @ W2ᵀ
        hb = act(b1, activation) * tables.inactive(None, b1.dtype)
        ys.add_(torch.addmm(b2, hb, w2.t()).index_select(0, plan.sorted_ids))
    y = x.new_empty(ys.shape).index_copy_(0, plan.order, ys.to(x.dtype))
    return y, (xs, w1g, w2g, h if activation == "relu" else z, hb)


def _mixed_bwd(dy, x, w1, b1, w2, plan, saved, activation):
    xs, w1g, w2g, a, hb = saved
    idx, _, _ = plan.tables.padded
    num_tasks, width = idx.shape
    flat = idx.view(-1)
    ends = plan.starts[1:]
    native = _native_grouped(x, x.shape[1], w2.shape[0])
    h = a if activation == "relu" else act(a, activation)
    dys = dy.index_select(0, plan.order)
    dz = act_backward(grouped_mm(dys, w2g.permute(1, 0, 2), ends, native), a, activation)
    dx = torch.empty_like(x).index_copy_(0, plan.order, grouped_mm(dz, w1g, ends, native))
    dw1 = w1.new_zeros(w1.shape).index_add_(0, flat, grouped_mm(dz.t(), xs, ends, native).view(-1, x.shape[1]))
    dw2g = grouped_mm(h.t(), dys, ends, native).view(-1, w2.shape[0])  # rows of dW2ᵀ
    group_dz = dz.new_zeros(num_tasks, width).index_add_(0, plan.sorted_ids, dz)
    if hb is None:  # mask_bias
        dw2t, db1 = w2.new_zeros(w2.shape[1], w2.shape[0]), b1.new_zeros(b1.shape)
    else:  # inactive neurons: dW2ᵀ[I_t] += act(b1_I) ⊗ ΣdY_t, db1[I_t] += act'(b1_I) ⊙ W2[:, I_t]ᵀ ΣdY_t
        task_dy = dy.new_zeros(num_tasks, dy.shape[1]).index_add_(0, plan.sorted_ids, dys)
        dw2t = hb.t().mm(task_dy)
        g = (task_dy.mm(w2) * plan.tables.inactive(None, b1.dtype)).sum(0)
        db1 = act_backward(g, b1, activation)  # relu: [b1 > 0] = relu'(b1), so b1 stands in for H
    dw2t.index_add_(0, flat, dw2g)
    db1.index_add_(0, flat, group_dz.view(-1))
    return dx, dw1, db1, dw2t.t(), dy.sum(0)


# ---- backend protocol (registry.py) ----------------------------------------------------------
def masked_ffn_fwd(x, w1, b1, w2, b2, plan, activation, mask_bias):
    """→ (y [N, d_out], saved tuple for masked_ffn_bwd)."""
    fwd = _mixed_fwd if plan.mixed else _homogeneous_fwd
    return fwd(x, w1, b1, w2, b2, plan, activation, mask_bias)


def masked_ffn_bwd(dy, x, w1, b1, w2, b2, plan, saved, activation, mask_bias):
    """→ (dx, dw1, db1, dw2, db2)."""
    bwd = _mixed_bwd if plan.mixed else _homogeneous_bwd
    return bwd(dy, x, w1, b1, w2, plan, saved, activation)


def fc1_act_count(x, w1, b1, counts, routing, valid, activation, write_output):
    """H = act(x W1ᵀ + b1) (or [0, f]); counts[t] += valid (Z > 0) per task, without a sync."""
    z = torch.addmm(b1, x, w1.t())
    pos = z > 0
    if valid is not None:
        pos &= valid[:, None]
    if routing.mixed:
        per_task = counts.new_zeros(counts.shape, dtype=torch.int32)
        counts += per_task.index_add_(0, routing.task_ids, pos.to(torch.int32))
    else:  # summing bytes into int32 is ~2x faster than bool into int64
        counts[routing.task] += pos.view(torch.uint8).sum(0, dtype=torch.int32)
    return act(z, activation) if write_output else z.new_empty(0, w1.shape[0])
