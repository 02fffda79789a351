"""`cuda` backend: CUTLASS grouped GEMMs over the active neurons (csrc/, module `neuronspec._cuda`).

The module knows nothing about torch: this file validates the tensors, allocates every buffer
with torch and passes data pointers, leading dimensions and torch's current stream. Tokens are
grouped by task with the plan's stable sort (ops/plan.py: device-side, no host sync); problem p
of a grouped GEMM is task p of a mixed batch (P = T) or the batch's one task (P = 1). Per task t
with active rows A (docs/design.md §2), padded to kw_t = |A_t| rounded up to 8 (CUTLASS's
16-byte accesses) with zero weight rows:
    tables    [X | 1], [W1[A] | b1[A]], W2ᵀ[A] (padded, zero-filled)          gather_rows
    forward   Z_A = [X | 1] [W1[A] | b1[A]]ᵀ = X W1[A]ᵀ + b1[A]  (GEMM nt)    grouped_gemm 0
              H_A = act(Z_A)                                                   act_forward
              Y = H_A W2[:, A]ᵀ (GEMM nn), + b2 + c_t on the way to token order grouped_gemm 1, scatter_rows
    backward  dH_A = dY W2[:, A]               (nt)                            grouped_gemm 0
              dZ_A = dH_A ⊙ act'(Z_A), H_A = act(Z_A)                          act_backward
              dX = dZ_A W1[A]                  (nn)                            grouped_gemm 1
              [dW1[A] | db1[A]] = dZ_Aᵀ [X | 1], dW2ᵀ[A] = H_Aᵀ dY (tn, fp32)   grouped_gemm 2
              tasks' table rows summed into dW1, db1, dW2 (index_add_: shared neurons add up)
    counting  Z = X W1ᵀ + b1 (nt over all neurons), H = act(Z) and counts      count_act
A zero pad row of W1 and b1 gives Z = 0, H = act(0) = 0 and dZ = 0, and its W2ᵀ row is zero, so
pads add nothing; their gradient rows land in a dummy row that is dropped. c_t, the
inactive-neuron bias gradients (ops/bias_terms.py) and db2 are O((T + N)·f·d_out) torch ops. Z is saved packed: row i
(i-th token in task order) holds its task's kw_t pre-activations first. float16 and bfloat16
only (tensor cores, fp32 accumulation); float32/float64 are rejected (use the torch backend).

GEMM kernels: the sm80 CUTLASS 2.x ones run on every sm_80+ GPU (the default); the sm_90a
CUTLASS 3 ones (TMA + wgmma) run on sm_90 GPUs with NEURONSPEC_CUDA_GEMM=sm90 when the module
was built for architecture 90 (opt-in until they are measured on a GPU: they are compile-checked
only).
"""
from __future__ import annotations

import importlib
import itertools
import os

import torch

from .activations import TABLE
from .backends import Caps
from .bias_terms import add_inactive_grads, inactive_output, output_bias
from .call import FFNWeights
from .plan import MaskTables, Plan, Routing, route
from .validation import describe

ALIGN = 8  # CUTLASS 16-byte accesses: GEMM extents along contiguous dims and leading dims
GEMM_ENV = "NEURONSPEC_CUDA_GEMM"  # sm80 (default) or sm90
DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2}
CAPS = Caps(dtypes={"cuda": tuple(DTYPE_CODES)}, activations=tuple(a for a, s in TABLE.items() if s.code is not None),
            grouping=True, counting=True, sorted_counting=True)
OP_NT, OP_NN, OP_TN = 0, 1, 2  # csrc/ops.h grouped_gemm ops

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
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"the CUTLASS kernels need sm_80 or newer, {torch.cuda.get_device_name(device)} is sm_{major}x"
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
    device (a CUDA device when require_cuda), float ones of x's dtype (fp16/bf16) and the index
    ones of their fixed dtype. None entries are skipped."""
    x = tensors["x"]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {describe(x)}")
    if require_cuda and x.device.type != "cuda":
        raise ValueError(f"x: the cuda backend needs CUDA tensors, got {describe(x)}")
    if x.dtype not in DTYPE_CODES:
        raise TypeError(
            f"x: the cuda backend supports float16 and bfloat16 (tensor-core GEMMs), got {describe(x)}; "
            "use backend='torch'"
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


# ---- per-(masks, task) tables -------------------------------------------------------------
def _round(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def _to_device(values: list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list on `device`; to a GPU through pinned memory (an asynchronous copy)."""
    t = torch.tensor(values, dtype=dtype)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


class Layout:
    """The problems of one grouped GEMM launch and the per-task weight tables they read.

    Problem p (task `tasks[p]`) owns table rows koff[p] .. koff[p] + kw[p]; `table_idx` int64
    [rows] is the neuron of each table row (-1: a zero pad row), `scatter_idx` the same with pads
    sent to the dummy row f. `width` = max kw (≥ 8) is the packed buffers' row length. Built
    once per (masks, task) or per (T, f, task) for the all-neurons count (cached)."""

    def __init__(self, tasks: list[int], kw: list[int], koff: list[int], table_idx: torch.Tensor, f: int):
        device = table_idx.device
        self.tasks, self.kw_host, self.koff_host = tasks, kw, koff
        self.num_problems = len(tasks)
        self.kw = _to_device(kw, torch.int32, device)
        self.koff = _to_device(koff, torch.int32, device)
        self.rows = table_idx.numel()
        self.width = max(max(kw, default=0), ALIGN)
        self.table_idx = table_idx
        self.scatter_idx = torch.where(table_idx < 0, f, table_idx)

    @staticmethod
    def for_masks(tables: MaskTables, task: int) -> "Layout":
        """Tables of the active neurons: every task (task < 0) or the one `task`."""
        tasks = list(range(tables.num_tasks)) if task < 0 else [task]
        off, sizes = tables.host_offsets, tables.sizes
        kw = [_round(sizes[t]) for t in tasks]
        koff = [0, *itertools.accumulate(kw)][:-1]
        pos = [i for t, w in zip(tasks, kw) for i in [*range(off[t], off[t] + sizes[t]), *[-1] * (w - sizes[t])]]
        pos_t = _to_device(pos, torch.int64, tables.indices.device)
        idx = tables.indices_long[pos_t.clamp(min=0)] if tables.indices.numel() else torch.zeros_like(pos_t)
        return Layout(tasks, kw, koff, torch.where(pos_t >= 0, idx, -1), tables.num_neurons)

    @staticmethod
    def all_neurons(num_tasks: int, f: int, task: int, device: torch.device) -> "Layout":
        """One shared table of all f neurons (padded to f rounded up to 8) for every problem."""
        tasks = list(range(num_tasks)) if task < 0 else [task]
        fw = _round(f)
        idx = torch.cat([torch.arange(f, device=device), torch.full((fw - f,), -1, device=device)])
        return Layout(tasks, [fw] * len(tasks), [0] * len(tasks), idx, f)


_LAYOUTS: dict[tuple, Layout] = {}


def masks_layout(tables: MaskTables, task: int) -> Layout:
    """Layout.for_masks, built once per masks tables and task (kept on the tables object)."""
    cache = tables.__dict__.setdefault("_cuda_layouts", {})
    if task not in cache:
        cache[task] = Layout.for_masks(tables, task)
    return cache[task]


def count_layout(num_tasks: int, f: int, task: int, device: torch.device) -> Layout:
    key = (num_tasks, f, task, device)
    if key not in _LAYOUTS:
        if len(_LAYOUTS) >= 64:
            _LAYOUTS.clear()
        _LAYOUTS[key] = Layout.all_neurons(num_tasks, f, task, device)
    return _LAYOUTS[key]


def _sorted(routing: Routing, num_tasks: int) -> Routing:
    """The routing with a mixed batch's tokens sorted by task (the registry sorts once per call
    for this backend, forward and backward; a caller that did not gets it sorted here)."""
    if routing.mixed and routing.order is None:
        return route(routing.task_ids, routing.task, num_tasks, routing.n, sort=True)
    return routing


def _bounds(routing: Routing) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(starts int32 [T+1], order int64 [N]) of a sorted mixed batch; (None, None) for one task."""
    return (routing.starts, routing.order) if routing.mixed else (None, None)


def _empty(rows: int, cols: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uninitialised [rows, cols] whose data pointer is valid (16-byte aligned, non-null) even for
    0 rows: CUTLASS problems of extent 0 still receive a pointer."""
    return torch.empty(max(rows, 1), cols, dtype=dtype or like.dtype, device=like.device)[:rows]


# ---- tensor-level launchers ---------------------------------------------------------------
_GEMM_KERNEL: dict[tuple, int] = {}


def gemm_kernel(device: torch.device) -> int:
    """csrc grouped_gemm `kernel`: 0 (sm80 CUTLASS 2.x, default) or 1 (sm_90a CUTLASS 3, with
    NEURONSPEC_CUDA_GEMM=sm90 on an sm_90 GPU and a module built for it); read once per device."""
    choice = os.environ.get(GEMM_ENV) or "sm80"
    key = (device, choice)
    if key not in _GEMM_KERNEL:
        if choice not in ("sm80", "sm90"):
            raise ValueError(f"{GEMM_ENV}: expected 'sm80' or 'sm90', got {choice!r}")
        if choice == "sm90":
            if not _require_module().has_sm90():
                raise ValueError(f"{GEMM_ENV}=sm90: neuronspec._cuda was built without the sm_90a kernels "
                                 "(build with NEURONSPEC_CUDA_ARCH including 90)")
            if torch.cuda.get_device_capability(device) != (9, 0):
                raise ValueError(f"{GEMM_ENV}=sm90: the sm_90a kernels need an sm_90 GPU, {device} is "
                                 f"sm_{''.join(map(str, torch.cuda.get_device_capability(device)))}")
        _GEMM_KERNEL[key] = 1 if choice == "sm90" else 0
    return _GEMM_KERNEL[key]


class Kernels:
    """The csrc/ launchers called with tensors (csrc/ops.h gives the exact semantics). 2-D
    tensors pass their row stride as leading dimension; `starts` is the routing's int32 [P+1]
    group bounds or None (one problem of rows 0..n)."""

    @staticmethod
    def _common(t: torch.Tensor) -> dict:
        return dict(dtype=DTYPE_CODES[t.dtype], device=t.device.index,
                    stream=torch.cuda.current_stream(t.device).cuda_stream)

    def gather(self, src, idx, dst, extra_col=-1, extra=None):
        """dst[i] = src[idx[i]] (idx None: row i; -1: zero row), zero-padded; column extra_col
        holds extra[idx[i]] (extra None: 1)."""
        _require_module().gather_rows(
            **self._common(dst), src=src.data_ptr(), ld_src=src.stride(0), src_cols=src.shape[1],
            idx=0 if idx is None else idx.data_ptr(), n_rows=dst.shape[0], dst=dst.data_ptr(), ld_dst=dst.stride(0),
            extra_col=extra_col, extra=0 if extra is None else extra.data_ptr(),
        )

    def scatter(self, src, bias, row_problem, rows, dst):
        """dst[rows[r]] = src[r] + bias[row_problem[r]] over dst's columns (each optional)."""
        _require_module().scatter_rows(
            **self._common(dst), src=src.data_ptr(), ld_src=src.stride(0), n_rows=src.shape[0], n_cols=dst.shape[1],
            bias=0 if bias is None else bias.data_ptr(), ld_bias=0 if bias is None else bias.stride(0),
            row_problem=0 if row_problem is None else row_problem.data_ptr(),
            rows=0 if rows is None else rows.data_ptr(), dst=dst.data_ptr(), ld_dst=dst.stride(0),
        )

    def gemm(self, op, layout, starts, n, a, b, d):
        mod = _require_module()
        ws = torch.empty(mod.workspace_bytes(layout.num_problems), dtype=torch.uint8, device=a.device)
        kernel = gemm_kernel(a.device)
        if kernel == 1 and op != OP_NT:
            d.zero_()  # the sm_90a kernels skip problems without K steps (no neurons / no tokens)
        mod.grouped_gemm(
            kernel=kernel, op=op, **self._common(a), workspace=ws.data_ptr(),
            num_problems=layout.num_problems, starts=0 if starts is None else starts.data_ptr(), n=n,
            koff=layout.koff.data_ptr(), kw=layout.kw.data_ptr(), kdim=a.shape[1] if op == OP_NT else 0,
            ncols=0 if op == OP_NT else d.shape[1], a=a.data_ptr(), lda=a.stride(0), b=b.data_ptr(),
            ldb=b.stride(0), d=d.data_ptr(), ldd=d.stride(0),
        )

    def act_forward(self, z, h, activation):
        _require_module().act_forward(**self._common(z), act=TABLE[activation].code, z=z.data_ptr(),
                                      h=h.data_ptr(), numel=z.numel())

    def act_backward(self, z, g, h, activation):
        _require_module().act_backward(**self._common(z), act=TABLE[activation].code, z=z.data_ptr(),
                                       g=g.data_ptr(), h=h.data_ptr(), numel=z.numel())

    def count(self, z, n_cols, rows, row_task, task, valid, h, counts, activation):
        _require_module().count_act(
            **self._common(z), act=TABLE[activation].code, z=z.data_ptr(), ldz=z.stride(0), n_rows=z.shape[0],
            n_cols=n_cols, rows=0 if rows is None else rows.data_ptr(),
            row_task=0 if row_task is None else row_task.data_ptr(), task=task,
            valid=0 if valid is None else valid.data_ptr(), h=0 if h is None else h.data_ptr(),
            ldh=0 if h is None else h.stride(0), counts=counts.data_ptr(), ldc=counts.stride(0),
        )


KERNELS = Kernels()


# ---- the small torch-side terms --------------------------------------------------------------
def task_output_bias(w: FFNWeights, tables: MaskTables, task, opts) -> torch.Tensor:
    """fp32 [P, d_out]: b2 + c_t per problem, c_t = act(b1[I_t]) W2[:, I_t]ᵀ (0 if mask_bias)."""
    b2f = w.b2.float()
    if opts.mask_bias:
        return b2f[None] if task >= 0 else b2f[None].expand(tables.num_tasks, -1)
    inactive = tables.inactive(task if task >= 0 else None, torch.float32).reshape(-1, w.b1.shape[0])
    return output_bias(b2f, w.w2.float(), inactive_output(w.b1.float(), inactive, opts.activation))


def task_dy_sums(dy, routing: Routing, num_tasks) -> torch.Tensor:
    """fp32 [T, d_out]: Σ of dY over each task's tokens."""
    s = dy.new_zeros(num_tasks, dy.shape[1], dtype=torch.float32)
    if not routing.mixed:
        s[routing.task] = dy.float().sum(0)
    elif dy.shape[0]:
        s.index_add_(0, routing.task_ids, dy.float())
    return s


# ---- backend protocol -----------------------------------------------------------------------
def _sorted_plan(plan: Plan) -> Plan:
    r = _sorted(plan, plan.tables.num_tasks)
    return plan if r is plan else Plan(r.n, r.task, r.task_ids, r.order, r.sorted_ids, r.starts, plan.tables)


def forward(x, weights: FFNWeights, plan, opts):
    """→ (y, (packed z,)) for a plan (ops/plan.py)."""
    w = weights
    check_inputs(x=x, w1=w.w1, b1=w.b1, w2=w.w2, b2=w.b2, indices=plan.indices, offsets=plan.offsets,
                 task_ids=plan.task_ids)
    y, z = launch_forward(x, weights, _sorted_plan(plan), opts, KERNELS)
    return y, (z,)


def backward(dy, x, weights: FFNWeights, plan, opts, saved):
    (z,) = saved
    w = weights
    check_inputs(x=x, dy=dy, w1=w.w1, b1=w.b1, w2=w.w2, b2=w.b2, indices=plan.indices, offsets=plan.offsets,
                 task_ids=plan.task_ids, z=z)
    return launch_backward(dy, x, weights, _sorted_plan(plan), opts, z, KERNELS)


def act_count(x, weights: FFNWeights, counting, opts):
    check_inputs(x=x, w1=weights.w1, b1=weights.b1, counts=counting.counts, task_ids=counting.routing.task_ids,
                 valid=counting.valid)
    return launch_count(x, weights, counting, opts, KERNELS)


def _tokens_and_w1(x, w1, b1, order, lay, k: Kernels):
    """([X | 1 | 0] [N, round8(d + 1)] in task order, [W1[A] | b1[A] | 0] tables): fc1's bias
    is the extra column of its K dimension (exact: b1 times 1 in the fp32 accumulation)."""
    n, d = x.shape
    xs = _empty(n, _round(d + 1), x)
    k.gather(x, order, xs, extra_col=d)
    w1t = _empty(lay.rows, _round(d + 1), x)
    k.gather(w1, lay.table_idx, w1t, extra_col=d, extra=b1)
    return xs, w1t


def launch_forward(x, weights: FFNWeights, plan, opts, k: Kernels):
    """(y [N, d_out], packed z [N, width]) with the kernels `k` (validated inputs; a mixed
    plan sorted by task)."""
    w1, b1, w2, activation = weights.w1, weights.b1, weights.w2, opts.activation
    n, d_out = x.shape[0], w2.shape[0]
    lay = masks_layout(plan.tables, plan.task)
    starts, order = _bounds(plan)
    xs, w1t = _tokens_and_w1(x, w1, b1, order, lay, k)
    z, h = _empty(n, lay.width, x), _empty(n, lay.width, x)
    k.gemm(OP_NT, lay, starts, n, xs, w1t, z)
    k.act_forward(z, h, activation)
    w2tt = _empty(lay.rows, _round(d_out), x)  # W2ᵀ[A] per task
    k.gather(w2.t().contiguous(), lay.table_idx, w2tt)
    ys = _empty(n, _round(d_out), x)
    k.gemm(OP_NN, lay, starts, n, h, w2tt, ys)
    bias = task_output_bias(weights, plan.tables, plan.task, opts).contiguous()
    y = x.new_empty(n, d_out)
    k.scatter(ys, bias, plan.sorted_ids if plan.mixed else None, order, y)
    return y, z


def launch_backward(dy, x, weights: FFNWeights, plan, opts, z, k: Kernels):
    """(dx, FFNWeights of gradients) with the kernels `k`; weight gradients accumulate in fp32."""
    w1, b1, w2, activation = weights.w1, weights.b1, weights.w2, opts.activation
    n, d, f, d_out = x.shape[0], x.shape[1], w1.shape[0], w2.shape[0]
    lay = masks_layout(plan.tables, plan.task)
    starts, order = _bounds(plan)
    dys = _empty(n, _round(d_out), x)
    k.gather(dy, order, dys)
    w2tt = _empty(lay.rows, _round(d_out), x)
    k.gather(w2.t().contiguous(), lay.table_idx, w2tt)
    g, h = _empty(n, lay.width, x), _empty(n, lay.width, x)
    k.gemm(OP_NT, lay, starts, n, dys, w2tt, g)  # dH_A = dY W2[:, A]
    k.act_backward(z, g, h, activation)  # g <- dZ_A, h = H_A
    xs, w1t = _tokens_and_w1(x, w1, b1, order, lay, k)
    dxs = _empty(n, w1t.shape[1], x)  # column d (dZ b1[A]) is dropped
    k.gemm(OP_NN, lay, starts, n, g, w1t, dxs)
    dx = x.new_empty(n, d)
    k.scatter(dxs, None, None, order, dx)
    dw1t = _empty(lay.rows, xs.shape[1], x, torch.float32)  # [dW1[A] | db1[A] | 0]
    k.gemm(OP_TN, lay, starts, n, g, xs, dw1t)
    dw2tt = _empty(lay.rows, _round(d_out), x, torch.float32)
    k.gemm(OP_TN, lay, starts, n, h, dys, dw2tt)
    dw1e = torch.zeros(f + 1, dw1t.shape[1], dtype=torch.float32, device=x.device).index_add_(0, lay.scatter_idx, dw1t)
    dw2e = torch.zeros(f + 1, dw2tt.shape[1], dtype=torch.float32, device=x.device).index_add_(0, lay.scatter_idx, dw2tt)
    dw1, db1, dw2t = dw1e[:f, :d], dw1e[:f, d], dw2e[:f, :d_out]
    if not opts.mask_bias:  # inactive neurons output the per-task constant act(b1_i) (ops/bias_terms.py)
        sums = task_dy_sums(dy, plan, plan.tables.num_tasks)
        inactive = plan.tables.inactive(None, torch.float32)
        b1f = b1.float()
        add_inactive_grads(sums, w2.float(), b1f, inactive_output(b1f, inactive, activation), inactive, activation,
                           dw2t.t(), db1)
    db2 = dy.float().sum(0)
    dt = x.dtype
    return dx, FFNWeights(dw1.to(dt).contiguous(), db1.to(dt).contiguous(), dw2t.t().to(dt).contiguous(), db2.to(dt))


def launch_count(x, weights: FFNWeights, counting, opts, k: Kernels):
    """h [N, f] (or [0, f] when not write_output); counts [T, f] updated in place."""
    w1, b1, counts, routing, valid = weights.w1, weights.b1, counting.counts, counting.routing, counting.valid
    write_output, activation = counting.write_output, opts.activation
    n, f, num_tasks = x.shape[0], w1.shape[0], counts.shape[0]
    if n == 0:
        return x.new_empty(0, f)
    routing = _sorted(routing, num_tasks)
    lay = count_layout(num_tasks, f, routing.task, x.device)
    starts, order = _bounds(routing)
    xs, w1t = _tokens_and_w1(x, w1, b1, order, lay, k)
    z = _empty(n, lay.width, x)
    k.gemm(OP_NT, lay, starts, n, xs, w1t, z)
    h = x.new_empty(n, f) if write_output else None
    k.count(z, f, order, routing.sorted_ids if routing.mixed else None, routing.task, valid, h, counts, activation)
    return h if write_output else x.new_empty(0, f)
