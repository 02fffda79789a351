"""masked_ffn and fc1_act_count on the torch backend vs the plain-torch reference (docs/design.md §2)."""
import pytest
import torch
import torch.nn.functional as F

from neuronspec.ops import TaskMasks, fc1_act_count, fc1_act_count_reference, masked_ffn
from neuronspec.ops import registry

from _ffn_cases import grads, outputs_vs_reference, random_masks, random_problem

def op_fn(masks, task_ids, activation, mask_bias, backend="torch"):
    def fn(x, w1, b1, w2, b2):
        return masked_ffn(x, w1, b1, w2, b2, masks, task_ids, activation, mask_bias, backend=backend)
    return fn


def assert_match(tensors, masks, task_ids, activation, mask_bias, atol=1e-10, rtol=1e-8, backend="torch"):
    for name, got, want in outputs_vs_reference(backend, tensors, masks, task_ids, activation, mask_bias):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("seed", range(56))
def test_random_cases_float64(seed):
    gen = torch.Generator().manual_seed(1000 + seed)
    n, d, f = (int(torch.randint(lo, hi, (), generator=gen)) for lo, hi in ((1, 48), (1, 24), (1, 40)))
    num_tasks = int(torch.randint(1, 9, (), generator=gen))
    tensors, masks, ids = random_problem(seed, n, d, f, num_tasks, d_out=d + seed % 3)
    activation = ("relu", "gelu")[seed % 2]
    mask_bias = bool((seed // 2) % 2)
    task_ids = int(ids[0]) if seed % 5 == 0 else ids
    assert_match(tensors, masks, task_ids, activation, mask_bias)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("mask_bias", [False, True])
def test_gradcheck_float64(activation, mask_bias):
    tensors, masks, ids = random_problem(7, 9, 5, 12, 3)
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    assert torch.autograd.gradcheck(op_fn(masks, ids, activation, mask_bias), leaves)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_working_dtypes(dtype, tol, activation):
    tensors, masks, ids = random_problem(3, 64, 32, 96, 4, dtype=dtype)
    for mask_bias in (False, True):
        # Reference in float64 from the same (rounded) inputs.
        for name, got, want in outputs_vs_reference("torch", tensors, masks, ids, activation, mask_bias):
            assert (got - want).abs().max() <= tol * want.abs().max().clamp_min(1.0) * 4, name


def test_empty_mask_gives_constant_output():
    tensors, _, _ = random_problem(0, 10, 6, 8, 1)
    masks = TaskMasks.from_indices([[]], 8)
    x, w1, b1, w2, b2 = tensors
    y = masked_ffn(x, w1, b1, w2, b2, masks, 0)
    torch.testing.assert_close(y, (torch.relu(b1) @ w2.t() + b2).expand(10, -1))
    y0 = masked_ffn(x, w1, b1, w2, b2, masks, 0, mask_bias=True)
    torch.testing.assert_close(y0, b2.expand(10, -1))
    assert_match(tensors, masks, 0, "gelu", False)


def test_full_mask_equals_dense_ffn():
    tensors, _, _ = random_problem(1, 20, 6, 16, 2)
    x, w1, b1, w2, b2 = tensors
    masks = TaskMasks.full(2, 16)
    ids = torch.tensor([1, 0] * 10)
    dense = F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
    torch.testing.assert_close(masked_ffn(x, w1, b1, w2, b2, masks, ids, "gelu"), dense)


def test_task_without_tokens_and_single_token():
    tensors, masks, _ = random_problem(2, 1, 8, 16, 5)
    assert_match(tensors, masks, torch.tensor([3]), "relu", False)  # tasks 0,1,2,4 have no tokens


@pytest.mark.parametrize("num_tasks", [1, 64])
def test_many_tasks(num_tasks):
    tensors, masks, ids = random_problem(4, 200, 8, 32, num_tasks)
    assert_match(tensors, masks, ids, "relu", False)


def test_unsorted_ids_and_shared_neurons_accumulate():
    tensors, _, _ = random_problem(5, 12, 4, 6, 2)
    masks = TaskMasks.from_indices([[0, 1, 2, 3], [2, 3, 4]], 6)  # neurons 2, 3 shared
    assert_match(tensors, masks, torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1]), "gelu", False)


def test_non_contiguous_and_leading_dims():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 8, 5, generator=gen, dtype=torch.float64).transpose(0, 1)  # [8, 3, 5] strided
    w1 = torch.randn(5, 12, dtype=torch.float64).t()  # non-contiguous [12, 5]
    b1 = torch.randn(24, dtype=torch.float64)[::2]
    w2 = torch.randn(5, 12, dtype=torch.float64)
    b2 = torch.randn(5, dtype=torch.float64)
    masks = random_masks(gen, 3, 12)
    ids = torch.randint(0, 3, (3, 8), generator=gen).t()  # [8, 3], non-contiguous
    assert not x.is_contiguous() and not w1.is_contiguous() and not b1.is_contiguous()
    y = masked_ffn(x, w1, b1, w2, b2, masks, ids)
    assert y.shape == (8, 3, 5)
    assert_match([x, w1, b1, w2, b2], masks, ids, "relu", True)


def test_zero_tokens():
    tensors, masks, _ = random_problem(6, 4, 6, 8, 2)
    x = tensors[0][:0]
    y = masked_ffn(x, *tensors[1:], masks, torch.zeros(0, dtype=torch.long))
    assert y.shape == (0, 6)


def test_backends_agree_through_registry():
    tensors, masks, ids = random_problem(8, 30, 8, 16, 3)
    for mask_bias in (False, True):
        assert_match(tensors, masks, ids, "gelu", mask_bias, backend="reference")


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_opcheck(backend):
    tensors, masks, ids = random_problem(10, 12, 6, 10, 3)
    x, w1, b1, w2, b2 = [t.requires_grad_(True) for t in tensors]
    for task_ids, task in ((ids, -1), (torch.empty(0, dtype=torch.long), 2)):
        args = (x, w1, b1, w2, b2, None, None, masks.indices, masks.offsets, task_ids, task, "gelu", False, backend)
        torch.library.opcheck(registry.masked_ffn_fwd_op, args)
    counts = torch.zeros(3, 10, dtype=torch.long)
    valid = torch.rand(12) > 0.3
    args = (x.detach(), w1.detach(), b1.detach(), counts, ids, -1, valid, "relu", True, backend)
    torch.library.opcheck(registry.fc1_act_count_op, args)


def test_torch_compile():
    tensors, masks, ids = random_problem(11, 16, 8, 12, 3, dtype=torch.float32)
    fn = op_fn(masks, ids, "relu", False)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    y, gs = grads(compiled, tensors)
    y_ref, gs_ref = grads(fn, tensors)
    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(gs, gs_ref):
        torch.testing.assert_close(g, g_ref)


# ---- fused counting ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_fc1_act_count_matches_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    n, d, f, T = 3 + seed * 7, 6, 10 + seed, 1 + seed % 4
    x, w1, b1 = torch.randn(n, d, generator=gen), torch.randn(f, d, generator=gen), torch.randn(f, generator=gen)
    ids = torch.randint(0, T, (n,), generator=gen)
    valid = torch.rand(n, generator=gen) > 0.25
    activation = ("relu", "gelu")[seed % 2]
    counts = torch.randint(0, 5, (T, f), generator=gen)
    expected = counts.clone()
    h_ref = fc1_act_count_reference(x, w1, b1, expected, ids, valid, activation)
    h = fc1_act_count(x, w1, b1, counts, ids, valid, activation)
    torch.testing.assert_close(h, h_ref)
    assert torch.equal(counts, expected)
    # counting-only mode adds the same counts again and returns nothing
    assert fc1_act_count(x, w1, b1, counts, ids, valid, activation, return_output=False) is None
    fc1_act_count_reference(x, w1, b1, expected, ids, valid, activation)
    assert torch.equal(counts, expected)


def test_fc1_act_count_counts_exactly():
    x = torch.tensor([[1.0], [-1.0], [2.0], [3.0]])
    w1 = torch.tensor([[1.0], [-1.0]])
    b1 = torch.zeros(2)
    counts = torch.zeros(2, 2, dtype=torch.long)
    valid = torch.tensor([True, True, True, False])  # last token is padding
    fc1_act_count(x, w1, b1, counts, torch.tensor([0, 0, 1, 1]), valid)
    assert counts.tolist() == [[1, 1], [1, 0]]
    fc1_act_count(x, w1, b1, counts, 1, return_output=False)  # int task, no padding
    assert counts.tolist() == [[1, 1], [4, 1]]


def test_fc1_act_count_differentiable_output():
    x = torch.randn(5, 4, requires_grad=True)
    w1 = torch.randn(6, 4, requires_grad=True)
    b1 = torch.randn(6, requires_grad=True)
    counts = torch.zeros(1, 6, dtype=torch.long)
    h = fc1_act_count(x, w1, b1, counts, activation="gelu")
    h.sum().backward()
    x2, w12, b12 = (t.detach().clone().requires_grad_(True) for t in (x, w1, b1))
    F.gelu(F.linear(x2, w12, b12)).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(w1.grad, w12.grad)
    assert counts.sum() == (F.linear(x, w1, b1) > 0).sum()


def test_memo_rebuilds_after_in_place_change():
    """Backends cache tables per tensor object; an in-place change or another object rebuilds."""
    from neuronspec.ops.memo import memo

    t, calls = torch.tensor([1, 2]), []

    def make():
        calls.append(1)
        return t.tolist()

    assert memo(t, ("host",), make) == [1, 2] and memo(t, ("host",), make) == [1, 2] and len(calls) == 1
    t[0] = 5
    assert memo(t, ("host",), make) == [5, 2] and len(calls) == 2
    u = t.clone()
    assert memo(u, ("host",), lambda: "other") == "other"


def test_memo_keys_views_by_region_of_the_owner():
    """Views of one tensor share the memo when they cover the same memory the same way;
    a view of another region of the same tensor does not."""
    from neuronspec.ops.memo import memo

    base = torch.arange(6)
    a, b = base.view(2, 3).reshape(6), base.view(6)
    assert memo(a, ("sum",), lambda: int(a.sum())) == 15
    assert memo(b, ("sum",), lambda: -1) == 15  # same owner, same region and layout
    c = base[3:]
    assert memo(c, ("sum",), lambda: int(c.sum())) == 12
