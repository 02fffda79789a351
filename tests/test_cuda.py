"""`cuda` backend (csrc/ kernels, module neuronspec._cuda).

Everywhere: the module builds and imports when nvcc exists, calling it without a device raises
the clear RuntimeError, `available()` reasons, argument validation, and the Python side of the
backend (grouping, work lists, packed buffers, bias terms) run on CPU against the reference
with `EmulatedKernels`, a torch re-statement of each kernel's contract (csrc/ops.h).
With a GPU: the real kernels vs the reference (values, gradients, counts; fp32/bf16/fp16,
mixed tasks, empty/full masks, odd shapes) — skipped cleanly without one.
"""
import importlib
import shutil

import pytest
import torch

from neuronspec.ops import (
    available_backends, fc1_act_count, fc1_act_count_reference, masked_ffn, masked_ffn_reference,
)
from neuronspec.ops import cuda_backend as cb
from neuronspec.ops.plan import make_plan, mask_tables
from neuronspec.ops.activations import act, act_grad

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
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: the module is not built")
def test_module_imports_when_nvcc_exists():
    mod = importlib.import_module("neuronspec._cuda")
    for fn in ("device_count", "gathered_fc1", "fc1_count", "gathered_dz", "gathered_fc2", "gathered_wgrad",
               "gathered_colsum"):
        assert callable(getattr(mod, fn)), fn
    assert mod.TILE_ROWS == cb.TILE_ROWS


@needs_module
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_call_without_device_raises_clear_error():
    mod = cb._load()
    with pytest.raises(RuntimeError, match=r"^neuronspec\._cuda: no CUDA device: "):
        mod.device_count()
    # a launcher checks the device before touching any pointer
    with pytest.raises(RuntimeError, match=r"^neuronspec\._cuda: no CUDA device: "):
        mod.gathered_fc2(dtype=0, device=0, stream=0, work=0, num_work=1, p=0, ldp=8, w=0, ldw=8, idx=0, off=0,
                         n_cols=8, bias=0, bias_stride=0, out=0, ldo=8, out_rows=0)
    with pytest.raises(RuntimeError, match=r"^neuronspec\._cuda: no CUDA device: "):
        mod.fc1_count(dtype=2, act=1, device=0, stream=0, work=0, num_work=1, n_cols=8, x=0, ldx=8, x_rows=0,
                      w1=0, ldw=8, K=8, bias=0, h_out=0, ldo=8, counts=0, ldc=8, valid=0)


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
def small_problem(dtype=torch.float32, n=10, d=8, f=12, num_tasks=3, seed=0):
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
    with pytest.raises(ValueError, match=r"^x: the cuda backend needs CUDA tensors, got float32 tensor .* on cpu"):
        cb.masked_ffn_fwd(x, w1, b1, w2, b2, plan, "relu", False)
    z = torch.zeros(x.shape[0], w1.shape[0])
    with pytest.raises(ValueError, match=r"^x: the cuda backend needs CUDA tensors"):
        cb.masked_ffn_bwd(torch.ones_like(x), x, w1, b1, w2, b2, plan, (z,), "relu", False)
    counts = torch.zeros(3, w1.shape[0], dtype=torch.long)
    with pytest.raises(ValueError, match=r"^x: the cuda backend needs CUDA tensors"):
        cb.fc1_act_count(x, w1, b1, counts, plan, None, "relu", True)


def test_check_inputs_names_the_argument():
    (x, w1, b1, w2, b2), masks, ids = small_problem()
    ok = dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2, indices=masks.indices, offsets=masks.offsets, task_ids=ids)
    cb.check_inputs(require_cuda=False, **ok)  # the same tensors pass apart from the device type
    cases = [
        (dict(x=x.double(), w1=w1.double()), TypeError, r"^x: the cuda backend supports float32, float16 and bfloat16, got float64"),
        (dict(w1=w1.half()), TypeError, r"^w1: expected dtype torch.float32, got float16"),
        (dict(w2=w2.t().contiguous().t()), ValueError, r"^w2: must be contiguous"),
        (dict(indices=masks.indices.long()), TypeError, r"^indices: expected dtype torch.int32"),
        (dict(offsets=masks.offsets.long()), TypeError, r"^offsets: expected dtype torch.int32"),
        (dict(task_ids=ids.int()), TypeError, r"^task_ids: expected dtype torch.int64"),
        (dict(b2=b2.to("meta")), ValueError, r"^b2: expected a tensor on cpu \(like x\), got float32 tensor .* on meta"),
        (dict(b1=[1.0]), TypeError, r"^b1: expected a torch.Tensor, got list"),
        (dict(valid=torch.ones(x.shape[0], dtype=torch.uint8)), TypeError, r"^valid: expected dtype torch.bool"),
    ]
    for change, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            cb.check_inputs(require_cuda=False, **{**ok, **change})


def test_work_list_cuts_each_task_into_tiles():
    starts = [0, 0, 130, 131, 131, 200]  # task 0 empty, task 1 130 rows, 2 one row, 3 empty, 4 69 rows
    w = cb.work_list(starts, 64, "cpu")
    assert w.dtype == torch.int32 and w.shape[1] == 3
    assert w.tolist() == [[1, 0, 64], [1, 64, 128], [1, 128, 130], [2, 130, 131], [4, 131, 195], [4, 195, 200]]
    assert cb.work_list([0, 0, 0], 64, "cpu").shape == (0, 3)


# ---- the Python side of the backend, with the kernels emulated in torch -----------------------
class EmulatedKernels:
    """The contract of each csrc/ launcher (csrc/ops.h) in plain torch: per work item, fp32
    accumulation, gathers by the active lists, packed buffers. Asserts the work-list invariants
    the kernels rely on (row tiles of at most TILE_ROWS rows, non-empty, in range)."""

    def __init__(self):
        self.calls = []

    def _items(self, name, work, n, tiled):
        self.calls.append(name)
        assert work.dtype == torch.int32 and work.dim() == 2 and work.shape[1] == 3
        for t, r0, r1 in work.tolist():
            assert 0 <= r0 < r1 <= n, (name, t, r0, r1)
            assert not tiled or r1 - r0 <= cb.TILE_ROWS, (name, r0, r1)
            yield t, r0, r1

    @staticmethod
    def _active(idx, off, t):
        return idx[int(off[t]) : int(off[t + 1])].long()

    @staticmethod
    def _rows(rows, r0, r1):
        return torch.arange(r0, r1) if rows is None else rows[r0:r1]

    def fc1(self, work, x, x_rows, w1, idx, off, bias_f32, z, h, activation):
        for t, r0, r1 in self._items("fc1", work, x.shape[0], True):
            a = self._active(idx, off, t)
            zz = x[self._rows(x_rows, r0, r1)].float() @ w1[a].float().t() + bias_f32[a]
            z[r0:r1, : a.numel()] = zz.to(z.dtype)
            h[r0:r1, : a.numel()] = act(zz, activation).to(h.dtype)

    def fc1_count(self, work, x, x_rows, w1, bias_f32, h, counts, valid, activation):
        for t, r0, r1 in self._items("fc1_count", work, x.shape[0], True):
            src = self._rows(x_rows, r0, r1)
            zz = x[src].float() @ w1.float().t() + bias_f32
            if h is not None:
                h[src] = act(zz, activation).to(h.dtype)
            pos = zz.to(x.dtype) > 0
            if valid is not None:
                pos &= valid[src][:, None]
            counts[t] += pos.sum(0)

    def dz(self, work, dy, dy_rows, w2t, idx, off, z, dz, h, activation):
        for t, r0, r1 in self._items("dz", work, dy.shape[0], True):
            a = self._active(idx, off, t)
            c = dy[self._rows(dy_rows, r0, r1)].float() @ w2t[a].float().t()
            zz = z[r0:r1, : a.numel()].float()
            dz[r0:r1, : a.numel()] = (c * act_grad(zz, activation)).to(dz.dtype)
            h[r0:r1, : a.numel()] = act(zz, activation).to(h.dtype)

    def fc2(self, work, p, w, idx, off, bias_f32, out, out_rows):
        for t, r0, r1 in self._items("fc2", work, p.shape[0], True):
            a = self._active(idx, off, t)
            y = p[r0:r1, : a.numel()].float() @ w[a].float()
            if bias_f32 is not None:
                y = y + bias_f32[t]
            out[self._rows(out_rows, r0, r1)] = y.to(out.dtype)

    def wgrad(self, work, p, q, q_rows, idx, off, out_f32):
        assert out_f32.dtype == torch.float32
        for t, r0, r1 in self._items("wgrad", work, p.shape[0], False):
            a = self._active(idx, off, t)
            out_f32.index_add_(0, a, p[r0:r1, : a.numel()].float().t() @ q[self._rows(q_rows, r0, r1)].float())

    def colsum(self, work, p, idx, off, out_f32):
        for t, r0, r1 in self._items("colsum", work, p.shape[0], False):
            a = self._active(idx, off, t)
            out_f32.index_add_(0, a, p[r0:r1, : a.numel()].float().sum(0))


def reference_grads(tensors, masks, ids, activation, mask_bias, dy):
    leaves = [t.detach().double().requires_grad_(True) for t in tensors]
    y = masked_ffn_reference(*leaves, masks.indices, masks.offsets, ids, activation, mask_bias)
    return y.detach(), torch.autograd.grad(y, leaves, dy.double())


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("mask_bias", [False, True], ids=["bias", "mask_bias"])
@pytest.mark.parametrize("homogeneous", [False, True], ids=["mixed", "one_task"])
def test_backend_logic_matches_reference_on_cpu(activation, mask_bias, homogeneous):
    # 7 tasks (some empty, some full masks via random_masks), 150 tokens: several row tiles
    # per task, shared neurons between tasks, d/f not multiples of any tile.
    tensors, masks, ids = random_problem(3, 150, 20, 70, 7, dtype=torch.float32, d_out=13)
    task = 5 if homogeneous else -1
    full_ids = torch.full_like(ids, 5) if homogeneous else ids
    task_ids = torch.empty(0, dtype=torch.long) if homogeneous else ids
    k = EmulatedKernels()
    y, z = cb.forward(*tensors, masks.indices, masks.offsets, task_ids, task, activation, mask_bias, k)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    got = cb.backward(dy, *tensors, masks.indices, masks.offsets, task_ids, task, z, activation, mask_bias, k)
    y_ref, g_ref = reference_grads(tensors, masks, full_ids, activation, mask_bias, dy)
    assert_close("y", y, y_ref, 2e-5)
    for name, g, gr, t in zip(NAMES, got, g_ref, tensors):
        assert g.dtype == t.dtype and g.shape == t.shape
        assert_close(f"d{name}", g, gr, 2e-5)
    assert k.calls == ["fc1", "fc2", "dz", "fc2", "wgrad", "wgrad", "colsum"]


def test_backend_logic_bf16_and_empty_inputs_on_cpu():
    tensors, masks, ids = random_problem(4, 90, 24, 40, 5, dtype=torch.bfloat16)
    k = EmulatedKernels()
    y, z = cb.forward(*tensors, masks.indices, masks.offsets, ids, -1, "gelu", False, k)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    got = cb.backward(dy, *tensors, masks.indices, masks.offsets, ids, -1, z, "gelu", False, k)
    y_ref, g_ref = reference_grads(tensors, masks, ids, "gelu", False, dy)
    assert y.dtype == torch.bfloat16
    assert_close("y", y, y_ref, 3e-2)
    for name, g, gr in zip(NAMES, got, g_ref):
        assert_close(f"d{name}", g, gr, 3e-2)
    # no tokens at all: y [0, d], gradients zero (db1 / dw2 inactive terms vanish with dY = 0)
    x0 = tensors[0][:0]
    y0, z0 = cb.forward(x0, *tensors[1:], masks.indices, masks.offsets, ids[:0], -1, "relu", False, k)
    assert y0.shape == (0, tensors[3].shape[0]) and z0.shape == (0, 40)
    g0 = cb.backward(y0, x0, *tensors[1:], masks.indices, masks.offsets, ids[:0], -1, z0, "relu", False, k)
    assert g0[0].shape == x0.shape and all(int(torch.count_nonzero(g)) == 0 for g in g0[1:])


@pytest.mark.parametrize("homogeneous", [False, True], ids=["mixed", "one_task"])
def test_count_logic_matches_reference_on_cpu(homogeneous):
    tensors, _, ids = random_problem(5, 140, 16, 50, 4, dtype=torch.float32)
    x, w1, b1 = tensors[:3]
    valid = torch.rand(140, generator=torch.Generator().manual_seed(3)) > 0.3
    task = 2 if homogeneous else -1
    task_ids = torch.empty(0, dtype=torch.long) if homogeneous else ids
    full_ids = torch.full_like(ids, 2) if homogeneous else ids
    counts = torch.full((4, 50), 7, dtype=torch.long)  # counts accumulate onto what is there
    want_counts = counts.clone()
    h_ref = fc1_act_count_reference(x, w1, b1, want_counts, full_ids, valid, "gelu")
    h = cb.count(x, w1, b1, counts, task_ids, task, valid, "gelu", True, EmulatedKernels())
    assert torch.equal(counts, want_counts)
    assert_close("h", h, h_ref, 2e-5)
    h_none = cb.count(x, w1, b1, counts, task_ids, task, None, "relu", False, EmulatedKernels())
    assert h_none.shape == (0, 50)


# ---- the real kernels on a GPU ----------------------------------------------------------------
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 1e-2}
GPU_SHAPE = (1000, 256, 1000, 200)  # n, d, f, d_out: several tiles, none a multiple of 64


def check_gpu(tensors, masks, task_ids, activation, mask_bias, tol):
    for name, got, want in outputs_vs_reference("cuda", tensors, masks, task_ids, activation, mask_bias):
        assert_close(name, got, want, tol)


def gpu_problem(seed, dtype, num_tasks=9, shape=GPU_SHAPE, density=None):
    n, d, f, d_out = shape
    tensors, masks, ids = random_problem(seed, n, d, f, num_tasks, dtype=dtype, density=density, d_out=d_out)
    return [t.cuda() for t in tensors], masks, ids.cuda()


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("mask_bias", [False, True], ids=["bias", "mask_bias"])
def test_gpu_mixed_tasks_match_reference(dtype, activation, mask_bias):
    tensors, masks, ids = gpu_problem(11, dtype)  # tasks 3 and 5 of 9: an empty and a full mask
    check_gpu(tensors, masks, ids, activation, mask_bias, TOL[dtype])


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("density", [0.0, 1.0, 0.3], ids=["empty", "full", "sparse"])
def test_gpu_one_task_batches(dtype, density):
    tensors, masks, _ = gpu_problem(12, dtype, num_tasks=3, density=density)
    check_gpu(tensors, masks, 1, "relu", False, TOL[dtype])


@needs_gpu
@pytest.mark.parametrize("shape", [(1, 8, 16, 8), (65, 33, 129, 17), (300, 5, 7, 3)], ids=["one", "odd", "tiny_dims"])
def test_gpu_small_and_odd_shapes(shape):
    tensors, masks, ids = gpu_problem(13, torch.float32, num_tasks=4, shape=shape)
    check_gpu(tensors, masks, ids, "gelu", False, TOL[torch.float32])


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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_fc1_act_count(dtype):
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
def test_gpu_errors_are_python_exceptions():
    mod = cb._load()
    assert mod.device_count() >= 1
    with pytest.raises(ValueError, match="device 4096 out of range"):
        mod.gathered_colsum(dtype=0, device=4096, stream=0, work=0, num_work=1, max_cols=8, p=0, ldp=8, idx=0,
                            off=0, out=0)
    with pytest.raises(ValueError, match="dtype code"):
        mod.gathered_colsum(dtype=7, device=0, stream=0, work=1, num_work=1, max_cols=8, p=1, ldp=8, idx=1,
                            off=1, out=1)
    (x, w1, b1, w2, b2), masks, ids = gpu_problem(15, torch.float64, shape=(16, 8, 16, 8))
    with pytest.raises(TypeError, match="x: the cuda backend supports float32, float16 and bfloat16"):
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
