"""Gated FFN with per-task neuron masks: `masked_glu_ffn` and `glu_act_count` (docs/design.md §9).

Tokens `X [N, d]`, gate `W_g [f, d]`, up `W_u [f, d]`, down `W_d [d_out, f]`, optional biases
`b_g [f]`, `b_u [f]`, `b_d [d_out]` (None = no bias, as in Llama), activation silu, gelu (exact
erf form) or relu. Task t keeps the neurons `A_t` (rows of W_g and W_u; columns of W_d then only
receive active neurons), inactive `I_t`. The op equals the mask-multiply

    G = X (m_t ⊙ W_g)ᵀ + b_g,   U = X (m_t ⊙ W_u)ᵀ + b_u,   Y = (act(G) ⊙ U) W_dᵀ + b_d

per token of task t. Without biases an inactive neuron outputs act(0)·0 = 0 exactly. As in
`masked_ffn` the biases are not masked: an inactive neuron outputs the constant
`h_i = act(b_g_i) · b_u_i`, whose gradient reaches b_g, b_u and W_d[:, I]; `mask_bias=True`
masks the biases too, so it outputs 0. `w_up=None` is the ungated FFN `act(X W_gᵀ + b_g) W_dᵀ
+ b_d` (h_i = act(b_g_i)); the HF wrapper uses it for activations `masked_ffn` lacks (Marian's
SiLU). Over the active neurons only (the `torch` path):

    G_A = X W_g[A]ᵀ + b_g[A];  U_A = X W_u[A]ᵀ + b_u[A];  H_A = act(G_A) ⊙ U_A
    Y   = H_A W_d[:, A]ᵀ + W_d[:, I] h_I + b_d
    dH_A = dY W_d[:, A];  dG_A = dH_A ⊙ U_A ⊙ act'(G_A);  dU_A = dH_A ⊙ act(G_A)
    dX = dG_A W_g[A] + dU_A W_u[A];  dW_g[A] = dG_Aᵀ X;  dW_u[A] = dU_Aᵀ X;  dW_d[:, A] = dYᵀ H_A
    (inactive rows of dW_g, dW_u get 0; with biases dW_d[:, I] = ΣdY ⊗ h_I, db_g[I] and db_u[I]
    through h_I).

Backends: `reference` (the mask-multiply above, per task: the test oracle) and `torch` (the
default: gathers each task's rows, loops over the tasks present in a mixed batch; on a GPU
that loop reads the group bounds on the host, one sync per call). Eager autograd only (a
`torch.autograd.Function`, no custom op for torch.compile yet).

`glu_act_count` counts `act(G) > 0` (⇔ G > 0 for every activation here) per (task, neuron) over
valid tokens, in the same pass that computes act(G).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .masks import TaskMasks
from .plan import as_mixed, make_plan, mask_tables, route
from .reference import dense_task_masks
from .validation import FLOAT_DTYPES, check_tensor, describe, normalize_task_ids

GLU_ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
GLU_BACKENDS = ("torch", "reference")


# ---- activations --------------------------------------------------------------------------
def act(z: torch.Tensor, activation: str) -> torch.Tensor:
    """act(z) elementwise for every activation of GLU_ACTIVATIONS (also the hf wrappers' table)."""
    if activation == "silu":
        return F.silu(z)
    if activation == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    return torch.relu(z) if activation == "relu" else F.gelu(z)


def _act_backward(dh: torch.Tensor, z: torch.Tensor, activation: str) -> torch.Tensor:
    """dh ⊙ act'(z) (relu'(0) = 0, as autograd)."""
    if activation == "silu":
        return torch.ops.aten.silu_backward(dh, z)
    if activation in ("gelu", "gelu_tanh"):
        return torch.ops.aten.gelu_backward(dh, z, approximate="tanh" if activation == "gelu_tanh" else "none")
    return torch.ops.aten.threshold_backward(dh, z, 0)


# ---- validation -----------------------------------------------------------------------------
def check_glu_activation(activation) -> None:
    if activation not in GLU_ACTIVATIONS:
        raise ValueError(f"activation: expected one of {GLU_ACTIVATIONS}, got {activation!r}")


def _check_weights(x, w_gate, b_gate, w_up=None, b_up=None, w_down=None, b_down=None, down=True) -> tuple[int, int]:
    """Shapes, dtypes and devices of a gated FFN's inputs → (d, f)."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if x.dim() < 1:
        raise ValueError(f"x: expected shape [..., d], got {describe(x)}")
    d = x.shape[-1]
    check_tensor("w_gate", w_gate, shape=(None, d), dtype=x.dtype, device=x.device)
    f = w_gate.shape[0]
    if f == 0:
        raise ValueError(f"w_gate: needs at least one neuron, got {describe(w_gate)}")
    optional = [("b_gate", b_gate, (f,)), ("w_up", w_up, (f, d)), ("b_up", b_up, (f,))]
    if down:
        check_tensor("w_down", w_down, shape=(None, f), dtype=x.dtype, device=x.device)
        optional.append(("b_down", b_down, (w_down.shape[0],)))
    for name, t, shape in optional:
        if t is not None:
            check_tensor(name, t, shape=shape, dtype=x.dtype, device=x.device)
    if w_up is None and b_up is not None:
        raise ValueError("b_up: given without w_up (w_up=None is the ungated FFN)")
    return d, f


def _check_masks(masks, f: int, device: torch.device) -> None:
    if not isinstance(masks, TaskMasks):
        raise TypeError(f"masks: expected a TaskMasks, got {describe(masks)}")
    if masks.num_neurons != f:
        raise ValueError(f"masks: built for {masks.num_neurons} neurons but w_gate has {f} rows")
    if masks.device != device:
        raise ValueError(f"masks: on {masks.device} but x is on {device}; call masks.to(x.device)")


# ---- public ops -------------------------------------------------------------------------------
def masked_glu_ffn(x, w_gate, b_gate, w_up, b_up, w_down, b_down, masks: TaskMasks, task_ids,
                   activation: str = "silu", mask_bias: bool = False, backend: str | None = None) -> torch.Tensor:
    """Gated FFN where each token uses only its task's rows of W_g and W_u (module docstring).

    x [..., d]; w_gate, w_up [f, d]; w_down [d_out, f]; b_gate, b_up [f], b_down [d_out] or None;
    w_up None: ungated; masks: TaskMasks over f neurons; task_ids: int (homogeneous batch) or
    integer tensor [...] / [N] (one id per token, any order). Returns [..., d_out].
    backend: None/"auto"/"torch" (gathers the active rows) or "reference" (mask-multiply).
    """
    d, f = _check_weights(x, w_gate, b_gate, w_up, b_up, w_down, b_down)
    check_glu_activation(activation)
    _check_masks(masks, f, x.device)
    if backend not in (None, "auto", *GLU_BACKENDS):
        raise ValueError(f"backend: masked_glu_ffn runs on {GLU_BACKENDS} (None/'auto' = 'torch'), got {backend!r}")
    lead = x.shape[:-1]
    ids, task = normalize_task_ids(task_ids, lead, masks.num_tasks, x.device)
    x2 = x.reshape(-1, d)
    ids, task = as_mixed(ids, task, x2.shape[0])
    if backend == "reference":
        y = glu_ffn_reference(x2, w_gate, b_gate, w_up, b_up, w_down, b_down, masks.indices, masks.offsets,
                              ids if task < 0 else torch.full((x2.shape[0],), task, device=x.device),
                              activation, bool(mask_bias))
    else:
        y = _MaskedGLU.apply(x2.contiguous(), *(None if t is None else t.contiguous()
                                                for t in (w_gate, b_gate, w_up, b_up, w_down, b_down)),
                             masks.indices, masks.offsets, ids, task, activation, bool(mask_bias))
    return y.reshape(*lead, w_down.shape[0])


def glu_act_count(x, w_gate, b_gate, counts, task_ids=None, valid=None, activation: str = "silu") -> torch.Tensor:
    """act(G) [..., f] with G = x W_gᵀ + b_g (b_gate may be None), and counts[t, n] += #valid
    tokens of task t with act(G_n) > 0 (⇔ G_n > 0), in place.

    counts: int64 [T, f]; task_ids: None (all task 0), int, or integer tensor [...] / [N];
    valid: bool [...] / [N] (False = padding, not counted) or None. Differentiable in x, w_gate
    and b_gate (the count is not).
    """
    d, f = _check_weights(x, w_gate, b_gate, down=False)
    check_glu_activation(activation)
    check_tensor("counts", counts, dtype=torch.int64, device=x.device)
    if counts.dim() != 2 or counts.shape[1] != f:
        raise ValueError(f"counts: expected shape [T, {f}] (f = rows of w_gate), got {describe(counts)}")
    lead = x.shape[:-1]
    ids, task = normalize_task_ids(0 if task_ids is None else task_ids, lead, counts.shape[0], x.device)
    n = x.numel() // d if d else 0
    ids, task = as_mixed(ids, task, n)
    g = F.linear(x.reshape(n, d), w_gate, b_gate)
    pos = g.detach() > 0
    if valid is not None:
        check_tensor("valid", valid, dtype=torch.bool, device=x.device)
        if tuple(valid.shape) not in (tuple(lead), (n,)):
            raise ValueError(f"valid: expected shape {list(lead)} or [{n}], got {describe(valid)}")
        pos &= valid.reshape(n, 1)
    routing = route(ids, task, counts.shape[0], n, sort=False)  # range-checks the ids on the device
    if routing.mixed:
        counts.index_add_(0, routing.task_ids, pos.long())
    else:
        counts[routing.task] += pos.sum(0)
    return act(g, activation).reshape(*lead, f)


# ---- reference: dense masks times dense weights ------------------------------------------------
def glu_ffn_reference(x, w_gate, b_gate, w_up, b_up, w_down, b_down, indices, offsets, task_ids,
                      activation="silu", mask_bias=False):
    """The mask-multiply of the module docstring, per task (torch.unique): x [N, d], task_ids
    int64 [N] → [N, d_out]. Differentiable by autograd; the oracle of the tests."""
    masks = dense_task_masks(indices, offsets, w_gate.shape[0]).to(w_gate.dtype)
    y = x.new_zeros(x.shape[0], w_down.shape[0]) + x[:, :0].sum(1, keepdim=True)
    for t in torch.unique(task_ids).tolist():
        rows = (task_ids == t).nonzero().squeeze(1)
        m = masks[t]
        bg = None if b_gate is None else (b_gate * m if mask_bias else b_gate)
        h = act(F.linear(x[rows], w_gate * m[:, None], bg), activation)
        if w_up is not None:
            bu = None if b_up is None else (b_up * m if mask_bias else b_up)
            h = h * F.linear(x[rows], w_up * m[:, None], bu)
        y = y.index_put((rows,), F.linear(h, w_down, b_down))
    return y


# ---- torch path: gather the active rows -------------------------------------------------------
def _bias_output(b_gate, b_up, gated: bool, activation: str):
    """h = act(b_g) ⊙ b_u (gated) or act(b_g): what a neuron outputs with its weights masked;
    None when it is 0 (no b_g, or gated without b_u)."""
    if b_gate is None or (gated and b_up is None):
        return None
    h = act(b_gate, activation)
    return h * b_up if gated else h


def _gather(w, tables, t, dim):
    """Task t's active rows (dim 0) or columns (dim 1) of w; w itself for a full mask."""
    if w is None or tables.is_full(t):
        return w
    return w.index_select(dim, tables.active_idx(t))


def _task_fwd(x, weights, tables, t, activation, mask_bias):
    """(Y [n, d_out] of task t's tokens, saved) for one task."""
    wg, bg, wu, bu, wd, bd = weights
    wga, bga, wua, bua = (_gather(w, tables, t, 0) for w in (wg, bg, wu, bu))
    wda = _gather(wd, tables, t, 1)
    hb = None if tables.is_full(t) or mask_bias else _bias_output(bg, bu, wu is not None, activation)
    if hb is not None:
        hb = hb * tables.inactive(t, hb.dtype)
    c = bd if hb is None else (wd.mv(hb) if bd is None else torch.addmv(bd, wd, hb))
    g = F.linear(x, wga, bga)
    u = None if wu is None else F.linear(x, wua, bua)
    h = act(g, activation) if u is None else act(g, activation) * u
    return F.linear(h, wda, c), (wga, wua, wda, g, u, hb)


def _task_bwd(dy, x, weights, tables, t, saved, activation, grads):
    """dX of task t's tokens; adds their weight and bias gradients into `grads` (dwg, dbg, dwu,
    dbu, dwd; None where that input has none)."""
    wg, bg, wu, bu, wd, _ = weights
    wga, wua, wda, g, u, hb = saved
    dwg, dbg, dwu, dbu, dwd = grads
    dh = dy.mm(wda)
    a = act(g, activation)
    if u is None:
        dg, du, h = _act_backward(dh, g, activation), None, a
    else:
        dg, du, h = _act_backward(dh * u, g, activation), dh * a, a * u
    dx = dg.mm(wga) if du is None else torch.addmm(dg.mm(wga), du, wua)
    parts = [(dwg, dg.t().mm(x), 0), (dbg, None if dbg is None else dg.sum(0), 0),
             (dwu, None if du is None else du.t().mm(x), 0), (dbu, None if dbu is None else du.sum(0), 0),
             (dwd, dy.t().mm(h), 1)]
    idx = None if tables.is_full(t) else tables.active_idx(t)
    for acc, part, dim in parts:
        if acc is None:
            continue
        if idx is None:
            acc.add_(part)
        else:
            acc.index_add_(dim, idx, part)
    if hb is not None:  # inactive neurons output the constant h_I (biases not masked)
        sdy = dy.sum(0)
        dwd.addr_(sdy, hb)
        gh = wd.t().mv(sdy) * tables.inactive(t, sdy.dtype)  # dL/dh_I, 0 on active neurons
        if wu is None:
            dbg.add_(_act_backward(gh, bg, activation))
        else:
            dbg.add_(_act_backward(gh * bu, bg, activation))
            dbu.add_(gh * act(bg, activation))
    return dx


def _groups(plan) -> list[tuple[int, int, int]]:
    """(task, first, end) sorted-token ranges of the tasks that have tokens (one host read of
    the group bounds for a mixed batch)."""
    if not plan.mixed:
        return [(plan.task, 0, plan.n)]
    starts = plan.starts.tolist()
    return [(t, s, e) for t, (s, e) in enumerate(zip(starts[:-1], starts[1:])) if e > s]


class _MaskedGLU(torch.autograd.Function):
    """Forward and backward over the active rows only; inactive rows' gradients are 0."""

    @staticmethod
    def forward(ctx, x, wg, bg, wu, bu, wd, bd, indices, offsets, task_ids, task, activation, mask_bias):
        tables = mask_tables(indices, offsets, wg.shape[0])
        plan = make_plan(tables, task_ids, task, x.shape[0], sort=True)
        weights = (wg, bg, wu, bu, wd, bd)
        xs = x.index_select(0, plan.order) if plan.mixed else x
        ys = x.new_empty(x.shape[0], wd.shape[0])
        saved = []
        for t, s, e in _groups(plan):
            ys[s:e], st = _task_fwd(xs[s:e], weights, tables, t, activation, mask_bias)
            saved.append(st)
        ctx.save_for_backward(x, *(w if w is not None else torch.empty(0) for w in weights))
        ctx.has = tuple(w is not None for w in weights)
        ctx.plan, ctx.tables, ctx.saved, ctx.activation = plan, tables, saved, activation
        ctx.set_materialize_grads(False)
        if not plan.mixed:
            return ys
        return torch.empty_like(ys).index_copy_(0, plan.order, ys)

    @staticmethod
    def backward(ctx, dy):
        if dy is None:
            return (None,) * 13
        x, *stored = ctx.saved_tensors
        weights = tuple(w if has else None for w, has in zip(stored, ctx.has))
        plan = ctx.plan
        wg, bg, wu, bu, wd, bd = weights
        grads = (torch.zeros_like(wg), None if bg is None else torch.zeros_like(bg),
                 None if wu is None else torch.zeros_like(wu), None if bu is None else torch.zeros_like(bu),
                 torch.zeros_like(wd))
        dy = dy.contiguous()
        xs, dys = (x.index_select(0, plan.order), dy.index_select(0, plan.order)) if plan.mixed else (x, dy)
        dxs = torch.zeros_like(x)
        for (t, s, e), st in zip(_groups(plan), ctx.saved):
            dxs[s:e] = _task_bwd(dys[s:e], xs[s:e], weights, ctx.tables, t, st, ctx.activation, grads)
        dx = torch.empty_like(dxs).index_copy_(0, plan.order, dxs) if plan.mixed else dxs
        dbd = None if bd is None else dy.sum(0)
        dwg, dbg, dwu, dbu, dwd = grads
        return dx, dwg, dbg, dwu, dbu, dwd, dbd, None, None, None, None, None, None
