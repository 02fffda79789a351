"""One plan per call, no host syncs, the grouped (mixed-batch) path, the mask-multiply backend
and `auto` routing (docs/design.md §3)."""
import pytest
import torch

import neuronspec.ops
from neuronspec.ops import TaskMasks, fc1_act_count, masked_ffn
from neuronspec.ops import routing, torch_backend
from neuronspec.ops.registry import available_backends
from neuronspec.ops.plan import make_plan, mask_tables

from _ffn_cases import outputs_vs_reference, random_masks, random_problem
from _sync_audit import HostReads, SyncAudit

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


IDS = {"homogeneous": lambda n: 2, "uniform": lambda n: torch.tensor(2), "mixed": lambda n: torch.randint(0, 4, (n,))}


@pytest.mark.parametrize("backend", ["torch", "maskmul", "auto"])
@pytest.mark.parametrize("kind", list(IDS))
@pytest.mark.parametrize("mask_bias", [False, True])
def test_masked_ffn_runs_without_host_syncs(grouped, backend, kind, mask_bias):
    """Homogeneous (host int), uniform (0-dim device tensor) and mixed calls, a fresh ids
    tensor per call."""
    tensors, masks, _ = random_problem(0, 96, 32, 64, 4, dtype=torch.float32, density=0.5)
    n = tensors[0].shape[0]
    syncs, launches = audit_calls(tensors, masks, lambda: IDS[kind](n), backend, mask_bias=mask_bias)
    assert syncs == []
    # launched ops per forward + backward, stated in docs/design.md §3
    bound = {("torch", "homogeneous"): 26, ("torch", "uniform"): 35, ("torch", "mixed"): 44,
             ("maskmul", "homogeneous"): 14, ("maskmul", "uniform"): 18, ("maskmul", "mixed"): 19}
    # auto on CPU: homogeneous/uniform → torch; mixed, 96 tokens, 4 tasks at p ≈ 0.5 → 12 rows saved per task → maskmul
    chosen = backend if backend != "auto" else "maskmul" if kind == "mixed" else "torch"
    assert len(launches) <= bound[chosen, kind], launches


def test_launch_counts_are_reported(grouped, capsys):
    """Print the per-call op counts (homogeneous and mixed, relu, mask_bias False) for the docs."""
    tensors, masks, _ = random_problem(0, 96, 32, 64, 4, dtype=torch.float32, density=0.5)
    for backend in ("torch", "maskmul"):
        for kind, make_ids in IDS.items():
            _, launches = audit_calls(tensors, masks, lambda: make_ids(96), backend, calls=1)
            print(f"{backend} {kind}: {len(launches)} ops: {' '.join(launches)}")
    assert "torch homogeneous" in capsys.readouterr().out


def test_counting_runs_without_host_syncs():
    (x, w1, b1, *_), _, _ = random_problem(1, 50, 16, 24, 3, dtype=torch.float32)
    counts = torch.zeros(3, 24, dtype=torch.long)
    for ids in (lambda: torch.randint(0, 3, (50,)), lambda: 1, lambda: torch.tensor(2)):
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


def test_memo_keeps_live_tables_and_drops_dead_ones():
    """The memo never evicts the tables of live masks (a captured step may need any of them; the
    memo once cleared itself at 256 entries, so the next call rebuilt them, inside a capture if
    one ran); entries of masks that are gone are dropped."""
    from neuronspec.ops import memo

    live = [TaskMasks.from_dense(torch.rand(2, 16, generator=torch.Generator().manual_seed(i)) < 0.5)
            for i in range(memo.PURGE_AT + 44)]
    tables = [mask_tables(m.indices, m.offsets, 16) for m in live]
    assert all(mask_tables(m.indices, m.offsets, 16) is t for m, t in zip(live, tables))
    n = len(memo._MEMO)
    del live[:100], tables[:100]
    mask_tables(*(lambda m: (m.indices, m.offsets))(TaskMasks.from_dense(torch.ones(2, 16, dtype=torch.bool))), 16)
    assert len(memo._MEMO) <= n + 1 - 100


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


# ---- UNIFORM calls: one task for every token, its id a 0-dim device tensor ---------------------------
CPU_BACKENDS = [b for b in ("torch", "maskmul", "reference", "triton", "auto") if b in available_backends("cpu") + ["auto"]]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("mask_bias", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_uniform_task_matches_the_reference(backend, activation, mask_bias, seed):
    """Every task (empty, full, and widths below the padded width) as a 0-dim tensor: output
    and all five gradients equal the reference's (float64)."""
    tensors, masks, _ = random_problem(seed, 1 + 17 * seed, 8, 21, 7, dtype=torch.float64)
    assert mask_tables(masks.indices, masks.offsets, 21).has_pads
    for t in range(masks.num_tasks):
        for name, got, want in outputs_vs_reference(backend, tensors, masks, torch.tensor(t), activation, mask_bias):
            torch.testing.assert_close(got, want, msg=lambda m: f"task {t} {name}: {m}")


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_uniform_task_gradcheck(activation):
    tensors, masks, _ = random_problem(3, 6, 4, 10, 3, dtype=torch.float64, density=0.5)
    leaves = [t.requires_grad_(True) for t in tensors]
    torch.autograd.gradcheck(lambda *a: masked_ffn(*a, masks, torch.tensor(1), activation, backend="torch"), leaves)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.05), (torch.float32, 1e-4)])
def test_uniform_task_working_dtypes(dtype, tol):
    tensors, masks, _ = random_problem(5, 64, 32, 48, 5, dtype=dtype)
    for t in range(5):
        for name, got, want in outputs_vs_reference("torch", tensors, masks, torch.tensor(t), "gelu", False):
            assert (got - want).abs().max() <= tol * want.abs().max().clamp_min(1.0), (t, name)


def test_uniform_task_out_of_range_is_an_error():
    tensors, masks, _ = random_problem(0, 5, 4, 8, 3)
    for bad in (3, -1):
        with pytest.raises(ValueError, match=r"task_ids: ids must lie in \[0, 3\)"):
            masked_ffn(*tensors, masks, torch.tensor(bad), backend="torch")


def test_uniform_task_counts_like_an_int_task():
    (x, w1, b1, *_), _, _ = random_problem(1, 30, 8, 12, 3, dtype=torch.float32)
    valid = torch.rand(30) > 0.3
    got, want = torch.zeros(3, 12, dtype=torch.long), torch.zeros(3, 12, dtype=torch.long)
    h = fc1_act_count(x, w1, b1, got, torch.tensor(2), valid=valid)
    h_want = fc1_act_count(x, w1, b1, want, 2, valid=valid)
    assert torch.equal(got, want) and torch.equal(h, h_want) and want[2].sum() > 0


# ---- gathered weights are never stale -----------------------------------------------------------------
@pytest.mark.parametrize("grad", [True, False])
def test_outputs_follow_weights_updated_by_fused_adam(grad):
    """Fused Adam changes parameters in place without bumping their version counter: the next
    call (training or validation) must still use the new weights (a cache keyed on versions
    once reused stale gathered rows)."""
    tensors, masks, _ = random_problem(0, 12, 8, 16, 2, dtype=torch.float32, density=0.5)
    params = [torch.nn.Parameter(t.clone()) for t in tensors[1:]]
    opt = torch.optim.Adam(params, lr=0.1, fused=True)
    for _ in range(3):
        with torch.set_grad_enabled(grad):
            y = masked_ffn(tensors[0], *params, masks, 1, backend="torch")
        want = masked_ffn(tensors[0], *params, masks, 1, backend="reference")
        torch.testing.assert_close(y, want)
        for p in params:
            p.grad = torch.randn_like(p)
        versions = [p._version for p in params]
        opt.step()
        assert [p._version for p in params] == versions  # why a version key cannot tell


def test_gathered_weights_are_reused_only_inside_the_scope(monkeypatch):
    tensors, masks, _ = random_problem(0, 12, 8, 16, 2, dtype=torch.float32, density=0.5)
    calls = []
    real = torch_backend._gather
    monkeypatch.setattr(torch_backend, "_gather", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        for _ in range(2):
            masked_ffn(*tensors, masks, 1, backend="torch")
        assert len(calls) == 2
        with neuronspec.ops.reuse_gathered_weights():
            for _ in range(3):
                masked_ffn(*tensors, masks, 1, backend="torch")
        assert len(calls) == 3 and not torch_backend._GATHERED


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
    for dtype in (torch.bfloat16, torch.float16):  # oneDNN: a new primitive per (N, width) shape
        assert not routing.prefer_gather("cpu", False, 0.25, 256, 1024, 800, 1, dtype)
        assert not routing.prefer_gather("cpu", True, 0.25, 512, 2048, 4096, 8, dtype)
    assert routing.prefer_gather("cpu", False, 0.25, 256, 1024, 800, 1, torch.float32)


def test_auto_takes_both_paths_and_matches_the_reference():
    """auto picks per call (homogeneous → gather, mixed with few rows saved per task → maskmul
    on CPU); either way the values and gradients are the reference's."""
    gen = torch.Generator().manual_seed(0)
    tensors, _, ids = random_problem(2, 80, 16, 40, 3, dtype=torch.float64)
    masks = random_masks(gen, 3, 40, 0.9)
    tables = mask_tables(masks.indices, masks.offsets, 40)
    assert routing.auto_candidates(tables, 1, tensors[0].bfloat16()) == ("maskmul",)  # CPU bf16: never gathers
    for task_ids, want_backend in ((1, "torch"), (ids, "maskmul")):
        task = task_ids if isinstance(task_ids, int) else -1
        assert routing.auto_candidates(tables, task, tensors[0]) == (want_backend,)
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
