"""`torch` backend: gather + GEMM over each task's active neurons only (DESIGN §2).

Tokens are grouped by task (stable sort); for task t with active rows A:
    Z_A = X W1[A]ᵀ + b1[A],  Y = act(Z_A) W2[:, A]ᵀ + c_t + b2,  c_t = act(b1[I]) W2[:, I]ᵀ
Forward saves every task's Z_A [N_t, |A_t|] back to back (task order) at the start of a
[N, f] buffer (a static shape for the custom op; the unused tail reads as zeros). For ReLU
it saves H_A = relu(Z_A) instead, in place: relu'(Z) = (H > 0), and no temporary is needed.
"""
from __future__ import annotations

import numpy as np
import torch

from .activations import act, act_grad
from .memo import memo


def available(device: torch.device) -> str | None:
    return None


def group_tokens(task_ids: torch.Tensor, task: int, num_tasks: int, n: int):
    """→ (order [N] long or None, starts: list of T+1 ints). Task t's tokens are
    order[starts[t]:starts[t+1]] (stable), or all N tokens when `task` >= 0."""
    if task >= 0:
        return None, [0] * (task + 1) + [n] * (num_tasks - task)
    order = torch.argsort(task_ids, stable=True)
    counts = torch.bincount(task_ids, minlength=num_tasks)
    starts = [0] + torch.cumsum(counts, 0).tolist()
    return order, starts


def _task_groups(indices, offsets, starts):
    """Yield (t, token range start, end, active ids as long) for tasks that have tokens."""
    off = memo(offsets, ("host",), offsets.tolist)  # no device-to-host sync per call
    for t in range(len(off) - 1):
        if starts[t + 1] > starts[t]:
            yield t, starts[t], starts[t + 1], indices[off[t] : off[t + 1]].long()


def zero_buffer(n: int, f: int, like: torch.Tensor) -> torch.Tensor:
    """Zeros [n, f]. On CPU it comes from calloc (through numpy), so pages that are never
    written are never touched: a task using p·f neurons pays for p of the buffer, not all of it."""
    if like.device.type != "cpu" or n * f == 0:
        return like.new_zeros(n, f)
    raw = np.zeros(n * f * like.element_size(), dtype=np.uint8)
    return torch.from_numpy(raw).view(like.dtype).view(n, f)


def _packed(z: torch.Tensor, start: int, rows: int, cols: int) -> torch.Tensor:
    """Contiguous [rows, cols] view of the flat buffer z starting at element `start`."""
    return z.view(-1)[start : start + rows * cols].view(rows, cols)


def _inactive(idx: torch.Tensor, f: int, like: torch.Tensor) -> torch.Tensor:
    m = torch.ones(f, dtype=like.dtype, device=like.device)
    m[idx] = 0
    return m


def masked_ffn_fwd(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias):
    n, f = x.shape[0], w1.shape[0]
    order, starts = group_tokens(task_ids, task, offsets.numel() - 1, n)
    xs = x if order is None else x.index_select(0, order)
    ys = x.new_empty(n, w2.shape[0])
    z, used = zero_buffer(n, f, x), 0
    hb = None if mask_bias else act(b1, activation)
    for t, s, e, idx in _task_groups(indices, offsets, starts):
        base = b2 if mask_bias else b2 + w2 @ (hb * _inactive(idx, f, hb))
        if idx.numel() == 0:
            ys[s:e] = base
            continue
        zt = _packed(z, used, e - s, idx.numel())
        used += zt.numel()
        torch.addmm(b1[idx], xs[s:e], w1.index_select(0, idx).t(), out=zt)
        ht = zt.relu_() if activation == "relu" else act(zt, activation)
        torch.addmm(base, ht, w2.index_select(1, idx).t(), out=ys[s:e])
    y = ys if order is None else torch.empty_like(ys).index_copy_(0, order, ys)
    return y, z


def masked_ffn_bwd(dy, x, w1, b1, w2, b2, indices, offsets, task_ids, task, z, activation, mask_bias):
    n, f = x.shape[0], w1.shape[0]
    order, starts = group_tokens(task_ids, task, offsets.numel() - 1, n)
    xs = x if order is None else x.index_select(0, order)
    dys = dy if order is None else dy.index_select(0, order)
    dxs = x.new_empty(x.shape)
    dw1, db1 = torch.zeros_like(w1), torch.zeros_like(b1)
    dw2 = torch.zeros_like(w2)
    if not mask_bias:
        hb, hb_grad = act(b1, activation), act_grad(b1, activation)
    used = 0
    for t, s, e, idx in _task_groups(indices, offsets, starts):
        dyt = dys[s:e]
        if idx.numel():
            zt = _packed(z, used, e - s, idx.numel())
            used += zt.numel()
            dzt = dyt @ w2.index_select(1, idx)
            if activation == "relu":  # zt holds H: relu'(Z) = (H > 0)
                ht = zt
                dzt.masked_fill_(ht <= 0, 0)
            else:
                ht = act(zt, activation)
                dzt.mul_(act_grad(zt, activation))
            torch.mm(dzt, w1.index_select(0, idx), out=dxs[s:e])
            dw1.index_add_(0, idx, dzt.t() @ xs[s:e])
            db1.index_add_(0, idx, dzt.sum(0))
            dw2.index_add_(1, idx, dyt.t() @ ht)
        else:
            dxs[s:e] = 0
        if not mask_bias:  # inactive neurons output the constant act(b1_i)
            sdy = dyt.sum(0)
            inactive = _inactive(idx, f, b1)
            db1 += inactive * hb_grad * (w2.t() @ sdy)
            dw2 += torch.outer(sdy, inactive * hb)
    dx = dxs if order is None else torch.empty_like(dxs).index_copy_(0, order, dxs)
    return dx, dw1, db1, dw2, dy.sum(0)


def fc1_act_count(x, w1, b1, counts, task_ids, task, valid, activation, write_output):
    z = torch.addmm(b1, x, w1.t())
    pos = z > 0
    if valid is not None:
        pos &= valid[:, None]
    pos = pos.view(torch.uint8)  # summing bytes into int32 is ~2x faster than bool into int64
    if task >= 0:
        counts[task] += pos.sum(0, dtype=torch.int32)
    else:
        for t in torch.unique(task_ids).tolist():
            counts[t] += pos[task_ids == t].sum(0, dtype=torch.int32)
    return act(z, activation) if write_output else z.new_empty(0, w1.shape[0])
