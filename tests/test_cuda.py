"""`cuda` backend (csrc/ kernels, module neuronspec._cuda).

Everywhere: the module builds and imports when nvcc exists and reports the CUTLASS version it
was compiled with, calling it without a device raises the clear RuntimeError, `available()`
reasons, argument validation, the per-task table layout, and the Python side of the backend
(grouping, padded tables, packed buffers, bias terms) run on CPU against the reference with
`EmulatedKernels`, a torch re-statement of each kernel's contract (csrc/ops.h), every scratch
buffer starting as NaN. With a GPU: the real kernels vs the reference (values, gradients,
counts; bf16/fp16, relu/gelu, mask_bias, mixed tasks, empty/full masks, odd shapes) — skipped
cleanly without one.
"""
import importlib
import shutil
from pathlib import Path

import pytest
import torch

from neuronspec.ops import (
    available_backends, fc1_act_count, fc1_act_count_reference, masked_ffn, masked_ffn_reference,
)
from neuronspec.ops import cuda_backend as cb
from neuronspec.ops import TaskMasks
from neuronspec.ops.plan import make_plan, mask_tables, route
from neuronspec.ops.activations import act, act_grad
from neuronspec.ops.call import Counting, FFNOptions, FFNWeights

from _ffn_cases import NAMES, outputs_vs_reference, random_problem

WHY_NO_GPU = cb.available(torch.device("cuda"))  # e.g. no device, module not built, driver too old
needs_gpu = pytest.mark.skipif(WHY_NO_GPU is not None, reason=f"cuda backend unavailable: {WHY_NO_GPU}")
needs_module = pytest.mark.skipif(cb._load() is None, reason="neuronspec._cuda not built")


def assert_close(name, got, want, tol):
    got, want = got.double().cpu(), want.double().cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs().max().item() if got.numel() else 0.0
    scale = max(want.abs().max().item() if want.numel() else 0.0, 1.0)
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol:g} x {scale:.3g}"


# ---- build, import, device errors -----------------------------------------------------------
LAUNCHERS = ("device_count", "cutlass_version", "workspace_bytes", "has_sm90", "grouped_gemm", "gather_rows",
             "scatter_rows", "act_forward", "act_backward", "count_act")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: the module is not built")
def test_module_imports_when_nvcc_exists():
    mod = importlib.import_module("neuronspec._cuda")
    for fn in LAUNCHERS:
        assert callable(getattr(mod, fn)), fn
    assert isinstance(mod.has_sm90(), bool)  # True when built for architecture 90 (the default 80;90)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: the module is not built")
def test_module_is_built_against_cutlass_from_the_wheel():
    # the version of the CUTLASS headers compiled in = the nvidia-cutlass build requirement
    mod = importlib.import_module("neuronspec._cuda")
    version = mod.cutlass_version()
    assert version.count(".") == 2 and all(p.isdigit() for p in version.split(".")), version
    req = next(line for line in open(Path(__file__).parents[1] / "pyproject.toml") if "requires" in line)
    assert f'"nvidia-cutlass=={version}.0"' in req, (version, req)


def test_gemm_kernel_choice(monkeypatch):
    monkeypatch.setattr(cb, "_GEMM_KERNEL", {})
    dev = torch.device("cuda", 0)
    monkeypatch.delenv(cb.GEMM_ENV, raising=False)
    assert cb.gemm_kernel(dev) == 0  # the sm80 kernels unless asked otherwise
    monkeypatch.setenv(cb.GEMM_ENV, "sm70")
    with pytest.raises(ValueError, match=r"^NEURONSPEC_CUDA_GEMM: expected 'sm80' or 'sm90', got 'sm70'"):
        cb.gemm_kernel(dev)


@needs_module
def test_workspace_layout():
    mod = cb._load()
    # per problem: 3 ints (GemmCoord, padded to 16 bytes in all) + 4 pointers + 4 int64 strides
    assert [mod.workspace_bytes(p) for p in (0, 1, 4, 9)] == [0, 16 + 64, 48 + 256, 112 + 576]
    with pytest.raises(ValueError, match="num_problems"):
        mod.workspace_bytes(-1)


@needs_module
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_call_without_device_raises_clear_error():
    mod = cb._load()
    with pytest.raises(RuntimeError, match=r"^neuronspec\._cuda: no CUDA device: "):
        mod.device_count()
    # a launcher checks the device before touching any pointer
    with pytest.raises(RuntimeError, match=r"^neuronspec\._cuda: no CUDA device: "):
        mod.grouped_gemm(kernel=0, op=0, dtype=2, device=0, stream=0, workspace=0, num_problems=1, starts=0, n=8,
                         koff=0, kw=0, kdim=8, ncols=0, a=0, lda=8, b=0, ldb=8, d=0, ldd=8)
    with pytest.raises(RuntimeError, match=r"^neuronspec\._cuda: no CUDA device: "):
        mod.count_act(dtype=2, act=1, device=0, stream=0, z=0, ldz=8, n_rows=1, n_cols=8, rows=0, row_task=0,
                      task=0, valid=0, h=0, ldh=8, counts=0, ldc=8)


def test_available_reasons(monkeypatch):
    if cb._load() is None:
        assert cb.available(torch.device("cuda")).startswith("neuronspec._cuda not built: ")
    else:
        assert cb.available(torch.device("cpu")).startswith("no CUDA device")
        if not torch.cuda.is_available():
            assert cb.available(torch.device("cuda")).startswith("no CUDA device")
    monkeypatch.setattr(cb, "_module", None)
    monkeypatch.setattr(cb, "_import_error", "No module named 'neuronspec._cuda'")
    why = cb.available(torch.device("cuda"))
    assert why == ("neuronspec._cuda not built: No module named 'neuronspec._cuda' "
                   "(install with nvcc on PATH: pip install -e .)")
    with pytest.raises(RuntimeError, match="neuronspec._cuda not built"):
        cb._require_module()


def test_cuda_not_listed_for_cpu():
    assert "cuda" not in available_backends("cpu")


# ---- argument validation ---------------------------------------------------------------------
def small_problem(dtype=torch.bfloat16, n=10, d=8, f=12, num_tasks=3, seed=0):
    tensors, masks, ids = random_problem(seed, n, d, f, num_tasks, dtype=dtype)
    return tensors, masks, ids


def test_public_ops_refuse_cuda_backend_on_cpu():
    (x, w1, b1, w2, b2), masks, ids = small_problem()
    with pytest.raises(ValueError, match=r"backend 'cuda' is unavailable on cpu"):
        masked_ffn(x, w1, b1, w2, b2, masks, ids, backend="cuda")
    counts = torch.zeros(3, w1.shape[0], dtype=torch.long)
    with pytest.raises(ValueError, match=r"backend 'cuda' is unavailable on cpu"):
        fc1_act_count(x, w1, b1, counts, ids, backend="cuda")


def test_backend_functions_reject_cpu_tensors():
    (x, w1, b1, w2, b2), masks, ids = small_problem()
    plan = make_plan(mask_tables(masks.indices, masks.offsets, w1.shape[0]), ids, -1, x.shape[0])
    with pytest.raises(ValueError, match=r"^x: the cuda backend needs CUDA tensors, got bfloat16 tensor .* on cpu"):
        cb.forward(x, FFNWeights(w1, b1, w2, b2), plan, FFNOptions("relu"))
    z = torch.zeros(x.shape[0], w1.shape[0])
    with pytest.raises(ValueError, match=r"^x: the cuda backend needs CUDA tensors"):
        cb.backward(torch.ones_like(x), x, FFNWeights(w1, b1, w2, b2), plan, FFNOptions("relu"), (z,))
    counts = torch.zeros(3, w1.shape[0], dtype=torch.long)
    with pytest.raises(ValueError, match=r"^x: the cuda backend needs CUDA tensors"):
        cb.act_count(x, FFNWeights(w1, b1), Counting(counts, plan, None, True), FFNOptions("relu"))


def test_check_inputs_names_the_argument():
    (x, w1, b1, w2, b2), masks, ids = small_problem()
    ok = dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2, indices=masks.indices, offsets=masks.offsets, task_ids=ids)
    cb.check_inputs(require_cuda=False, **ok)  # the same tensors pass apart from the device type
    cases = [
        (dict(x=x.double(), w1=w1.double()), TypeError, r"^x: the cuda backend supports float16 and bfloat16 .*, got float64"),
        (dict(x=x.float()), TypeError, r"^x: the cuda backend supports float16 and bfloat16 .*, got float32 .*backend='torch'"),
        (dict(w1=w1.half()), TypeError, r"^w1: expected dtype torch.bfloat16, got float16"),
        (dict(w2=w2.t().contiguous().t()), ValueError, r"^w2: must be contiguous"),
        (dict(indices=masks.indices.long()), TypeError, r"^indices: expected dtype torch.int32"),
        (dict(offsets=masks.offsets.long()), TypeError, r"^offsets: expected dtype torch.int32"),
        (dict(task_ids=ids.int()), TypeError, r"^task_ids: expected dtype torch.int64"),
        (dict(b2=b2.to("meta")), ValueError, r"^b2: expected a tensor on cpu \(like x\), got bfloat16 tensor .* on meta"),
        (dict(b1=[1.0]), TypeError, r"^b1: expected a torch.Tensor, got list"),
        (dict(valid=torch.ones(x.shape[0], dtype=torch.uint8)), TypeError, r"^valid: expected dtype torch.bool"),
    ]
    for change, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            cb.check_inputs(require_cuda=False, **{**ok, **change})


def test_layout_pads_each_task_to_eight_rows():
    # task 0: 3 active, task 1: none, task 2: all 9 (f = 9), task 3: 8
    masks = TaskMasks.from_dense(torch.tensor([
        [1, 0, 1, 0, 0, 0, 0, 1, 0], [0] * 9, [1] * 9, [1, 1, 1, 1, 0, 1, 1, 1, 1]], dtype=torch.bool))
    tables = mask_tables(masks.indices, masks.offsets, 9)
    lay = cb.Layout.for_masks(tables, -1)
    assert lay.tasks == [0, 1, 2, 3] and lay.kw_host == [8, 0, 16, 8] and lay.koff_host == [0, 8, 8, 24]
    assert lay.kw.dtype == lay.koff.dtype == torch.int32 and lay.kw.tolist() == [8, 0, 16, 8]
    assert lay.width == 16 and lay.rows == 32
    pad = [-1] * 5
    assert lay.table_idx.tolist() == [0, 2, 7, *pad, *range(9), *[-1] * 7, 0, 1, 2, 3, 5, 6, 7, 8]
    assert lay.scatter_idx.tolist() == [0, 2, 7, *[9] * 5, *range(9), *[9] * 7, 0, 1, 2, 3, 5, 6, 7, 8]
    one = cb.masks_layout(tables, 1)  # the empty task alone: no table rows, packed width 8
    assert one.num_problems == 1 and one.kw_host == [0] and one.rows == 0 and one.width == 8
    assert cb.masks_layout(tables, 1) is one  # cached per (masks, task)
    full = cb.count_layout(3, 9, -1, torch.device("cpu"))
    assert full.kw_host == [16] * 3 and full.koff_host == [0] * 3
    assert full.table_idx.tolist() == [*range(9), *[-1] * 7]


# ---- the Python side of the backend, with the kernels emulated in torch -----------------------
class EmulatedKernels:
    """The contract of each csrc/ launcher (csrc/ops.h) in plain torch: per problem, fp32
    accumulation, exactly the extents the CUTLASS kernels read and write. Asserts the invariants
    the kernels rely on (alignment of leading dimensions and extents, in-range problems)."""

    def __init__(self):
        self.calls = []

    def gather(self, src, idx, dst, extra_col=-1, extra=None):
        self.calls.append("gather")
        assert src.shape[1] <= dst.shape[1] and (extra_col < 0 or src.shape[1] <= extra_col < dst.shape[1])
        rows = torch.arange(dst.shape[0]) if idx is None else idx
        assert rows.numel() == dst.shape[0]
        dst.zero_()
        ok = rows >= 0
        dst[ok, : src.shape[1]] = src[rows[ok]]
        if extra_col >= 0:
            dst[ok, extra_col] = 1 if extra is None else extra[rows[ok]]

    def scatter(self, src, bias, row_problem, rows, dst):
        self.calls.append("scatter")
        n, c = src.shape[0], dst.shape[1]
        v = src[:, :c].float()
        if bias is not None:
            assert bias.dtype == torch.float32 and bias.stride(1) == 1
            v = v + bias[torch.zeros(n, dtype=torch.long) if row_problem is None else row_problem, :c]
        dst[torch.arange(n) if rows is None else rows] = v.to(dst.dtype)

    def gemm(self, op, layout, starts, n, a, b, d):
        self.calls.append(("nt", "nn", "tn")[op])
        for t in (a, b, d):
            assert t.stride(1) == 1 and t.stride(0) % 8 == 0, (op, t.shape, t.stride())
        assert d.dtype == (torch.float32 if op == cb.OP_TN else a.dtype)
        kdim, ncols = a.shape[1], d.shape[1]
        assert kdim % 8 == 0 and ncols % 8 == 0
        for p in range(layout.num_problems):
            s, e = (int(starts[p]), int(starts[p + 1])) if starts is not None else (0, n)
            ko, w = int(layout.koff[p]), int(layout.kw[p])
            assert w % 8 == 0 and 0 <= s <= e <= a.shape[0] and ko + w <= b.shape[0] or op == cb.OP_TN
            if op == cb.OP_NT:
                assert b.shape[1] == kdim and w <= d.shape[1]
                acc, out = a[s:e].float() @ b[ko : ko + w].float().t(), d[s:e, :w]
            elif op == cb.OP_NN:
                acc, out = a[s:e, :w].float() @ b[ko : ko + w, :ncols].float(), d[s:e]
            else:
                acc, out = a[s:e, :w].float().t() @ b[s:e, :ncols].float(), d[ko : ko + w]
            out.copy_(acc.to(d.dtype))

    def act_forward(self, z, h, activation):
        self.calls.append("act")
        h.copy_(act(z.float(), activation).to(h.dtype))

    def act_backward(self, z, g, h, activation):
        self.calls.append("act_bwd")
        g.copy_((g.float() * act_grad(z.float(), activation)).to(g.dtype))
        h.copy_(act(z.float(), activation).to(h.dtype))

    def count(self, z, n_cols, rows, row_task, task, valid, h, counts, activation):
        self.calls.append("count")
        zz = z[:, :n_cols].float()
        token = torch.arange(z.shape[0]) if rows is None else rows
        tasks = torch.full((z.shape[0],), task) if row_task is None else row_task
        if h is not None:
            h[token] = act(zz, activation).to(h.dtype)
        pos = zz > 0
        if valid is not None:
            pos &= valid[token][:, None]
        counts.index_add_(0, tasks, pos.long())


@pytest.fixture
def nan_buffers(monkeypatch):
    """Every scratch buffer of the backend starts as NaN (not just uninitialised): a kernel that
    read outside what the kernels before it wrote would spoil the results."""
    empty = cb._empty

    def nan_empty(rows, cols, like, dtype=None):
        t = empty(rows, cols, like, dtype)
        return t.fill_(float("nan"))

    monkeypatch.setattr(cb, "_empty", nan_empty)


def reference_grads(tensors, masks, ids, activation, mask_bias, dy):
    leaves = [t.detach().double().requires_grad_(True) for t in tensors]
    y = masked_ffn_reference(*leaves, masks.indices, masks.offsets, ids, activation, mask_bias)
    return y.detach(), torch.autograd.grad(y, leaves, dy.double())


def emulated_fwd_bwd(tensors, masks, task_ids, task, activation, mask_bias, dy_seed, sort=True):
    tables = mask_tables(masks.indices, masks.offsets, tensors[1].shape[0])
    plan = make_plan(tables, task_ids, task, tensors[0].shape[0], sort=sort)
    k = EmulatedKernels()
    weights, opts = FFNWeights(*tensors[1:]), FFNOptions(activation, mask_bias)
    y, z = cb.launch_forward(tensors[0], weights, cb._sorted_plan(plan), opts, k)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed)).to(y.dtype)
    dx, grads = cb.launch_backward(dy, tensors[0], weights, cb._sorted_plan(plan), opts, z, k)
    got = (dx, *grads.tensors()[:4])
    return y, dy, got, k.calls


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("mask_bias", [False, True], ids=["bias", "mask_bias"])
@pytest.mark.parametrize("homogeneous", [False, True], ids=["mixed", "one_task"])
def test_backend_logic_matches_reference_on_cpu(activation, mask_bias, homogeneous, nan_buffers):
    # 7 tasks (some empty, some full masks via random_masks), 150 tokens: several tasks, shared
    # neurons between tasks, d/f/d_out not multiples of 8 (pads everywhere). fp32 through the
    # emulation checks the layout logic tightly (the real kernels take fp16/bf16).
    tensors, masks, ids = random_problem(3, 150, 20, 70, 7, dtype=torch.float32, d_out=13)
    task = 5 if homogeneous else -1
    full_ids = torch.full_like(ids, 5) if homogeneous else ids
    task_ids = torch.empty(0, dtype=torch.long) if homogeneous else ids
    y, dy, got, calls = emulated_fwd_bwd(tensors, masks, task_ids, task, activation, mask_bias, 1, sort=False)
    y_ref, g_ref = reference_grads(tensors, masks, full_ids, activation, mask_bias, dy)
    assert_close("y", y, y_ref, 2e-5)
    for name, g, gr, t in zip(NAMES, got, g_ref, tensors):
        assert g.dtype == t.dtype and g.shape == t.shape and g.is_contiguous()
        assert_close(f"d{name}", g, gr, 2e-5)
    assert calls == ["gather"] * 2 + ["nt", "act", "gather", "nn", "scatter"] + ["gather"] * 2 + [
        "nt", "act_bwd", "gather", "gather", "nn", "scatter", "tn", "tn"]


def test_backend_logic_bf16_and_empty_inputs_on_cpu(nan_buffers):
    tensors, masks, ids = random_problem(4, 90, 24, 40, 5, dtype=torch.bfloat16)
    y, dy, got, _ = emulated_fwd_bwd(tensors, masks, ids, -1, "gelu", False, 2)
    y_ref, g_ref = reference_grads(tensors, masks, ids, "gelu", False, dy)
    assert y.dtype == torch.bfloat16
    assert_close("y", y, y_ref, 3e-2)
    for name, g, gr in zip(NAMES, got, g_ref):
        assert_close(f"d{name}", g, gr, 3e-2)
    # no tokens at all: y [0, d], gradients zero (db1 / dw2 inactive terms vanish with dY = 0)
    x0 = tensors[0][:0]
    y0, _, g0, _ = emulated_fwd_bwd([x0, *tensors[1:]], masks, ids[:0], -1, "relu", False, 3)
    assert y0.shape == (0, tensors[3].shape[0])
    assert g0[0].shape == x0.shape and all(int(torch.count_nonzero(g)) == 0 for g in g0[1:])


def test_backend_logic_all_masks_empty_on_cpu(nan_buffers):
    # no active neuron anywhere: Y = b2 + c_t, and every table has zero rows
    tensors, _, ids = random_problem(6, 40, 16, 24, 3, dtype=torch.float32)
    masks = TaskMasks.from_dense(torch.zeros(3, 24, dtype=torch.bool))
    y, dy, got, _ = emulated_fwd_bwd(tensors, masks, ids, -1, "relu", False, 4)
    y_ref, g_ref = reference_grads(tensors, masks, ids, "relu", False, dy)
    assert_close("y", y, y_ref, 2e-5)
    for name, g, gr in zip(NAMES, got, g_ref):
        assert_close(f"d{name}", g, gr, 2e-5)


@pytest.mark.parametrize("homogeneous", [False, True], ids=["mixed", "one_task"])
def test_count_logic_matches_reference_on_cpu(homogeneous, nan_buffers):
    tensors, _, ids = random_problem(5, 140, 16, 50, 4, dtype=torch.float32)
    x, w1, b1 = tensors[:3]
    valid = torch.rand(140, generator=torch.Generator().manual_seed(3)) > 0.3
    task = 2 if homogeneous else -1
    task_ids = torch.empty(0, dtype=torch.long) if homogeneous else ids
    full_ids = torch.full_like(ids, 2) if homogeneous else ids
    counts = torch.full((4, 50), 7, dtype=torch.long)  # counts accumulate onto what is there
    want_counts = counts.clone()
    h_ref = fc1_act_count_reference(x, w1, b1, want_counts, full_ids, valid, "gelu")
    routing = route(task_ids, task, 4, 140, sort=False)  # unsorted: the backend sorts it itself
    h = cb.launch_count(x, FFNWeights(w1, b1), Counting(counts, routing, valid, True), FFNOptions("gelu"),
                        EmulatedKernels())
    assert torch.equal(counts, want_counts)
    assert_close("h", h, h_ref, 2e-5)
    h_none = cb.launch_count(x, FFNWeights(w1, b1), Counting(counts, routing, None, False), FFNOptions("relu"),
                             EmulatedKernels())
    assert h_none.shape == (0, 50)


@pytest.mark.parametrize("seed", range(12))
def test_backend_logic_fuzz_on_cpu(seed, nan_buffers):
    # random shapes (d, f, d_out around multiples of 8), task counts, densities, activation,
    # mask_bias, mixed or one task, through the emulated kernels in fp32 vs the reference
    g = torch.Generator().manual_seed(100 + seed)
    n, d, f, d_out, num_tasks = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in
                                 ((0, 200), (1, 40), (1, 70), (1, 30), (1, 9)))
    density = [None, 0.0, 1.0, 0.5][seed % 4]
    tensors, masks, ids = random_problem(seed, n, d, f, num_tasks, dtype=torch.float32, density=density,
                                         d_out=d_out)
    activation, mask_bias = ("relu", "gelu")[seed % 2], bool(seed // 2 % 2)
    task = -1 if seed % 3 else int(torch.randint(0, num_tasks, (), generator=g))
    full_ids = ids if task < 0 else torch.full_like(ids, task)
    y, dy, got, _ = emulated_fwd_bwd(tensors, masks, ids if task < 0 else torch.empty(0, dtype=torch.long), task,
                                     activation, mask_bias, seed)
    y_ref, g_ref = reference_grads(tensors, masks, full_ids, activation, mask_bias, dy)
    assert_close("y", y, y_ref, 2e-5)
    for name, gr_got, gr in zip(NAMES, got, g_ref):
        assert_close(f"d{name}", gr_got, gr, 2e-5)


class LaunchOnly:
    """Kernels that only record their calls: the host side of the backend without the GPU."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append(name)


@pytest.mark.parametrize("mixed", [False, True], ids=["one_task", "mixed"])
def test_backend_host_side_never_syncs(mixed):
    # docs/design.md §3: nothing on the host reads device values per call (sort, group bounds,
    # tables, bias terms); tables are built once per (masks, task) by the warm-up call
    from test_plan import HostReads, SyncAudit

    tensors, masks, _ = random_problem(0, 96, 20, 64, 4, dtype=torch.bfloat16, density=0.5)
    tables = mask_tables(masks.indices, masks.offsets, 64)
    k = LaunchOnly()

    def once(seed):
        ids = torch.randint(0, 4, (96,), generator=torch.Generator().manual_seed(seed)) if mixed else torch.empty(0)
        plan = cb._sorted_plan(make_plan(tables, ids.long(), -1 if mixed else 2, 96, sort=False))
        opts = FFNOptions("gelu")
        y, z = cb.launch_forward(tensors[0], FFNWeights(*tensors[1:]), plan, opts, k)
        cb.launch_backward(torch.ones_like(y), tensors[0], FFNWeights(*tensors[1:]), plan, opts, z, k)
        counts = torch.zeros(4, 64, dtype=torch.long)
        routing = route(ids.long(), -1 if mixed else 2, 4, 96, sort=False)
        cb.launch_count(tensors[0], FFNWeights(*tensors[1:3]), Counting(counts, routing, None, True), FFNOptions("relu"), k)

    once(0)
    with HostReads() as reads, SyncAudit() as mode:
        once(1)
    assert reads.calls + mode.syncs == []
    assert k.calls[-4:] == ["gather", "gather", "gemm", "count"]


# ---- the real kernels on a GPU ----------------------------------------------------------------
TOL = {torch.bfloat16: 3e-2, torch.float16: 1e-2}
GPU_SHAPE = (1000, 256, 1000, 200)  # n, d, f, d_out: several tiles, none a multiple of 64


def gemm_kernels():
    """The GEMM kernel sets to test: sm80 always, sm90 where the module and the GPU have it."""
    mod = cb._load()
    sm90 = mod is not None and torch.cuda.is_available() and mod.has_sm90() and torch.cuda.get_device_capability() == (9, 0)
    return ["sm80", "sm90"] if sm90 else ["sm80"]


@pytest.fixture(params=["sm80", "sm90"])
def gemm_path(request, monkeypatch):
    """Runs a GPU test with each GEMM kernel set (NEURONSPEC_CUDA_GEMM); sm90 skips where absent."""
    if request.param not in gemm_kernels():
        pytest.skip("no sm_90a kernels in the module or not an sm_90 GPU")
    monkeypatch.setenv(cb.GEMM_ENV, request.param)
    return request.param


def check_gpu(tensors, masks, task_ids, activation, mask_bias, tol):
    for name, got, want in outputs_vs_reference("cuda", tensors, masks, task_ids, activation, mask_bias):
        assert_close(name, got, want, tol)


def gpu_problem(seed, dtype, num_tasks=9, shape=GPU_SHAPE, density=None):
    n, d, f, d_out = shape
    tensors, masks, ids = random_problem(seed, n, d, f, num_tasks, dtype=dtype, density=density, d_out=d_out)
    return [t.cuda() for t in tensors], masks, ids.cuda()


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("mask_bias", [False, True], ids=["bias", "mask_bias"])
def test_gpu_mixed_tasks_match_reference(dtype, activation, mask_bias, gemm_path):
    tensors, masks, ids = gpu_problem(11, dtype)  # tasks 3 and 5 of 9: an empty and a full mask
    check_gpu(tensors, masks, ids, activation, mask_bias, TOL[dtype])


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("density", [0.0, 1.0, 0.3], ids=["empty", "full", "sparse"])
def test_gpu_one_task_batches(dtype, density, gemm_path):
    tensors, masks, _ = gpu_problem(12, dtype, num_tasks=3, density=density)
    check_gpu(tensors, masks, 1, "relu", False, TOL[dtype])


@needs_gpu
@pytest.mark.parametrize("shape", [(1, 8, 16, 8), (65, 33, 129, 17), (300, 5, 7, 3), (700, 136, 264, 128)],
                         ids=["one", "odd", "tiny_dims", "several_tiles"])
def test_gpu_small_and_odd_shapes(shape, gemm_path):
    tensors, masks, ids = gpu_problem(13, torch.float16, num_tasks=4, shape=shape)
    check_gpu(tensors, masks, ids, "gelu", False, TOL[torch.float16])


@needs_gpu
def test_gpu_no_tokens():
    tensors, masks, ids = gpu_problem(17, torch.bfloat16, num_tasks=4, shape=(0, 64, 96, 32))
    leaves = [t.detach().requires_grad_(True) for t in tensors]
    y = masked_ffn(*leaves, masks.to("cuda"), ids, "relu", False, backend="cuda")
    assert y.shape == (0, 32)
    y.sum().backward()
    assert leaves[0].grad.shape == (0, 64)
    assert all(int(torch.count_nonzero(t.grad)) == 0 for t in leaves[1:])


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_fc1_act_count(dtype, gemm_path):
    tensors, _, ids = gpu_problem(14, dtype, num_tasks=5)
    x, w1, b1 = tensors[:3]
    valid = torch.rand(x.shape[0], device="cuda") > 0.2
    counts = torch.zeros(5, w1.shape[0], dtype=torch.long, device="cuda")
    h = fc1_act_count(x, w1, b1, counts, ids, valid, "gelu", backend="cuda")
    want = torch.zeros_like(counts)
    h_ref = fc1_act_count_reference(x, w1, b1, want, ids, valid, "gelu")
    assert_close("h", h, h_ref, TOL[dtype])
    # signs of Z that are ~0 can flip between GEMM orders: allow a handful of such flips
    diff = (counts - want).abs().sum().item()
    assert diff <= max(2, want.sum().item() // 10000), f"counts differ by {diff}"
    counts_only = torch.zeros_like(counts)
    assert fc1_act_count(x, w1, b1, counts_only, 3, None, "relu", return_output=False, backend="cuda") is None
    want = torch.zeros_like(counts)
    fc1_act_count_reference(x, w1, b1, want, torch.full_like(ids, 3), None, "relu")
    assert (counts_only - want).abs().sum().item() <= max(2, want.sum().item() // 10000)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_grouped_gemm_ops_match_torch(dtype, gemm_path):
    # the three CUTLASS ops on their own, 4 problems: rows 0..150, 150..150 (no rows: K = 0 for
    # tn), 150..420, 420..421; table widths 16, 8, 264, 0 (no neurons: K = 0 for nn, nothing for nt/tn)
    g = torch.Generator().manual_seed(0)
    dev = torch.device("cuda")
    starts = torch.tensor([0, 150, 150, 420, 421], dtype=torch.int32, device=dev)
    kw, koff = [16, 8, 264, 0], [0, 16, 24, 288]
    lay = cb.Layout([0, 1, 2, 3], kw, koff, torch.zeros(288, dtype=torch.long, device=dev), 288)
    n, kdim, ncols = 421, 40, 24
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(dev, dtype)  # noqa: E731
    x, table, packed, table_nn = rnd(n, kdim), rnd(288, kdim), rnd(n, 264), rnd(288, ncols)
    k = cb.KERNELS

    def bounds(p):
        return int(starts[p]), int(starts[p + 1])

    z = torch.full((n, 264), float("nan"), dtype=dtype, device=dev)
    k.gemm(cb.OP_NT, lay, starts, n, x, table, z)
    y = torch.full((n, ncols), float("nan"), dtype=dtype, device=dev)
    k.gemm(cb.OP_NN, lay, starts, n, packed, table_nn, y)
    w = torch.full((288, ncols), float("nan"), dtype=torch.float32, device=dev)
    k.gemm(cb.OP_TN, lay, starts, n, packed, y.nan_to_num(), w)
    w_none = torch.full((288, ncols), float("nan"), dtype=torch.float32, device=dev)
    k.gemm(cb.OP_TN, lay, None, 0, packed, y.nan_to_num(), w_none)  # no rows in any problem: zeros
    tol = TOL[dtype]
    for p in range(4):
        s, e = bounds(p)
        ko, kp = koff[p], kw[p]
        assert_close(f"nt problem {p}", z[s:e, :kp], x[s:e].float() @ table[ko : ko + kp].float().t(), tol)
        assert_close(f"nn problem {p}", y[s:e], packed[s:e, :kp].float() @ table_nn[ko : ko + kp].float(), tol)
        assert_close(f"tn problem {p}", w[ko : ko + kp], packed[s:e, :kp].float().t() @ y[s:e].float(), tol)
        assert torch.equal(w_none[ko : ko + kp], torch.zeros_like(w_none[ko : ko + kp]))
    assert not z[:, 16:].isfinite()[:150].any()  # nothing written beyond a problem's columns


@needs_gpu
def test_gpu_errors_are_python_exceptions():
    mod = cb._load()
    assert mod.device_count() >= 1
    gather = dict(dtype=2, device=0, stream=0, src=0, ld_src=8, src_cols=8, idx=0, n_rows=0, dst=0, ld_dst=8,
                  extra_col=-1, extra=0)
    with pytest.raises(ValueError, match="device 4096 out of range"):
        mod.gather_rows(**{**gather, "device": 4096})
    with pytest.raises(ValueError, match=r"gather_rows: dtype code must be 1 \(float16\) or 2 \(bfloat16\), got 0"):
        mod.gather_rows(**{**gather, "dtype": 0})
    buf = torch.zeros(64, device="cuda", dtype=torch.float16)
    gemm = dict(kernel=0, op=0, dtype=1, device=0, stream=0, workspace=buf.data_ptr(), num_problems=1, starts=0,
                n=8, koff=buf.data_ptr(), kw=buf.data_ptr(), kdim=8, ncols=0, a=buf.data_ptr(), lda=8,
                b=buf.data_ptr(), ldb=8, d=buf.data_ptr(), ldd=8)
    with pytest.raises(ValueError, match="grouped_gemm: lda must be a positive multiple of 8, got 12"):
        mod.grouped_gemm(**{**gemm, "lda": 12})
    with pytest.raises(ValueError, match="grouped_gemm: b must be a non-null 16-byte aligned pointer"):
        mod.grouped_gemm(**{**gemm, "b": buf.data_ptr() + 2})
    with pytest.raises(ValueError, match="grouped_gemm: op must be 0"):
        mod.grouped_gemm(**{**gemm, "op": 3})
    with pytest.raises(ValueError, match="grouped_gemm: kernel must be 0"):
        mod.grouped_gemm(**{**gemm, "kernel": 2})
    with pytest.raises(ValueError, match="gather_rows: extra_col must lie in"):
        mod.gather_rows(**{**gather, "extra_col": 3})
    for dtype in (torch.float32, torch.float64):
        (x, w1, b1, w2, b2), masks, ids = gpu_problem(15, dtype, shape=(16, 8, 16, 8))
        with pytest.raises(TypeError, match="x: the cuda backend supports float16 and bfloat16"):
            masked_ffn(x, w1, b1, w2, b2, masks.to("cuda"), ids, backend="cuda")


@needs_gpu
def test_gpu_runs_on_the_current_stream():
    tensors, masks, ids = gpu_problem(16, torch.bfloat16)
    masks = masks.to("cuda")
    want = masked_ffn(*tensors, masks, ids, backend="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = masked_ffn(*tensors, masks, ids, backend="cuda")
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(got, want)
