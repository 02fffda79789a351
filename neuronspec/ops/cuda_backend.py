"""`cuda` backend: the CUDA C++ kernels of csrc/ (pybind11 module `neuronspec._cuda`).

The module knows nothing about torch: this file validates the tensors, allocates every output
and scratch buffer with torch, groups tokens by task (stable sort, as the torch backend) and
passes data pointers, leading dimensions and torch's current stream. Per task t with active
rows A (docs/design.md §2), all GEMMs run in csrc/ kernels over the active neurons only:
    forward   Z_A, H_A = fc1 over A (W1 rows gathered in the tile loads)      gathered_fc1
              Y = H_A W2[:, A]ᵀ + (b2 + c_t)                                   gathered_fc2
    backward  dZ_A = (dY W2[:, A]) ⊙ act'(Z_A), H_A = act(Z_A)                gathered_dz
              dX = dZ_A W1[A]                                                  gathered_fc2
              dW1[A] += dZ_Aᵀ X, dW2ᵀ[A] += H_Aᵀ dY (fp32 atomics)             gathered_wgrad
              db1[A] += Σ_rows dZ_A                                            gathered_colsum
    counting  H = act(X W1ᵀ + b1), counts[t] += (Z > 0) ⊙ valid               fc1_count
The O((T + N)·f·d / tile) extras (c_t, the inactive-neuron bias gradients, db2) are small torch
ops here. Z is saved packed like the torch backend: row i (i-th token in task order) holds its
task's |A_t| pre-activations in its first |A_t| columns. float32, float16 and bfloat16 (tensor
cores, fp32 accumulation); float64 is rejected (use the torch backend).
"""
from __future__ import annotations

import importlib

import torch

from .activations import act, act_grad
from .reference import dense_task_masks
from .validation import describe

TILE_ROWS = 64  # rows per work item of the row-tiled kernels (csrc/common.cuh BM)
CHUNK_ROWS = 256  # tokens per work item of the token reductions (weight gradients, db1)
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
ACT_CODES = {"relu": 0, "gelu": 1}

_module = None
_import_error: str | None = None


def _load():
    """The compiled module, or None (the import error is kept in _import_error)."""
    global _module, _import_error
    if _module is None and _import_error is None:
        try:
            _module = importlib.import_module("neuronspec._cuda")
        except ImportError as e:
            _import_error = str(e)
    return _module


def available(device: torch.device) -> str | None:
    """None when the kernels can run on `device`, else why not."""
    mod = _load()
    if mod is None:
        return f"neuronspec._cuda not built: {_import_error} (install with nvcc on PATH: pip install -e .)"
    device = torch.device(device)
    if device.type != "cuda":
        return f"no CUDA device: the cuda backend runs on CUDA tensors, not {device.type}"
    if not torch.cuda.is_available():
        return "no CUDA device: torch.cuda.is_available() is False"
    try:
        mod.device_count()  # the module's own runtime (e.g. a driver too old for it)
    except RuntimeError as e:
        return str(e).removeprefix("neuronspec._cuda: ")
    return None


def _require_module():
    mod = _load()
    if mod is None:
        raise RuntimeError(f"neuronspec._cuda not built: {_import_error}")
    return mod


# ---- argument checks ----------------------------------------------------------------------
_FLOAT_ARGS = ("x", "w1", "b1", "w2", "b2", "dy", "z")
_ARG_DTYPES = {"indices": torch.int32, "offsets": torch.int32, "task_ids": torch.int64,
               "counts": torch.int64, "valid": torch.bool}


def check_inputs(require_cuda: bool = True, **tensors) -> None:
    """Raise ValueError/TypeError naming the argument unless every tensor is contiguous, on x's
    device (a CUDA device when require_cuda), float ones of x's dtype (fp32/fp16/bf16) and the
    index ones of their fixed dtype. None entries are skipped."""
    x = tensors["x"]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {describe(x)}")
    if require_cuda and x.device.type != "cuda":
        raise ValueError(f"x: the cuda backend needs CUDA tensors, got {describe(x)}")
    if x.dtype not in DTYPE_CODES:
        raise TypeError(
            f"x: the cuda backend supports float32, float16 and bfloat16, got {describe(x)}; use backend='torch'"
        )
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {describe(t)}")
        if t.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device} (like x), got {describe(t)}")
        want = x.dtype if name in _FLOAT_ARGS else _ARG_DTYPES.get(name)
        if want is not None and t.dtype != want:
            raise TypeError(f"{name}: expected dtype {want}, got {describe(t)}")
        if not t.is_contiguous():
            raise ValueError(f"{name}: must be contiguous, got strides {t.stride()} ({describe(t)})")


# ---- tensor-level launchers ---------------------------------------------------------------
def _p(t) -> int:
    return 0 if t is None else t.data_ptr()


class Kernels:
    """The csrc/ kernels called with tensors (see csrc/ops.h for the exact semantics).

    work: int32 [W, 3] (task, r0, r1) rows in task-grouped order; *_rows: int64 [N] grouped
    position → original row, or None (identity); packed buffers are [N, f] (row i holds its
    task's |A_t| values first)."""

    @staticmethod
    def _common(x: torch.Tensor, work: torch.Tensor) -> dict:
        return dict(
            dtype=DTYPE_CODES[x.dtype], device=x.device.index, work=work.data_ptr(), num_work=work.shape[0],
            stream=torch.cuda.current_stream(x.device).cuda_stream,
        )

    def fc1(self, work, x, x_rows, w1, idx, off, bias_f32, z, h, activation):
        _require_module().gathered_fc1(
            **self._common(x, work), act=ACT_CODES[activation], max_cols=w1.shape[0], x=x.data_ptr(),
            ldx=x.stride(0), x_rows=_p(x_rows), w1=w1.data_ptr(), ldw=w1.stride(0), idx=idx.data_ptr(),
            off=off.data_ptr(), K=x.shape[1], bias=bias_f32.data_ptr(), z_out=z.data_ptr(), h_out=h.data_ptr(),
            ldo=z.stride(0),
        )

    def fc1_count(self, work, x, x_rows, w1, bias_f32, h, counts, valid, activation):
        _require_module().fc1_count(
            **self._common(x, work), act=ACT_CODES[activation], n_cols=w1.shape[0], x=x.data_ptr(),
            ldx=x.stride(0), x_rows=_p(x_rows), w1=w1.data_ptr(), ldw=w1.stride(0), K=x.shape[1],
            bias=bias_f32.data_ptr(), h_out=_p(h), ldo=w1.shape[0], counts=counts.data_ptr(),
            ldc=counts.stride(0), valid=_p(valid),
        )

    def dz(self, work, dy, dy_rows, w2t, idx, off, z, dz, h, activation):
        _require_module().gathered_dz(
            **self._common(dy, work), act=ACT_CODES[activation], max_cols=w2t.shape[0], dy=dy.data_ptr(),
            lddy=dy.stride(0), dy_rows=_p(dy_rows), w2t=w2t.data_ptr(), ldw=w2t.stride(0), idx=idx.data_ptr(),
            off=off.data_ptr(), K=dy.shape[1], z_in=z.data_ptr(), dz_out=dz.data_ptr(), h_out=h.data_ptr(),
            ldo=z.stride(0),
        )

    def fc2(self, work, p, w, idx, off, bias_f32, out, out_rows):
        """bias_f32: None or fp32 [T, n_cols] (stride(0) may be 0: one row for every task)."""
        _require_module().gathered_fc2(
            **self._common(p, work), p=p.data_ptr(), ldp=p.stride(0), w=w.data_ptr(), ldw=w.stride(0),
            idx=idx.data_ptr(), off=off.data_ptr(), n_cols=out.shape[1], bias=_p(bias_f32),
            bias_stride=0 if bias_f32 is None else bias_f32.stride(0), out=out.data_ptr(), ldo=out.stride(0),
            out_rows=_p(out_rows),
        )

    def wgrad(self, work, p, q, q_rows, idx, off, out_f32):
        _require_module().gathered_wgrad(
            **self._common(p, work), max_cols=out_f32.shape[0], p=p.data_ptr(), ldp=p.stride(0), q=q.data_ptr(),
            ldq=q.stride(0), q_rows=_p(q_rows), idx=idx.data_ptr(), off=off.data_ptr(), n_cols=q.shape[1],
            out=out_f32.data_ptr(), ldo=out_f32.stride(0),
        )

    def colsum(self, work, p, idx, off, out_f32):
        _require_module().gathered_colsum(
            **self._common(p, work), max_cols=p.shape[1], p=p.data_ptr(), ldp=p.stride(0), idx=idx.data_ptr(),
            off=off.data_ptr(), out=out_f32.data_ptr(),
        )


KERNELS = Kernels()


# ---- grouping and the small torch-side terms ------------------------------------------------
def work_list(starts: list[int], tile: int, device) -> torch.Tensor:
    """int32 [W, 3] rows (task, r0, r1) cutting each task's grouped range [starts[t],
    starts[t+1]) into pieces of at most `tile` rows; tasks without tokens get none."""
    items = [(t, r, min(r + tile, e)) for t, (s, e) in enumerate(zip(starts[:-1], starts[1:])) for r in range(s, e, tile)]
    return torch.tensor(items, dtype=torch.int32).reshape(-1, 3).to(device)


def group_tokens(task_ids: torch.Tensor, task: int, num_tasks: int, n: int):
    """→ (order [N] long or None, starts: list of T+1 ints). Task t's tokens are
    order[starts[t]:starts[t+1]] (stable), or all N tokens when `task` >= 0. The host list is
    one device-to-host copy per call: the work lists of these kernels are built on the host."""
    if task >= 0:
        return None, [0] * (task + 1) + [n] * (num_tasks - task)
    order = torch.argsort(task_ids, stable=True)
    counts = torch.zeros(num_tasks, dtype=torch.long, device=task_ids.device).index_add_(
        0, task_ids, torch.ones_like(task_ids))
    starts = [0] + torch.cumsum(counts, 0).tolist()
    return order, starts


def _grouping(task_ids, task, num_tasks, n, device):
    """→ (rows int64 [N] grouped position → token, or None; row tiles; token chunks)."""
    order, starts = group_tokens(task_ids, task, num_tasks, n)
    return order, work_list(starts, TILE_ROWS, device), work_list(starts, CHUNK_ROWS, device)


def _inactive(indices, offsets, f, task) -> torch.Tensor:
    """fp32 [T, f] (1 = inactive) or [1, f] for the single task `task` >= 0."""
    inactive = 1.0 - dense_task_masks(indices, offsets, f)
    return inactive[task : task + 1] if task >= 0 else inactive


def task_output_bias(b1, w2, b2, indices, offsets, task, activation, mask_bias) -> torch.Tensor:
    """fp32 [T, d_out]: b2 + c_t with c_t = act(b1[I_t]) W2[:, I_t]ᵀ (0 if mask_bias). For a
    homogeneous batch (task >= 0) one row, expanded (stride 0) to T rows."""
    num_tasks = offsets.numel() - 1
    b2f = b2.float()
    if mask_bias:
        return b2f.expand(num_tasks, -1)
    hb = act(b1.float(), activation)
    base = b2f + (_inactive(indices, offsets, b1.shape[0], task) * hb) @ w2.float().t()
    return base.expand(num_tasks, -1) if task >= 0 else base


def task_dy_sums(dy, task_ids, task, num_tasks) -> torch.Tensor:
    """fp32 [T, d_out]: Σ of dY over each task's tokens."""
    s = dy.new_zeros(num_tasks, dy.shape[1], dtype=torch.float32)
    if task >= 0:
        s[task] = dy.float().sum(0)
    elif dy.shape[0]:
        s.index_add_(0, task_ids, dy.float())
    return s


# ---- backend protocol -----------------------------------------------------------------------
def masked_ffn_fwd(x, w1, b1, w2, b2, plan, activation, mask_bias):
    """→ (y, (packed z,)) for a plan (ops/plan.py)."""
    check_inputs(x=x, w1=w1, b1=b1, w2=w2, b2=b2, indices=plan.indices, offsets=plan.offsets, task_ids=plan.task_ids)
    y, z = forward(x, w1, b1, w2, b2, plan.indices, plan.offsets, plan.task_ids, plan.task, activation, mask_bias,
                   KERNELS)
    return y, (z,)


def masked_ffn_bwd(dy, x, w1, b1, w2, b2, plan, saved, activation, mask_bias):
    (z,) = saved
    check_inputs(x=x, dy=dy, w1=w1, b1=b1, w2=w2, b2=b2, indices=plan.indices, offsets=plan.offsets,
                 task_ids=plan.task_ids, z=z)
    return backward(dy, x, w1, b1, w2, b2, plan.indices, plan.offsets, plan.task_ids, plan.task, z, activation,
                    mask_bias, KERNELS)


def fc1_act_count(x, w1, b1, counts, routing, valid, activation, write_output):
    check_inputs(x=x, w1=w1, b1=b1, counts=counts, task_ids=routing.task_ids, valid=valid)
    return count(x, w1, b1, counts, routing.task_ids, routing.task, valid, activation, write_output, KERNELS)


def forward(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, k: Kernels):
    """(y [N, d_out], packed z [N, f]) with the kernels `k` (validated inputs)."""
    n, f = x.shape[0], w1.shape[0]
    rows, tiles, _ = _grouping(task_ids, task, offsets.numel() - 1, n, x.device)
    z, h = x.new_empty(n, f), x.new_empty(n, f)
    k.fc1(tiles, x, rows, w1, indices, offsets, b1.float().contiguous(), z, h, activation)
    y = x.new_empty(n, w2.shape[0])
    bias = task_output_bias(b1, w2, b2, indices, offsets, task, activation, mask_bias)
    k.fc2(tiles, h, w2.t().contiguous(), indices, offsets, bias, y, rows)
    return y, z


def backward(dy, x, w1, b1, w2, b2, indices, offsets, task_ids, task, z, activation, mask_bias, k: Kernels):
    """(dx, dw1, db1, dw2, db2) with the kernels `k`; weight gradients accumulate in fp32."""
    n, f, num_tasks = x.shape[0], w1.shape[0], offsets.numel() - 1
    rows, tiles, chunks = _grouping(task_ids, task, num_tasks, n, x.device)
    w2t = w2.t().contiguous()
    dz, h = x.new_empty(n, f), x.new_empty(n, f)
    k.dz(tiles, dy, rows, w2t, indices, offsets, z, dz, h, activation)
    dx = x.new_empty(x.shape)
    k.fc2(tiles, dz, w1, indices, offsets, None, dx, rows)
    dw1 = torch.zeros(w1.shape, dtype=torch.float32, device=x.device)
    k.wgrad(chunks, dz, x, rows, indices, offsets, dw1)
    dw2t = torch.zeros(f, w2.shape[0], dtype=torch.float32, device=x.device)
    k.wgrad(chunks, h, dy, rows, indices, offsets, dw2t)
    db1 = torch.zeros(f, dtype=torch.float32, device=x.device)
    k.colsum(chunks, dz, indices, offsets, db1)
    if not mask_bias:  # inactive neurons output the per-task constant act(b1_i)
        sums = task_dy_sums(dy, task_ids, task, num_tasks)
        inactive = 1.0 - dense_task_masks(indices, offsets, f)
        b1f = b1.float()
        db1 += act_grad(b1f, activation) * (inactive * (sums @ w2.float())).sum(0)
        dw2t += (inactive * act(b1f, activation)).t() @ sums
    db2 = dy.float().sum(0)
    dt = x.dtype
    return dx, dw1.to(dt), db1.to(dt), dw2t.t().to(dt).contiguous(), db2.to(dt)


def count(x, w1, b1, counts, task_ids, task, valid, activation, write_output, k: Kernels):
    """h [N, f] (or [0, f] when not write_output); counts [T, f] updated in place."""
    n, f = x.shape[0], w1.shape[0]
    order, starts = group_tokens(task_ids, task, counts.shape[0], n)
    h = x.new_empty(n, f) if write_output else None
    k.fc1_count(work_list(starts, TILE_ROWS, x.device), x, order, w1, b1.float().contiguous(), h, counts, valid,
                activation)
    return h if write_output else x.new_empty(0, f)
