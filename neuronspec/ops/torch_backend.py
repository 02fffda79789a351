"""`torch` backend: gather + GEMM over each task's active neurons only (docs/design.md §2-3).

Per task t with active rows A, six GEMMs over |A| columns:
    W1a = W1[A], W2a = W2[:, A]         gathered once per call, kept for backward
    Z = X W1aᵀ + b1[A]   H = act(Z)   Y = H W2aᵀ + b2 + c,   c = W2 (act(b1) ⊙ inactive)
    dH = dY W2a   dZ = dH ⊙ act'(Z)   dX = dZ W1a   dW1[A] = dZᵀ X   dW2[:, A] = dYᵀ H
(a full mask skips the gathers). A gated FFN also gathers W_up[A], b_up[A]:
U = X W_upaᵀ + b_up[A], H = act(Z) ⊙ U, dZ = (dH ⊙ U) ⊙ act'(Z), dU = dH ⊙ act(Z),
dX = dZ W1a + dU W_upa. The bias terms (c, and the inactive neurons' gradients) are
ops/bias_terms.py's. A homogeneous batch is one task: no host sync. A mixed batch has its
tokens sorted by task (plan.order), then
* on a GPU: the six GEMMs are `torch.nn.functional.grouped_mm` calls over per-task weight tables
  [T, K, ·] padded to the largest task with zero rows (a zero row of W1 and b1 gives Z = 0,
  H = act(0) = 0, and W2's zero column takes nothing from it: pads add nothing anywhere), the
  biases riding inside the GEMMs as an extra column of ones (_bias_rows). No host sync. Dtypes
  grouped_mm refuses (on a GPU all but bf16, and bf16 before Hopper; float64 on CPU) and sizes
  that break its 16-byte stride rule loop over the groups instead (one host copy of the bounds);
* on CPU: a loop over the tasks present (reading the group bounds costs nothing there, and only
  those tasks' rows are gathered: padded tables for every task cost 2× more at 16 tasks).
Gated mixed batches loop over the tasks on every device (one host read of the bounds on a GPU).
Saved for backward: the gathered weights and H for ReLU (relu'(Z) = [H > 0]) or Z otherwise
(gated: Z and U).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .activations import ACTIVATIONS, act, act_backward, act_inplace, from_saved, saved_for_backward
from .backends import ALL_FLOATS, Caps
from .bias_terms import add_inactive_grads, inactive_output, output_bias
from .call import FFNWeights

CAPS = Caps(dtypes={"cpu": ALL_FLOATS, "cuda": ALL_FLOATS}, activations=ACTIVATIONS, gated=True, grouping=True,
            uniform=True, counting=True)


# ---- one task's tokens, and a loop over the tasks ------------------------------------------------
# A task `t` is a host int (its own |A_t| neurons) or, for a UNIFORM call, a device tensor [1]
# (ops/plan.py): then the widest task's K neurons, task t's padded row, whose pads are zero rows
# of W1 and b1 and zero columns of W2 (Z = 0, H = act(0) = 0: they add nothing, and take no
# gradient: their dZ and H are exactly 0, so the index_add at their index 0 adds zeros).
def _neurons(tables, t, dtype, mask_bias):
    """(active ids long [k], pad bool [k] or None, inactive 0/1 `dtype` [f] or None when
    mask_bias) of task t."""
    if isinstance(t, int):
        return tables.active_idx(t), None, None if mask_bias else tables.inactive(t, dtype)
    idx, pad = tables.padded_row(t)
    inactive = None if mask_bias else tables.inactive(None, dtype).index_select(0, t).view(-1)
    return idx, (pad if tables.has_pads else None), inactive


def _is_full(tables, t) -> bool:
    return isinstance(t, int) and tables.is_full(t)


def _gather(w: FFNWeights, tables, t, opts):
    """(gathered FFNWeights with c = b2 + W2 hb as b2, hb = h_I or None, A, inactive) of task t
    (A and inactive None for a full mask)."""
    if _is_full(tables, t):
        return w, None, None, None
    idx, pad, inactive = _neurons(tables, t, w.b1.dtype, opts.mask_bias)
    hb = None if opts.mask_bias else inactive_output(w.b1, inactive, opts.activation, w.b_up)
    c = w.b2 if hb is None else output_bias(w.b2, w.w2, hb)
    rows = [None if v is None else v.index_select(0, idx) for v in (w.w1, w.b1, w.w_up, w.b_up)]
    w2a = w.w2.index_select(1, idx)
    if pad is not None:
        for v in rows:
            if v is not None:
                v.masked_fill_(pad.view(-1, *[1] * (v.dim() - 1)), 0)
        w2a.masked_fill_(pad, 0)
    w1a, b1a, wua, bua = rows
    return FFNWeights(w1a, b1a, w2a, c, wua, bua), hb, idx, inactive


_GATHERED: dict[int, tuple] = {}  # id(w1) → (key, gathered): the last task's weights per layer
_REUSE = [0]  # > 0 inside reuse_gathered_weights()


@contextmanager
def reuse_gathered_weights():
    """Inside, each layer's gathered weights (W1[A], b1[A], W2[:, A]) are kept and reused while
    its calls stay on one task: decoding calls a layer for one direction step after step. The
    caller promises that no weight changes inside (a version counter cannot tell: fused Adam
    updates parameters in place without bumping it). Dropped on exit."""
    _REUSE[0] += 1
    try:
        yield
    finally:
        _REUSE[0] -= 1
        if not _REUSE[0]:
            _GATHERED.clear()


def _gather_cached(w: FFNWeights, tables, t, opts):
    """_gather, reused inside reuse_gathered_weights() for a host-int task (one task per layer)."""
    if not _REUSE[0] or not isinstance(t, int):
        return _gather(w, tables, t, opts)
    tensors = [p for p in w.tensors() if p is not None]
    key = tuple((p.data_ptr(), p._version) for p in tensors) + (id(tables), t, opts)
    hit = _GATHERED.get(id(w.w1))
    if hit is None or hit[0] != key:
        hit = _GATHERED[id(w.w1)] = (key, _gather(w, tables, t, opts))
    return hit[1]


def _task_fwd(x, w: FFNWeights, tables, t, opts, out=None):
    """(Y [n, d_out] of task t's tokens x (into `out` if given), saved tuple)."""
    wa, hb, idx, inactive = _gather_cached(w, tables, t, opts)
    z = torch.addmm(wa.b1, x, wa.w1.t())
    if not w.gated:
        h = act_inplace(z, opts.activation)
        y = torch.addmm(wa.b2, h, wa.w2.t(), out=out)
        return y, (wa.w1, wa.w2, saved_for_backward(z, h, opts.activation), hb, idx, inactive, None, None)
    u = torch.addmm(wa.b_up, x, wa.w_up.t())
    y = torch.addmm(wa.b2, act(z, opts.activation) * u, wa.w2.t(), out=out)
    return y, (wa.w1, wa.w2, z, hb, idx, inactive, wa.w_up, u)


SAVED_PER_TASK = 8  # len of _task_fwd's saved tuple


def _task_bwd(dy, x, w: FFNWeights, saved, opts, grads: FFNWeights, sdy=None):
    """dX of one task's tokens; adds their weight and bias gradients into the accumulators
    `grads` (sdy: Σ dY over the tokens, if the caller has it)."""
    w1a, w2a, a, hb, idx, inactive, wua, u = saved
    dh = dy.mm(w2a)
    if u is None:
        h = from_saved(a, opts.activation)
        dz, du = act_backward(dh, a, opts.activation), None
    else:
        g = act(a, opts.activation)
        h, dz, du = g * u, act_backward(dh * u, a, opts.activation), dh * g
    parts = [(grads.w1, dz.t(), x, 0), (grads.w2, dy.t(), h, 1), (grads.w_up, None if du is None else du.t(), x, 0)]
    for acc, left, right, dim in parts:
        if left is None:
            continue
        if idx is None:  # full mask
            acc.addmm_(left, right)
        else:
            acc.index_add_(dim, idx, left.mm(right))
    for acc, d in ((grads.b1, dz), (grads.b_up, du)):
        if d is not None:
            acc.add_(d.sum(0)) if idx is None else acc.index_add_(0, idx, d.sum(0))
    if hb is not None:  # inactive neurons output the constant h_I (ops/bias_terms.py)
        add_inactive_grads(dy.sum(0) if sdy is None else sdy, w.w2, w.b1, hb, inactive, opts.activation,
                           grads.w2, grads.b1, w.b_up, grads.b_up)
    dx = dz.mm(w1a)
    return dx if du is None else dx.addmm_(du, wua)


def _task_groups(plan) -> list[tuple[int, int, int]]:
    """(task, first, end) sorted-token ranges of the tasks that have tokens. Homogeneous: one;
    mixed: read from the plan's group bounds on the host (CPU only: free there)."""
    if not plan.mixed:
        return [(plan.task, 0, plan.n)]
    starts = plan.starts.tolist()
    return [(t, s, e) for t, (s, e) in enumerate(zip(starts[:-1], starts[1:])) if e > s]


def _one_task(plan):
    """The task of a homogeneous or UNIFORM call: a host int, or the device ids tensor [1]."""
    return plan.task_ids if plan.uniform else plan.task


def _loop_fwd(x, w: FFNWeights, plan, opts):
    if not plan.mixed:
        return _task_fwd(x, w, plan.tables, _one_task(plan), opts)
    groups = _task_groups(plan)
    xs = x.index_select(0, plan.order)
    ys = x.new_empty(x.shape[0], w.w2.shape[0])
    saved = [xs]
    for t, s, e in groups:
        saved += _task_fwd(xs[s:e], w, plan.tables, t, opts, out=ys[s:e])[1]
    return torch.empty_like(ys).index_copy_(0, plan.order, ys), tuple(saved)


def _zero_grads(w: FFNWeights) -> FFNWeights:
    """Accumulators for every weight but b2 (whose gradient is Σ dY: _with_b2)."""
    return FFNWeights(*(None if t is None or t is w.b2 else torch.zeros_like(t) for t in w.tensors()))


def _loop_bwd(dy, x, w: FFNWeights, plan, opts, saved):
    grads = _zero_grads(w)
    if not plan.mixed:
        db2 = dy.sum(0)
        dx = _task_bwd(dy, x, w, saved, opts, grads, db2)
        return dx, _with_b2(grads, db2)
    xs, per_task = saved[0], saved[1:]
    dys = dy.index_select(0, plan.order)
    dxs = torch.empty_like(xs)
    k = SAVED_PER_TASK
    for i, (_, s, e) in enumerate(_task_groups(plan)):
        dxs[s:e] = _task_bwd(dys[s:e], xs[s:e], w, per_task[k * i : k * i + k], opts, grads)
    return torch.empty_like(dxs).index_copy_(0, plan.order, dxs), _with_b2(grads, dy.sum(0))


def _with_b2(grads: FFNWeights, db2: torch.Tensor) -> FFNWeights:
    return FFNWeights(grads.w1, grads.b1, grads.w2, db2, grads.w_up, grads.b_up)


# ---- mixed batches through grouped GEMMs -------------------------------------------------------
def _native_grouped(x: torch.Tensor, *cols: int) -> bool:
    """grouped_mm takes these operands: every row length a multiple of 16 bytes (the padded task
    width always is) and a dtype `grouped_dtype_ok` accepts on x's device."""
    if not hasattr(F, "grouped_mm") or any(c * x.element_size() % 16 for c in cols):
        return False
    return grouped_dtype_ok(x.dtype, x.device)


def grouped_dtype_ok(dtype: torch.dtype, device: torch.device) -> bool:
    """fp32/bf16/fp16 on CPU; bf16 only on a Hopper-class GPU and on `meta`, whose kernel checks
    the CUDA rules (bf16 operands, no other output dtype: tests/test_gpu_rules.py)."""
    if device.type == "cpu":
        return dtype in (torch.float32, torch.bfloat16, torch.float16)
    if dtype != torch.bfloat16:
        return False
    return device.type == "meta" or (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0))


def grouped_mm(a: torch.Tensor, b: torch.Tensor, ends: torch.Tensor, native: bool) -> torch.Tensor:
    """F.grouped_mm semantics, output in a's dtype: a [M, K] with b [G, K, N] → [M, N] (rows of
    group g use b[g]); a [M, S] with b [S, N] → [G, M, N] (group g sums over its slice of S).
    ends int32 [G]."""
    if native:
        return F.grouped_mm(a, b, offs=ends)
    bounds = [0] + ends.tolist()  # fallback only (float64, fp16/fp32 on a GPU, unaligned sizes): one host copy
    if b.dim() == 3:
        out = a.new_empty(a.shape[0], b.shape[2])
        for g, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            torch.mm(a[s:e], b[g], out=out[s:e])
        return out
    out = a.new_empty(len(bounds) - 1, a.shape[0], b.shape[1])
    for g, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        torch.mm(a[:, s:e], b[s:e], out=out[g])
    return out


def _ones_cols(a: torch.Tensor) -> torch.Tensor:
    """[a | 1 … 1]: a [R, K] widened with e ≥ 1 columns of ones to a 16-byte row (K + e)."""
    step = max(16 // a.element_size(), 1)
    return F.pad(a, (0, -(-(a.shape[1] + 1) // step) * step - a.shape[1]), value=1.0)


def _bias_rows(w: torch.Tensor, bias: torch.Tensor, dim: int) -> torch.Tensor:
    """w with, along `dim`, the `bias` slice and then zeros: e slices in all, as _ones_cols adds.
    A GEMM of _ones_cols(a) with it adds the bias inside its fp32 accumulator, before the product
    is rounded to bf16/fp16 (what addmm's epilogue does; a rounded X W1ᵀ + b1 could cancel to 0
    and flip act'(Z)). grouped_mm has no bias and, on CUDA, no fp32 output for bf16 operands."""
    extra = _ones_cols(w.new_empty(1, w.shape[dim])).shape[1] - w.shape[dim]
    zeros = w.new_zeros(()).expand(*[extra - 1 if i == dim else s for i, s in enumerate(w.shape)])
    return torch.cat([w, bias.unsqueeze(dim), zeros], dim)


def _grouped_layout(plan, x, w2):
    """(padded index table [T, K], its flat view, group ends int32 [T], native grouped_mm?)."""
    idx = plan.tables.padded[0]
    return idx, idx.view(-1), plan.starts[1:], _native_grouped(x, x.shape[1], w2.shape[0])


def _grouped_fwd(x, w: FFNWeights, plan, opts):
    """Two grouped GEMMs over per-task tables, each bias riding in the GEMM (_bias_rows):
    Z = [Xs | 1] [W1[A] | b1[A]]ᵀ and Y = [H | 1] [W2[:, A]ᵀ ; b2 + c_t]."""
    tables, (w1, b1, w2, b2), activation = plan.tables, w.tensors()[:4], opts.activation
    idx, flat, ends, native = _grouped_layout(plan, x, w2)
    num_tasks, width = idx.shape
    d = x.shape[1]
    pad = tables.padded[2]
    w1b = _bias_rows(w1, b1, 1).index_select(0, flat).view(num_tasks, width, -1)  # [T, K, d + e]
    w2g = w2.index_select(1, flat).view(-1, num_tasks, width)
    if tables.has_pads:  # zero rows (bias included) and columns: pads add nothing
        w1b.masked_fill_(pad[..., None], 0)
        w2g.masked_fill_(pad, 0)
    xs = _ones_cols(x.index_select(0, plan.order))  # [N, d + e]
    z = grouped_mm(xs, w1b.transpose(1, 2), ends, native)
    h = act_inplace(z, activation)
    if opts.mask_bias:
        hb, const = None, b2.expand(num_tasks, -1)
    else:  # per-task constant b2 + c_t
        hb = inactive_output(b1, tables.inactive(None, b1.dtype), activation)
        const = output_bias(b2, w2, hb)
    ys = grouped_mm(_ones_cols(h), _bias_rows(w2g.permute(1, 2, 0), const, 1), ends, native)
    y = torch.empty_like(ys).index_copy_(0, plan.order, ys)
    return y, (xs, w1b[..., :d], w2g, saved_for_backward(z, h, activation), hb)


def _grouped_bwd(dy, x, w: FFNWeights, plan, opts, saved):
    xs, w1g, w2g, a, hb = saved  # xs [N, d + e] ends in ones: dW1's column d is Σ dZ per neuron (db1)
    w1, b1, w2, activation = w.w1, w.b1, w.w2, opts.activation
    idx, flat, ends, native = _grouped_layout(plan, x, w2)
    num_tasks, width = idx.shape
    d = x.shape[1]
    h = from_saved(a, activation)
    dys = dy.index_select(0, plan.order)
    dz = act_backward(grouped_mm(dys, w2g.permute(1, 0, 2), ends, native), a, activation)
    dx = torch.empty_like(x).index_copy_(0, plan.order, grouped_mm(dz, w1g, ends, native))
    dw1b = grouped_mm(dz.t(), xs, ends, native)  # [T, K, d + e]
    dw1 = w1.new_zeros(w1.shape).index_add_(0, flat, dw1b[..., :d].flatten(0, 1))
    dw2g = grouped_mm(h.t(), dys, ends, native).view(-1, w2.shape[0])  # rows of dW2ᵀ
    if hb is None:  # mask_bias
        dw2t, db1 = w2.new_zeros(w2.shape[1], w2.shape[0]), b1.new_zeros(b1.shape)
    else:  # inactive neurons output the constant h_I (ops/bias_terms.py), per task
        task_dy = dy.new_zeros(num_tasks, dy.shape[1]).index_add_(0, plan.sorted_ids, dys)
        dw2, db1, _ = add_inactive_grads(task_dy, w2, b1, hb, plan.tables.inactive(None, b1.dtype), activation,
                                         None, None)
        dw2t = dw2.t()
    dw2t.index_add_(0, flat, dw2g)
    db1.index_add_(0, flat, dw1b[..., d].flatten())
    return dx, FFNWeights(dw1, db1, dw2t.t(), dy.sum(0))


# ---- backend protocol (registry.py) ----------------------------------------------------------
GROUPED_ON_CPU = False  # tests set it to run the GPU's (grouped, sync-free) mixed path on CPU


def _grouped(plan, x, w: FFNWeights) -> bool:
    """Plain mixed batches: grouped_mm on GPUs (no host sync); a loop over the tasks present on
    CPU, where reading the group bounds costs nothing and only the present tasks' rows are
    gathered, and for gated FFNs."""
    return plan.mixed and not w.gated and (x.device.type != "cpu" or GROUPED_ON_CPU)


def forward(x, weights: FFNWeights, plan, opts):
    """→ (y [N, d_out], saved tuple for backward)."""
    fwd = _grouped_fwd if _grouped(plan, x, weights) else _loop_fwd
    return fwd(x, weights, plan, opts)


def backward(dy, x, weights: FFNWeights, plan, opts, saved):
    """→ (dx, FFNWeights of gradients)."""
    bwd = _grouped_bwd if _grouped(plan, x, weights) else _loop_bwd
    return bwd(dy, x, weights, plan, opts, saved)


def act_count(x, weights: FFNWeights, counting, opts):
    """H = act(x W1ᵀ + b1) (or [0, f]); counts[t] += valid (Z > 0) per task, without a sync."""
    z = torch.addmm(weights.b1, x, weights.w1.t())
    pos = z > 0
    if counting.valid is not None:
        pos &= counting.valid[:, None]
    routing, counts = counting.routing, counting.counts
    if routing.mixed:
        per_task = counts.new_zeros(counts.shape, dtype=torch.int32)
        counts += per_task.index_add_(0, routing.task_ids, pos.to(torch.int32))
    else:  # summing bytes into int32 is ~2x faster than bool into int64
        counts[routing.task] += pos.view(torch.uint8).sum(0, dtype=torch.int32)
    return act(z, opts.activation) if counting.write_output else z.new_empty(0, weights.w1.shape[0])
