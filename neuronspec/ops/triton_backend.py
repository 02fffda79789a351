"""`triton` backend: masked FFN forward/backward and fused counting as grouped Triton kernels.

The call's plan (ops/plan.py) sorts tokens by task (stable; skipped when the batch has one task)
and gives `tok_start` [T+1] (task t owns sorted rows tok_start[t]:tok_start[t+1]) to kernels
that tile over (task token tile, block of the task's active neurons) (kernels:
triton_masked_ffn.py, triton_count.py). fc1 gathers W1 rows by index inside the kernel; fc2 and
dX read packed weights (W2ᵀ / W1 rows of the active lists, gathered once per call) and the
weight gradients read task-sorted X / dY, so every K loop pipelines (docs/design.md §3). No host
sync: grids use upper bounds (cdiv(N, BM) + T token tiles, cdiv(f, BN) neuron blocks) and idle
programs exit at once. The O((T + N)·f·d / N) bias terms of docs/design.md §2 (c_t, db1[I],
dW2[:, I]: ops/bias_terms.py, and db2) are torch ops here.

Saved for backward: Z_A packed in an [N, f] buffer in task-sorted row order (row r holds its
task's k_t pre-activations in columns 0..k_t-1), like the torch backend.
Precision: fp32 accumulation (fp64 for fp64 inputs); fp32 inputs use TF32 only when
torch.backends.cuda.matmul.allow_tf32 is set. fp64 runs these kernels under the interpreter
(so gradcheck works on CPU); on CUDA, CAPS declares fp16/bf16/fp32 only (`auto` counts fp64
with the torch backend). Every call given to this backend runs these kernels: where gather + cuBLAS
measured faster (homogeneous batches on an H200), `auto` picks the torch backend instead.
Shared neurons' dW1/dW2 rows accumulate with fp32 atomics when a batch has several tasks
(result order-dependent in the last bits); one task stores directly.
Tiles are autotuned per problem size; NEURONSPEC_TRITON_AUTOTUNE=0 (read at import) keeps the
first config of each list, which compiles ~8x fewer kernels (the GPU tests use it).
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    from . import triton_count, triton_masked_ffn
    from .triton_common import INTERPRETED

    _IMPORT_ERROR = None
except ImportError as e:  # triton missing or broken: available() says why
    _IMPORT_ERROR = e

from .activations import TABLE
from .backends import ALL_FLOATS, Caps
from .bias_terms import add_inactive_grads, inactive_output, output_bias
from .call import FFNWeights

CAPS = Caps(dtypes={"cuda": (torch.float16, torch.bfloat16, torch.float32), "cpu": ALL_FLOATS},
            activations=tuple(a for a, spec in TABLE.items() if spec.code is not None), grouping=True,
            counting=True, sorted_counting=True)


def available(device: torch.device) -> str | None:
    """None on CUDA when Triton imports, on CPU only with TRITON_INTERPRET=1; else why not."""
    if _IMPORT_ERROR is not None:
        return f"triton does not import: {_IMPORT_ERROR}"
    if device.type == "cuda":
        return None if INTERPRETED or torch.cuda.is_available() else "CUDA is not available"
    if device.type == "cpu":
        if INTERPRETED:
            return None
        return "Triton runs on CPU only under its interpreter: set TRITON_INTERPRET=1 before importing neuronspec"
    return f"Triton kernels do not run on device type {device.type!r}"


# ---- autotune configs ------------------------------------------------------------------------
AUTOTUNE = os.environ.get("NEURONSPEC_TRITON_AUTOTUNE", "1") != "0"


def _tuned(configs: list) -> list:
    return configs if AUTOTUNE else configs[:1]


def _gemm_configs():
    """Tiles for gather_n / gather_k / counting (BM tokens, BN outputs, BK reduction)."""
    if _IMPORT_ERROR is None and INTERPRETED:  # tiny grids: every program runs in Python
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=1)]
    return _tuned([
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in [
            (128, 128, 64, 8, 3), (128, 128, 32, 4, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
            (64, 64, 64, 4, 4), (128, 256, 64, 8, 3), (64, 128, 32, 4, 3), (128, 64, 32, 4, 3),
        ]
    ])


def _pass_configs():
    """Tiles of the elementwise act + count pass (BM tokens, BN neurons)."""
    if _IMPORT_ERROR is None and INTERPRETED:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=1)]
    return _tuned([triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w)
                   for bm, bn, w in [(64, 128, 4), (128, 128, 8), (32, 256, 4), (64, 64, 4)]])


def _scatter_configs():
    """Tiles for scatter_rows (BM active neurons, BN output columns, BK tokens)."""
    if _IMPORT_ERROR is None and INTERPRETED:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16}, num_warps=1)]
    return _tuned([
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in [
            (128, 128, 64, 8, 3), (128, 128, 32, 4, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
            (64, 64, 64, 4, 4), (64, 64, 32, 4, 3),
        ]
    ])


if _IMPORT_ERROR is None:
    _gather_n = triton.autotune(_gemm_configs(), key=["K", "F", "MODE"], reset_to_zero=["db_ptr"])(
        triton_masked_ffn.gather_n_kernel)
    _gather_k = triton.autotune(_gemm_configs(), key=["NOUT", "F"])(triton_masked_ffn.gather_k_kernel)
    _scatter_rows = triton.autotune(_scatter_configs(), key=["NOUT", "F", "ATOMIC"], reset_to_zero=["out_ptr"])(
        triton_masked_ffn.scatter_rows_kernel)
    _act_count = triton.autotune(_pass_configs(), **triton_count.AUTOTUNE)(triton_count.act_count_kernel)


# ---- launch helpers ----------------------------------------------------------------------------
GROUP_M = 8  # tile-row band of the swizzled grids (triton_common.swizzle)
_HOMOGENEOUS: dict[tuple, tuple] = {}
_LOCAL_OFFSETS: dict[tuple, torch.Tensor] = {}


def _groups(r):
    """(perm int64 [N] or None, tok_start int32 [G+1], G, rows: which tasks the G groups are)
    of a Routing/Plan: one group per task when mixed, a single group when homogeneous."""
    if r.mixed:
        return r.order, r.starts, r.starts.numel() - 1, None
    key = (r.n, r.task, r.task_ids.device)
    if key not in _HOMOGENEOUS:  # tiny constant tables, made once per (N, task)
        if len(_HOMOGENEOUS) >= 256:
            _HOMOGENEOUS.clear()
        dev = r.task_ids.device
        _HOMOGENEOUS[key] = (torch.tensor([0, r.n], dtype=torch.int32, device=dev),
                             torch.tensor([r.task], device=dev))
    tok_start, rows = _HOMOGENEOUS[key]
    return None, tok_start, 1, rows


def _task_lists(plan):
    """(indices int32, offsets int32 [G+1], indices int64) of the plan's groups: every task's
    CSR lists when mixed; the one task's list and [0, k] when homogeneous."""
    tables = plan.tables
    if plan.mixed:
        return tables.indices, tables.offsets, tables.indices_long
    lo, hi = tables.host_offsets[plan.task], tables.host_offsets[plan.task + 1]
    key = (hi - lo, tables.indices.device)
    if key not in _LOCAL_OFFSETS:
        _LOCAL_OFFSETS[key] = torch.tensor([0, hi - lo], dtype=torch.int32, device=tables.indices.device)
    return tables.indices[lo:hi], _LOCAL_OFFSETS[key], tables.active_idx(plan.task)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _meta(x: torch.Tensor) -> dict:
    """Compile-time flags shared by all kernels for inputs like x."""
    fp64 = x.dtype == torch.float64
    # input_precision only matters for fp32 operands: exact unless torch allows TF32 matmuls
    exact_fp32 = x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    return dict(UPCAST=INTERPRETED or fp64, PRECISION="ieee" if exact_fp32 else "tf32",
                ACC=tl.float64 if fp64 else tl.float32, GROUP_M=GROUP_M)


def _token_grid(n, num_groups, block_cols, cols):
    """1-D swizzled grid over (token tiles + one spare per group) × column blocks."""
    return lambda m: ((triton.cdiv(n, m["BLOCK_M"]) + num_groups) * triton.cdiv(cols, m[block_cols]),)


# ---- backend protocol ----------------------------------------------------------------------------
def forward(x, weights: FFNWeights, plan, opts):
    """→ (y [N, d_out], (z packed [N, f] in task-sorted order,))."""
    w1, b1, w2, b2 = weights.tensors()[:4]
    activation = opts.activation
    n, d = x.shape
    f, d_out = w1.shape[0], w2.shape[0]
    perm, tok_start, groups, _ = _groups(plan)
    indices, offs, indices_long = _task_lists(plan)
    acc_dtype = _acc_dtype(x.dtype)
    # per-group output bias b2 + c_t, c_t = act(b1[I]) W2[:, I]ᵀ
    if opts.mask_bias:
        bias, bias_stride = b2.to(acc_dtype), 0
    else:
        inactive = plan.tables.inactive(None if plan.mixed else plan.task, acc_dtype).reshape(-1, f)
        hb = inactive_output(b1.to(acc_dtype), inactive, activation)
        bias, bias_stride = output_bias(b2.to(acc_dtype), w2.to(acc_dtype), hb).contiguous(), d_out
    z = x.new_zeros(n, f)  # columns past k_t stay 0: the op's second output is deterministic
    y = x.new_empty(n, d_out)
    if n == 0:
        return y, (z,)
    h = x.new_empty(n, f)
    meta = _meta(x)
    perm_arg = tok_start if perm is None else perm
    unused = torch.zeros(1, dtype=acc_dtype, device=x.device)  # db_ptr: backward only
    _gather_n[_token_grid(n, groups, "BLOCK_N", f)](
        x, perm_arg, w1, indices, offs, tok_start, groups, n, b1, z, h, h, unused, d, f,
        MODE=0, ACT=TABLE[activation].code, HAS_PERM=perm is not None, B_PACKED=False, **meta)
    if d_out:
        w2p = w2.t().index_select(0, indices_long)  # packed W2ᵀ rows [Σ k_t, d_out]
        _gather_k[_token_grid(n, groups, "BLOCK_N", d_out)](
            h, perm_arg, w2p, offs, tok_start, groups, n, bias, bias_stride, y, d_out, f,
            HAS_BIAS=True, HAS_PERM=perm is not None, **meta)
    return y, (z,)


def backward(dy, x, weights: FFNWeights, plan, opts, saved):
    """→ (dx, FFNWeights of gradients) for the packed z saved by forward."""
    w1, b1, w2 = weights.w1, weights.b1, weights.w2
    activation = opts.activation
    (z,) = saved
    n, d = x.shape
    f, d_out = w1.shape[0], w2.shape[0]
    perm, tok_start, groups, _ = _groups(plan)
    indices, offs, indices_long = _task_lists(plan)
    acc_dtype = _acc_dtype(x.dtype)
    atomic = groups > 1  # neurons shared by tasks: rows of dW1 / dW2ᵀ get several contributions
    buf_dtype = acc_dtype if atomic else x.dtype
    dx = x.new_empty(n, d)
    db1 = torch.zeros(f, dtype=acc_dtype, device=x.device)
    dw1 = torch.zeros(f, d, dtype=buf_dtype, device=x.device)
    dw2t = torch.zeros(f, d_out, dtype=buf_dtype, device=x.device)
    if n:
        meta = _meta(x)
        # task-sorted copies: the K loops below then read contiguous rows (no index in the loop)
        xs, dys = (x, dy) if perm is None else (x.index_select(0, perm), dy.index_select(0, perm))
        dz, h = x.new_empty(n, f), x.new_empty(n, f)
        w2p = w2.t().index_select(0, indices_long)  # packed W2ᵀ rows [Σ k_t, d_out]
        _gather_n[_token_grid(n, groups, "BLOCK_N", f)](
            dys, tok_start, w2p, indices, offs, tok_start, groups, n, b1, z, dz, h, db1, d_out, f,
            MODE=1, ACT=TABLE[activation].code, HAS_PERM=False, B_PACKED=True, **meta)
        if d:
            _gather_k[_token_grid(n, groups, "BLOCK_N", d)](
                dz, tok_start if perm is None else perm, w1.index_select(0, indices_long), offs, tok_start,
                groups, n, b1, 0, dx, d, f, HAS_BIAS=False, HAS_PERM=perm is not None, **meta)
        for p, a, out, cols in ((dz, xs, dw1, d), (h, dys, dw2t, d_out)):
            if cols:
                _scatter_rows[lambda m: (triton.cdiv(f, m["BLOCK_M"]) * triton.cdiv(cols, m["BLOCK_N"]), groups)](
                    p, a, indices, offs, tok_start, out, cols, f, ATOMIC=atomic, **meta)
    dw2 = dw2t.t().to(acc_dtype)
    dyf = dy.to(acc_dtype)
    if not opts.mask_bias:  # inactive neurons output the constant act(b1_i) (ops/bias_terms.py)
        if plan.mixed:
            sdy = torch.zeros(groups, d_out, dtype=acc_dtype, device=x.device).index_add_(0, plan.task_ids, dyf)
        else:
            sdy = dyf.sum(0, keepdim=True)
        inactive = plan.tables.inactive(None if plan.mixed else plan.task, acc_dtype).reshape(-1, f)
        b1f = b1.to(acc_dtype)
        add_inactive_grads(sdy, w2.to(acc_dtype), b1f, inactive_output(b1f, inactive, activation), inactive,
                           activation, dw2, db1)
    dt = x.dtype
    return dx, FFNWeights(dw1.to(dt), db1.to(dt), dw2.to(dt), dyf.sum(0).to(dt))


def act_count(x, weights: FFNWeights, counting, opts):
    """H = act(x W1ᵀ + b1) ([0, f] when not write_output); counts[t] += valid Z > 0 (in place).
    Z from one cuBLAS addmm (bias in its epilogue), then one Triton pass: act in place + counts."""
    w1, b1, counts, routing, valid = weights.w1, weights.b1, counting.counts, counting.routing, counting.valid
    write_output = counting.write_output
    n, f = x.shape[0], w1.shape[0]
    z = torch.addmm(b1, x, w1.t())
    if n:
        perm, tok_start, groups, rows = _groups(routing)
        scratch = torch.zeros(groups, f, dtype=torch.int32, device=x.device)
        _act_count[lambda m: (triton.cdiv(n, m["BLOCK_M"]) + groups, triton.cdiv(f, m["BLOCK_N"]))](
            z, tok_start if perm is None else perm, tok_start if valid is None else valid.view(torch.uint8),
            tok_start, groups, scratch, f,
            ACT=TABLE[opts.activation].code, HAS_PERM=perm is not None, HAS_VALID=valid is not None,
            WRITE_OUTPUT=bool(write_output))
        if rows is None:  # one group per task
            counts += scratch
        else:
            counts.index_add_(0, rows, scratch.to(torch.int64))
    return z if write_output else x.new_empty(0, f)
