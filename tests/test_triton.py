"""`triton` backend vs the plain-torch reference (docs/design.md §2-3).

On CPU the kernels run under TRITON_INTERPRET=1 (set by conftest.py) at small shapes; the same
tests run at larger shapes on CUDA when a GPU is present (CUDA cases skip cleanly otherwise).
"""
import pytest
import torch

from neuronspec.ops import TaskMasks, fc1_act_count, fc1_act_count_reference, masked_ffn
from neuronspec.ops import registry

from _ffn_cases import grads, outputs_vs_reference, random_problem

triton_backend = pytest.importorskip("neuronspec.ops.triton_backend")

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(
        triton_backend.available(torch.device("cpu")) is not None, reason="needs TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]
# (n, d, f, d_out) per device: small under the interpreter, several tiles in every dimension.
SHAPES = {"cpu": (64, 48, 96, 40), "cuda": (1000, 256, 1024, 192)}
# max |error| / max(|ref|, 1) allowed, per dtype (bf16: the interpreter truncates when rounding)
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 3e-2}


def problem(device, seed, num_tasks=6, dtype=torch.float32, shape=None, density=None):
    n, d, f, d_out = shape or SHAPES[device]
    tensors, masks, ids = random_problem(seed, n, d, f, num_tasks, dtype=dtype, density=density, d_out=d_out)
    return [t.to(device) for t in tensors], masks, ids.to(device)


def check(tensors, masks, task_ids, activation, mask_bias, dtype_tol):
    """Output and the five gradients through masked_ffn(backend="triton") vs the reference."""
    for name, got, want in outputs_vs_reference("triton", tensors, masks, task_ids, activation, mask_bias):
        err = (got - want).abs().max().item() if got.numel() else 0.0
        scale = max(want.abs().max().item() if want.numel() else 0.0, 1.0)
        assert err <= dtype_tol * scale, f"{name}: max error {err:.3g} > {dtype_tol:g} × {scale:.3g}"


# ---- masked FFN ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("mask_bias", [False, True], ids=["bias", "mask_bias"])
def test_mixed_tasks_match_reference(device, dtype, activation, mask_bias):
    """Unsorted task ids; tasks 3 (empty mask) and 5 (full mask) present; task 4 has no tokens."""
    tensors, masks, ids = problem(device, seed=11, dtype=dtype)
    ids = torch.where(ids == 4, torch.zeros_like(ids), ids)
    ids[:3] = torch.tensor([3, 5, 3], device=device)
    assert masks.sizes()[3] == 0 and masks.sizes()[5] == masks.num_neurons
    check(tensors, masks, ids, activation, mask_bias, TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_cached_tables_follow_in_place_changes(device):
    """The launcher caches tables derived from the task ids and the masks per tensor object;
    ids or mask indices changed in place (same objects) must not reuse stale tables."""
    tensors, masks, ids = problem(device, seed=13)
    masks = masks.to(device)
    masked_ffn(*tensors, masks, ids, backend="triton")  # fills the caches
    ids.copy_(ids.flip(0))
    check(tensors, masks, ids, "relu", False, TOL[torch.float32])
    k = masks.offsets[1].item()  # task 0 gets another set of k neurons, in place
    new = torch.randperm(masks.num_neurons, generator=torch.Generator().manual_seed(0))[:k].sort().values
    masks.indices[:k] = new.to(masks.indices)
    check(tensors, masks, ids, "relu", False, TOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("task", [0, 3, 5], ids=["random", "empty", "full"])
def test_homogeneous_batch_float64(device, task):
    """One int task for the whole batch (no sort); fp64 through the kernels under the interpreter.
    On a GPU the backend's CAPS leave fp64 out: a clear error, not the torch backend's math."""
    tensors, masks, _ = problem(device, seed=5, dtype=torch.float64)
    if device == "cuda":
        with pytest.raises(ValueError, match=r"backend 'triton' takes \['float16', 'bfloat16', 'float32'\] on cuda"):
            masked_ffn(*tensors, masks.to(device), task, backend="triton")
        return
    check(tensors, masks, task, ("relu", "gelu")[task % 2], task == 5, TOL[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [0, 1])
def test_zero_and_one_token(device, n):
    tensors, masks, ids = problem(device, seed=2, shape=(n, 24, 40, 16))
    if n == 1:
        return check(tensors, masks, ids, "gelu", False, TOL[torch.float32])
    # the oracle has no graph for an empty batch: every gradient is a sum over zero rows
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    y = masked_ffn(*leaves, masks.to(device), ids, "gelu", False, backend="triton")
    assert y.shape == (0, 16)
    y.sum().backward()
    assert all(l.grad is not None and not l.grad.any() for l in leaves)


@pytest.mark.parametrize("device", DEVICES)
def test_shared_neurons_accumulate(device):
    """Every task uses the same dense-ish neuron set: dW1/dW2 rows get one contribution per task."""
    n, d, f, d_out = SHAPES[device]
    tensors, _, ids = problem(device, seed=3, num_tasks=3)
    common = sorted(range(0, f, 3))
    masks = TaskMasks.from_indices([common, common, common[::2]], f)
    check(tensors, masks, ids, "relu", False, TOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
def test_float16(device):
    tensors, masks, ids = problem(device, seed=8, dtype=torch.float16)
    check(tensors, masks, ids, "gelu", False, 1e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask_bias", [False, True])
def test_gradcheck_float64(device, mask_bias):
    if device == "cuda":
        pytest.skip("fp64 is not in the triton backend's CAPS on CUDA (test_homogeneous_batch_float64)")
    tensors, masks, ids = problem(device, seed=7, num_tasks=3, dtype=torch.float64, shape=(6, 5, 12, 4))
    masks = masks.to(device)
    leaves = [t.clone().requires_grad_(True) for t in tensors]

    def fn(*ts):
        return masked_ffn(*ts, masks, ids, "gelu", mask_bias, backend="triton")

    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


def test_opcheck():
    """Schema, fake kernels, autograd registration and AOT dispatch of both ops on the triton backend."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if triton_backend.available(torch.device(dev)) is not None:
        pytest.skip(triton_backend.available(torch.device(dev)))
    tensors, masks, ids = problem(dev, seed=4, num_tasks=3, shape=(8, 16, 32, 16))
    masks = masks.to(dev)
    x, w1, b1, w2, b2 = [t.requires_grad_(True) for t in tensors]
    for task_ids, task in ((ids, -1), (torch.empty(0, dtype=torch.long, device=dev), 2)):
        args = (x, w1, b1, w2, b2, None, None, masks.indices, masks.offsets, task_ids, task, "gelu", False, "triton")
        torch.library.opcheck(registry.masked_ffn_fwd_op, args)
    counts = torch.zeros(3, 32, dtype=torch.long, device=dev)
    valid = torch.rand(8, generator=torch.Generator().manual_seed(0)).to(dev) > 0.3
    args = (x.detach(), w1.detach(), b1.detach(), counts, ids, -1, valid, "relu", True, "triton")
    torch.library.opcheck(registry.fc1_act_count_op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile(device):
    tensors, masks, ids = problem(device, seed=12, num_tasks=3, shape=(16, 32, 48, 32))
    masks = masks.to(device)

    def fn(*ts):
        return masked_ffn(*ts, masks, ids, "relu", False, backend="triton")

    y, gs = grads(torch.compile(fn, backend="aot_eager", fullgraph=True), tensors)
    y_ref, gs_ref = grads(fn, tensors)
    for got, want in zip([y] + gs, [y_ref] + gs_ref):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---- fused counting ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("mode", ["per_token", "one_task", "count_only"])
def test_fc1_act_count_matches_reference(device, activation, mode):
    n, d, f, _ = SHAPES[device]
    tensors, _, ids = problem(device, seed=9, num_tasks=5)
    x, w1, b1 = tensors[:3]
    valid = torch.rand(n, generator=torch.Generator().manual_seed(1)).to(device) > 0.25
    start = torch.randint(0, 50, (5, f), generator=torch.Generator().manual_seed(2)).to(device)
    task_ids = 2 if mode == "one_task" else ids
    counts = start.clone()
    h = fc1_act_count(x, w1, b1, counts, task_ids, valid, activation, return_output=mode != "count_only",
                      backend="triton")
    want_counts = start.clone()
    ref_ids = torch.full((n,), 2, device=device) if mode == "one_task" else ids
    h_ref = fc1_act_count_reference(x.double(), w1.double(), b1.double(), want_counts, ref_ids, valid, activation)
    assert torch.equal(counts, want_counts)
    if mode == "count_only":
        assert h is None
    else:
        torch.testing.assert_close(h, h_ref.float(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_fc1_act_count_bf16_without_padding(device):
    n, d, f, _ = SHAPES[device]
    tensors, _, ids = problem(device, seed=10, num_tasks=3, dtype=torch.bfloat16)
    x, w1, b1 = tensors[:3]
    counts = torch.zeros(3, f, dtype=torch.int64, device=device)
    h = fc1_act_count(x, w1, b1, counts, ids, None, "gelu", backend="triton")
    want = torch.zeros_like(counts)
    h_ref = fc1_act_count_reference(x.double(), w1.double(), b1.double(), want, ids, None, "gelu")
    assert (h.double() - h_ref).abs().max().item() <= 3e-2 * max(h_ref.abs().max().item(), 1.0)
    # Z is accumulated in fp32 from bf16 inputs, the oracle in fp64: signs agree except at |Z| ≈ 0.
    assert (counts - want).abs().sum().item() <= max(2, counts.sum().item() // 1000)
    assert counts.sum().item() > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("write_output", [True, False])
def test_fc1_act_count_survives_autotuning(device, write_output, monkeypatch):
    """The first call per autotune key runs the counting kernel once per config and then again
    (here: two configs, three runs each, through triton.autotune's own benchmarking hooks with
    the backend's AUTOTUNE arguments): Z and the counts must come out as from one run (GELU,
    whose second application changes H)."""
    import triton

    from neuronspec.ops import triton_count

    runs = []

    def bench(kernel_call, quantiles):
        for _ in range(3):
            kernel_call()
        runs.append(3)
        return [float(len(runs))] * len(quantiles)

    configs = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=1),
               triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=1)]
    tuned = triton.autotune(configs, do_bench=bench, **triton_count.AUTOTUNE)(triton_count.act_count_kernel)
    monkeypatch.setattr(triton_backend, "_act_count", tuned)
    n, d, f, _ = SHAPES[device]
    tensors, _, ids = problem(device, seed=11, num_tasks=3)
    x, w1, b1 = tensors[:3]
    counts = torch.zeros(3, f, dtype=torch.int64, device=device)
    h = fc1_act_count(x, w1, b1, counts, ids, None, "gelu", return_output=write_output, backend="triton")
    assert runs == [3, 3]  # both configs were benchmarked
    want = torch.zeros_like(counts)
    h_ref = fc1_act_count_reference(x.double(), w1.double(), b1.double(), want, ids, None, "gelu")
    assert torch.equal(counts, want)
    if write_output:
        torch.testing.assert_close(h, h_ref.float(), atol=2e-5, rtol=1e-5)


# ---- availability and dispatch ----------------------------------------------------------------
def test_available_reports_interpreter_state():
    reason = triton_backend.available(torch.device("cpu"))
    assert (reason is None) == triton_backend.INTERPRETED
    if reason is not None:
        assert "TRITON_INTERPRET" in reason


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_is_default_on_cuda(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    assert registry.resolve_backend(None, torch.device("cuda")) == "auto"


# ---- compiled for the GPU (no GPU needed) -------------------------------------------------------
def test_kernels_compile_for_sm90():
    """Every kernel specialization goes through Triton's real pipeline to an sm_90 cubin (the
    interpreter accepts code the compiler rejects) and its K loop is pipelined, its atomics
    relaxed, nothing spills; bf16, first tile config (tests/_triton_sm90.py, which first shows
    that its pipelining check rejects an unpipelined kernel)."""
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "_triton_sm90.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, script, "--dtypes", "bf16"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "self-check: an index load in the K loop is rejected" in proc.stdout
    assert "0 failed" in proc.stdout and proc.stdout.count(": ok (") >= 30
