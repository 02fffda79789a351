"""One plan per call, no host syncs, the grouped (mixed-batch) path, the mask-multiply backend
and `auto` routing (docs/design.md §3)."""
import os
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import neuronspec
from neuronspec.ops import TaskMasks, fc1_act_count, masked_ffn
from neuronspec.ops import routing, torch_backend
from neuronspec.ops.plan import make_plan, mask_tables

from _ffn_cases import outputs_vs_reference, random_masks, random_problem

PACKAGE_DIR = os.path.dirname(neuronspec.__file__)

# aten ops that read device values on the host (a sync on a GPU)
SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::unique", "aten::_unique", "aten::_unique2",
           "aten::unique_dim", "aten::unique_consecutive", "aten::bincount", "aten::masked_select",
           "aten::item", "aten::equal", "aten::is_nonzero"}
NO_KERNEL = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty", "aten::detach",
             "aten::lift_fresh", "aten::_assert_async"}  # allocation / bookkeeping, or device-side only
HOST_READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__")


class SyncAudit(TorchDispatchMode):
    """Records aten ops that sync, boolean indexing, repeat_interleave without output_size,
    and counts kernel-launching ops (views and allocations excluded)."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []
        self.launches: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in SYNCING:
            self.syncs.append(name)
        if name in ("aten::index", "aten::index_put", "aten::index_put_"):
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()) if i is not None):
                self.syncs.append(f"{name} with a boolean mask")
        if name == "aten::repeat_interleave" and kwargs.get("output_size") is None:
            self.syncs.append("repeat_interleave without output_size")
        if not func.is_view and name not in NO_KERNEL:
            self.launches.append(name)
        return func(*args, **kwargs)


class HostReads:
    """Patches Tensor methods that read values on the host without the dispatcher (tolist,
    item, bool(), int(), ...) and records calls made from neuronspec's own code."""

    def __init__(self):
        self.calls: list[str] = []

    def __enter__(self):
        self.saved = {m: getattr(torch.Tensor, m) for m in HOST_READS}
        for m, fn in self.saved.items():
            setattr(torch.Tensor, m, self._wrap(m, fn))
        return self

    def _wrap(self, method, fn):
        def wrapper(t, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE_DIR):
                self.calls.append(f"Tensor.{method} from {os.path.relpath(caller, PACKAGE_DIR)}")
            return fn(t, *a, **k)
        return wrapper

    def __exit__(self, *exc):
        for m, fn in self.saved.items():
            setattr(torch.Tensor, m, fn)


def _leaves(tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def audit_calls(tensors, masks, make_ids, backend, activation="relu", mask_bias=False, calls=2):
    """Audit forward + backward `calls` times (fresh task ids each time, as in training) after
    one warm-up call that builds the masks' tables; returns (syncs, launches of the last call)."""
    dy = torch.ones(tensors[0].shape[0], tensors[3].shape[0], dtype=tensors[0].dtype)

    def once(leaves, ids):
        y = masked_ffn(*leaves, masks, ids, activation, mask_bias, backend=backend)
        torch.autograd.grad(y, leaves, dy)
    once(_leaves(tensors), make_ids())
    syncs = []
    for _ in range(calls):
        leaves, ids = _leaves(tensors), make_ids()
        with HostReads() as reads, SyncAudit() as mode:
            once(leaves, ids)
        syncs += reads.calls + mode.syncs
    return syncs, mode.launches


@pytest.fixture
def grouped(monkeypatch):
    """Mixed batches on the torch backend take the GPU's path (grouped_mm, no host sync)."""
    monkeypatch.setattr(torch_backend, "GROUPED_ON_CPU", True)


@pytest.mark.parametrize("backend", ["torch", "maskmul", "auto"])
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("mask_bias", [False, True])
def test_masked_ffn_runs_without_host_syncs(grouped, backend, mixed, mask_bias):
    tensors, masks, _ = random_problem(0, 96, 32, 64, 4, dtype=torch.float32, density=0.5)
    n = tensors[0].shape[0]
    make_ids = (lambda: torch.randint(0, 4, (n,))) if mixed else (lambda: 2)
    syncs, launches = audit_calls(tensors, masks, make_ids, backend, mask_bias=mask_bias)
    assert syncs == []
    # launched ops per forward + backward, stated in docs/design.md §3
    bound = {("torch", False): 26, ("torch", True): 44, ("maskmul", False): 14, ("maskmul", True): 19}
    # auto on CPU: homogeneous → torch; mixed, 96 tokens, 4 tasks at p ≈ 0.5 → 12 rows saved per task → maskmul
    key = ("torch" if backend == "auto" and not mixed else "maskmul" if backend == "auto" else backend, mixed)
    assert len(launches) <= bound[key], launches


def test_launch_counts_are_reported(grouped, capsys):
    """Print the per-call op counts (homogeneous and mixed, relu, mask_bias False) for the docs."""
    tensors, masks, _ = random_problem(0, 96, 32, 64, 4, dtype=torch.float32, density=0.5)
    for backend in ("torch", "maskmul"):
        for mixed in (False, True):
            make_ids = (lambda: torch.randint(0, 4, (96,))) if mixed else (lambda: 2)
            _, launches = audit_calls(tensors, masks, make_ids, backend, calls=1)
            print(f"{backend} {'mixed' if mixed else 'homogeneous'}: {len(launches)} ops: {' '.join(launches)}")
    assert "torch homogeneous" in capsys.readouterr().out


def test_counting_runs_without_host_syncs():
    (x, w1, b1, *_), _, _ = random_problem(1, 50, 16, 24, 3, dtype=torch.float32)
    counts = torch.zeros(3, 24, dtype=torch.long)
    for ids in (lambda: torch.randint(0, 3, (50,)), lambda: 1):
        for _ in range(2):
            with HostReads() as reads, SyncAudit() as mode:
                fc1_act_count(x, w1, b1, counts, ids(), valid=torch.rand(50) > 0.2, return_output=False)
            assert reads.calls + mode.syncs == []


def test_audit_catches_syncs():
    """The audit is not vacuous: the reference backend (torch.unique + boolean masks) trips it."""
    tensors, masks, _ = random_problem(0, 20, 8, 16, 3, dtype=torch.float32)
    syncs, _ = audit_calls(tensors, masks, lambda: torch.randint(0, 3, (20,)), "reference")
    assert any("unique" in s or "nonzero" in s or "tolist" in s for s in syncs), syncs


# ---- the grouped path (mixed batches through grouped_mm) ------------------------------------------
@pytest.mark.parametrize("seed", range(24))
def test_grouped_path_matches_reference_fp32(grouped, seed):
    """Aligned sizes in fp32 take torch.nn.functional.grouped_mm (the float64 cases of test_ops
    take its loop fallback): values and all five gradients against the float64 reference."""
    gen = torch.Generator().manual_seed(500 + seed)
    d, d_out = (8 * int(torch.randint(1, 6, (), generator=gen)) for _ in range(2))
    n, f = int(torch.randint(1, 120, (), generator=gen)), int(torch.randint(1, 70, (), generator=gen))
    num_tasks = int(torch.randint(1, 12, (), generator=gen))
    tensors, masks, ids = random_problem(seed, n, d, f, num_tasks, dtype=torch.float32, d_out=d_out)
    activation, mask_bias = ("relu", "gelu")[seed % 2], bool(seed // 2 % 2)
    for name, got, want in outputs_vs_reference("torch", tensors, masks, ids, activation, mask_bias):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_grouped_path_uses_grouped_mm(grouped, monkeypatch):
    import torch.nn.functional as F
    calls = []
    real = F.grouped_mm
    monkeypatch.setattr(F, "grouped_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    tensors, masks, ids = random_problem(3, 40, 16, 32, 3, dtype=torch.float32)
    x, w1, b1, w2, b2 = _leaves(tensors)
    masked_ffn(x, w1, b1, w2, b2, masks, ids, backend="torch").sum().backward()
    assert len(calls) == 6  # fc1, fc2, dH, dX, dW1, dW2


def test_plan_routing_is_stable_and_complete():
    ids = torch.tensor([2, 0, 2, 1, 0, 2, 2])
    masks = TaskMasks.from_indices([[0], [1, 2], [3]], 4)
    plan = make_plan(mask_tables(masks.indices, masks.offsets, 4), ids, -1, 7)
    assert plan.order.tolist() == [1, 4, 3, 0, 2, 5, 6]
    assert plan.starts.tolist() == [0, 2, 3, 7] and plan.starts.dtype == torch.int32
    idx, valid, _ = plan.tables.padded
    assert idx.shape == (3, 8) and valid.sum(1).tolist() == [1, 2, 1] and idx[1, :2].tolist() == [1, 2]


# ---- the mask-multiply backend -----------------------------------------------------------------
@pytest.mark.parametrize("seed", range(16))
def test_maskmul_matches_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    n, d, f = (int(torch.randint(lo, hi, (), generator=gen)) for lo, hi in ((1, 40), (1, 20), (1, 30)))
    tensors, masks, ids = random_problem(seed, n, d, f, 1 + seed % 6, d_out=d + seed % 2)
    task_ids = int(ids[0]) if seed % 4 == 0 else ids
    for name, got, want in outputs_vs_reference("maskmul", tensors, masks, task_ids, ("relu", "gelu")[seed % 2],
                                                bool(seed // 2 % 2)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_maskmul_gradcheck(activation):
    tensors, masks, ids = random_problem(7, 9, 5, 12, 3)
    for mask_bias in (False, True):
        fn = lambda *t: masked_ffn(*t, masks, ids, activation, mask_bias, backend="maskmul")  # noqa: E731
        assert torch.autograd.gradcheck(fn, _leaves(tensors))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2)])
def test_maskmul_working_dtypes(dtype, tol):
    tensors, masks, ids = random_problem(3, 64, 32, 96, 4, dtype=dtype)
    for name, got, want in outputs_vs_reference("maskmul", tensors, masks, ids, "gelu", False):
        assert (got - want).abs().max() <= tol * want.abs().max().clamp_min(1.0) * 4, name


# ---- auto routing ------------------------------------------------------------------------------
def test_prefer_gather_follows_the_measured_regimes():
    big, llm = (1024, 4096), (4096, 14336)
    assert routing.prefer_gather("cuda", False, 0.25, *llm, 8192, 1)
    assert not routing.prefer_gather("cuda", True, 0.25, *llm, 8192, 8)  # mixed: grouped kernels lost
    assert not routing.prefer_gather("cuda", False, 0.25, *big, 8192, 1)  # host-bound at this size
    assert not routing.prefer_gather("cuda", False, 0.75, *llm, 8192, 1)  # not measured faster
    assert routing.prefer_gather("cpu", False, 0.95, 256, 1024, 40, 16)  # homogeneous: always
    assert routing.prefer_gather("cpu", True, 0.5, 256, 1024, 2048, 16)  # 64 rows saved per task
    assert not routing.prefer_gather("cpu", True, 0.9, 256, 1024, 2048, 16)  # 12.8
    assert not routing.prefer_gather("cpu", True, 0.9, 512, 2048, 4096, 8)  # 51: measured 0.91x vs 1.00x


def test_auto_takes_both_paths_and_matches_the_reference():
    """auto picks per call (homogeneous → gather, mixed with few rows saved per task → maskmul
    on CPU); either way the values and gradients are the reference's."""
    gen = torch.Generator().manual_seed(0)
    tensors, _, ids = random_problem(2, 80, 16, 40, 3, dtype=torch.float64)
    masks = random_masks(gen, 3, 40, 0.9)
    tables = mask_tables(masks.indices, masks.offsets, 40)
    for task_ids, want_backend in ((1, "torch"), (ids, "maskmul")):
        task = task_ids if isinstance(task_ids, int) else -1
        assert routing.auto_backend(tables, task, tensors[0]) == want_backend
        for name, got, want in outputs_vs_reference("auto", tensors, masks, task_ids, "relu", False):
            torch.testing.assert_close(got, want, msg=lambda m: f"{name}: {m}")


# ---- on a GPU ----------------------------------------------------------------------------------
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_gpu
@pytest.mark.parametrize("backend", ["torch", "maskmul", "auto"])
@pytest.mark.parametrize("mixed", [False, True])
def test_no_syncs_on_gpu(backend, mixed):
    """forward + backward under torch.cuda.set_sync_debug_mode("error"), fresh ids per call."""
    tensors, masks, _ = random_problem(0, 512, 64, 256, 4, dtype=torch.bfloat16, density=0.5)
    tensors = [t.cuda() for t in tensors]
    masks = masks.to("cuda")
    dy = torch.randn(512, 64, device="cuda", dtype=torch.bfloat16)

    def once():
        leaves = _leaves(tensors)
        ids = torch.randint(0, 4, (512,), device="cuda") if mixed else 1
        y = masked_ffn(*leaves, masks, ids, backend=backend)
        torch.autograd.grad(y, leaves, dy)
    once()  # builds the masks' tables (one host read per masks)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        once()
        once()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_gpu
@pytest.mark.parametrize("mask_bias", [False, True])
def test_grouped_path_on_gpu_matches_reference(mask_bias):
    tensors, masks, ids = random_problem(4, 300, 64, 128, 5, dtype=torch.bfloat16)
    tensors, ids = [t.cuda() for t in tensors], ids.cuda()
    for name, got, want in outputs_vs_reference("torch", tensors, masks, ids, "gelu", mask_bias):
        assert (got - want).abs().max() <= 0.2 * want.abs().max().clamp_min(1.0), name
