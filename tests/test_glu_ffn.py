"""masked_glu_ffn and glu_act_count vs the plain-torch mask-multiply (docs/design.md §9)."""
import pytest
import torch
import torch.nn.functional as F

from neuronspec.ops import TaskMasks, glu_act_count, glu_ffn_reference, masked_glu_ffn

from _ffn_cases import random_masks

NAMES = ["x", "w_gate", "b_gate", "w_up", "b_up", "w_down", "b_down"]


def problem(seed, n, d, f, num_tasks, dtype=torch.float64, biases=True, gated=True, density=None, d_out=None):
    """[x, w_gate, b_gate, w_up, b_up, w_down, b_down] (None where absent), masks, unsorted ids [n]."""
    gen = torch.Generator().manual_seed(seed)
    d_out = d if d_out is None else d_out
    t = [torch.randn(n, d, generator=gen), torch.randn(f, d, generator=gen) / d**0.5,
         torch.randn(f, generator=gen) * 0.5, torch.randn(f, d, generator=gen) / d**0.5,
         torch.randn(f, generator=gen) * 0.5, torch.randn(d_out, f, generator=gen) / f**0.5,
         torch.randn(d_out, generator=gen) * 0.5]
    t = [v.to(dtype) for v in t]
    if not biases:
        t[2] = t[4] = t[6] = None
    if not gated:
        t[3] = t[4] = None
    masks = random_masks(gen, num_tasks, f, density)
    return t, masks, torch.randint(0, num_tasks, (n,), generator=gen)


def run_both(tensors, masks, task_ids, activation, mask_bias, seed=0):
    """[(name, op value, reference value)] for y and the gradient of every input present."""
    out = {}
    for backend in ("torch", "reference"):
        leaves = [None if v is None else v.detach().clone().requires_grad_(True) for v in tensors]
        y = masked_glu_ffn(*leaves, masks, task_ids, activation, mask_bias, backend=backend)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y.dtype)
        y.backward(dy)
        out[backend] = [("y", y.detach())] + [(n, v.grad if v.grad is not None else torch.zeros_like(v))
                                              for n, v in zip(NAMES, leaves) if v is not None]
    return [(n, a, b) for (n, a), (_, b) in zip(out["torch"], out["reference"])]


@pytest.mark.parametrize("seed", range(36))
def test_random_cases_float64(seed):
    gen = torch.Generator().manual_seed(500 + seed)
    n, d, f = (int(torch.randint(lo, hi, (), generator=gen)) for lo, hi in ((1, 40), (1, 20), (1, 36)))
    num_tasks = int(torch.randint(1, 12, (), generator=gen))
    tensors, masks, ids = problem(seed, n, d, f, num_tasks, biases=seed % 3 != 0, gated=seed % 4 != 1,
                                  d_out=d + seed % 3)
    activation = ("silu", "gelu", "relu")[seed % 3]
    mask_bias = bool((seed // 3) % 2)
    task_ids = int(ids[0]) if seed % 5 == 0 else ids
    for name, got, want in run_both(tensors, masks, task_ids, activation, mask_bias, seed):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
@pytest.mark.parametrize("mask_bias,biases,gated", [(False, True, True), (True, True, True),
                                                    (False, False, True), (False, True, False)])
def test_gradcheck_float64(activation, mask_bias, biases, gated):
    tensors, masks, ids = problem(7, 9, 5, 12, 3, biases=biases, gated=gated)
    present = [v.clone().requires_grad_(True) for v in tensors if v is not None]
    where = [i for i, v in enumerate(tensors) if v is not None]

    def fn(*vals):
        args = [None] * 7
        for i, v in zip(where, vals):
            args[i] = v
        return masked_glu_ffn(*args, masks, ids, activation, mask_bias)

    assert torch.autograd.gradcheck(fn, present)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
def test_working_dtypes(dtype, tol, activation):
    tensors, masks, ids = problem(3, 64, 32, 96, 4, dtype=dtype)
    wide = [v.double() for v in tensors]
    for task_ids in (ids, 2):
        for mask_bias in (False, True):
            got = masked_glu_ffn(*tensors, masks, task_ids, activation, mask_bias)
            ref_ids = ids if isinstance(task_ids, torch.Tensor) else torch.full_like(ids, task_ids)
            want = glu_ffn_reference(*wide, masks.indices, masks.offsets, ref_ids, activation, mask_bias)
            assert got.dtype == dtype
            assert (got.double() - want).abs().max() <= tol * want.abs().max().clamp_min(1.0) * 4


def test_without_biases_an_inactive_neuron_contributes_exactly_zero():
    tensors, _, _ = problem(1, 6, 4, 8, 1, biases=False)
    x, wg, _, wu, _, wd, _ = tensors
    masks = TaskMasks.from_indices([[0, 3, 5]], 8)
    got = masked_glu_ffn(x, wg, None, wu, None, wd, None, masks, 0)
    keep = [0, 3, 5]
    want = (F.silu(x @ wg[keep].t()) * (x @ wu[keep].t())) @ wd[:, keep].t()
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_inactive_rows_get_zero_gradient_and_full_mask_is_dense():
    tensors, _, _ = problem(2, 20, 6, 10, 1)
    leaves = [v.clone().requires_grad_(True) for v in tensors]
    masked_glu_ffn(*leaves, TaskMasks.from_indices([[1, 4]], 10), 0, "silu", mask_bias=True).sum().backward()
    inactive = [0, 2, 3, 5, 6, 7, 8, 9]
    for name, v, dim in (("w_gate", leaves[1], 0), ("b_gate", leaves[2], 0), ("w_up", leaves[3], 0),
                         ("b_up", leaves[4], 0), ("w_down", leaves[5], 1)):
        assert torch.count_nonzero(v.grad.index_select(dim, torch.tensor(inactive))) == 0, name
        assert torch.count_nonzero(v.grad.index_select(dim, torch.tensor([1, 4]))) > 0, name
    x, wg, bg, wu, bu, wd, bd = tensors
    dense = (F.silu(x @ wg.t() + bg) * (x @ wu.t() + bu)) @ wd.t() + bd
    torch.testing.assert_close(masked_glu_ffn(*tensors, TaskMasks.full(1, 10), 0, "silu"), dense)


@pytest.mark.parametrize("case", ["empty", "full", "one_token", "many_tasks", "sorted_ids", "no_tokens"])
def test_edge_cases(case):
    f = 16
    if case == "empty":
        tensors, _, ids = problem(4, 10, 6, f, 2)
        masks = TaskMasks.from_indices([[], []], f)
    elif case == "full":
        tensors, _, ids = problem(4, 10, 6, f, 3)
        masks = TaskMasks.full(3, f)
    elif case == "one_token":
        tensors, masks, ids = problem(5, 1, 6, f, 4)
    elif case == "many_tasks":
        tensors, masks, ids = problem(6, 50, 6, f, 40)
    elif case == "sorted_ids":
        tensors, masks, ids = problem(7, 30, 6, f, 5)
        ids = torch.sort(ids).values
    else:
        tensors, masks, ids = problem(8, 0, 6, f, 3)
    for name, got, want in run_both(tensors, masks, ids, "silu", False):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8, msg=lambda m: f"{case} {name}: {m}")


def test_leading_dims_and_per_token_ids_shape():
    tensors, masks, _ = problem(9, 12, 5, 8, 3)
    x = tensors[0].reshape(3, 4, 5)
    ids = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0], [1, 1, 1, 1]])
    got = masked_glu_ffn(x, *tensors[1:], masks, ids, "gelu")
    want = masked_glu_ffn(tensors[0], *tensors[1:], masks, ids.reshape(-1), "gelu", backend="reference")
    torch.testing.assert_close(got.reshape(12, -1), want)


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
def test_counts_equal_a_naive_count(activation):
    tensors, _, ids = problem(11, 40, 6, 20, 5)
    x, wg, bg = tensors[:3]
    valid = torch.rand(40, generator=torch.Generator().manual_seed(0)) > 0.3
    counts = torch.zeros(5, 20, dtype=torch.long)
    h = glu_act_count(x, wg, bg, counts, ids, valid, activation)
    act = {"silu": F.silu, "gelu": F.gelu, "relu": torch.relu}[activation]
    g = x @ wg.t() + bg
    naive = torch.zeros(5, 20, dtype=torch.long)
    for i in range(40):
        if valid[i]:
            naive[ids[i]] += (act(g[i]) > 0).long()
    assert torch.equal(counts, naive)
    torch.testing.assert_close(h, act(g))
    glu_act_count(x, wg, None, counts, 3)  # homogeneous, no bias, no valid: every token counts
    assert torch.equal(counts[3] - naive[3], ((x @ wg.t()) > 0).sum(0))


def test_bad_inputs_name_the_argument():
    tensors, masks, ids = problem(12, 8, 4, 6, 2)
    x, wg, bg, wu, bu, wd, bd = tensors
    cases = [
        (lambda: masked_glu_ffn(x, wg[:, :3], bg, wu, bu, wd, bd, masks, ids), ValueError, "w_gate"),
        (lambda: masked_glu_ffn(x, wg, bg, wu[:5], bu, wd, bd, masks, ids), ValueError, "w_up"),
        (lambda: masked_glu_ffn(x, wg, bg, wu, bu, wd[:, :4], bd, masks, ids), ValueError, "w_down"),
        (lambda: masked_glu_ffn(x, wg, bg, wu, bu, wd, bd[:2], masks, ids), ValueError, "b_down"),
        (lambda: masked_glu_ffn(x, wg, bg.float(), wu, bu, wd, bd, masks, ids), TypeError, "b_gate"),
        (lambda: masked_glu_ffn(x, wg, bg, None, bu, wd, bd, masks, ids), ValueError, "b_up"),
        (lambda: masked_glu_ffn(x, wg, bg, wu, bu, wd, bd, masks, ids, "tanh"), ValueError, "activation"),
        (lambda: masked_glu_ffn(x, wg, bg, wu, bu, wd, bd, TaskMasks.full(2, 7), ids), ValueError, "masks"),
        (lambda: masked_glu_ffn(x, wg, bg, wu, bu, wd, bd, "m", ids), TypeError, "masks"),
        (lambda: masked_glu_ffn(x, wg, bg, wu, bu, wd, bd, masks, ids + 5), ValueError, "task_ids"),
        (lambda: masked_glu_ffn(x, wg, bg, wu, bu, wd, bd, masks, 2), ValueError, "task_ids"),
        (lambda: masked_glu_ffn(x, wg, bg, wu, bu, wd, bd, masks, ids[:3]), ValueError, "task_ids"),
        (lambda: masked_glu_ffn(x, wg, bg, wu, bu, wd, bd, masks, ids, backend="triton"), ValueError, "backend"),
        (lambda: glu_act_count(x, wg, bg, torch.zeros(2, 5, dtype=torch.long), ids), ValueError, "counts"),
        (lambda: glu_act_count(x, wg, bg, torch.zeros(2, 6), ids), TypeError, "counts"),
        (lambda: glu_act_count(x, wg, bg, torch.zeros(2, 6, dtype=torch.long), ids, torch.ones(3, dtype=torch.bool)),
         ValueError, "valid"),
    ]
    for fn, exc, name in cases:
        with pytest.raises(exc, match=name):
            fn()


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_opcheck_gated_and_ungated(backend):
    """The gated FFN is the masked-FFN custom op with w_up: schema, fake kernel, autograd."""
    from neuronspec.ops import registry

    for gated in (True, False):
        tensors, masks, ids = problem(7, 10, 6, 12, 3, gated=gated)
        x, wg, bg, wu, bu, wd, bd = [None if t is None else t.requires_grad_(True) for t in tensors]
        for task_ids, task in ((ids, -1), (torch.empty(0, dtype=torch.long), 2)):
            args = (x, wg, bg, wd, bd, wu, bu, masks.indices, masks.offsets, task_ids, task, "silu", False, backend)
            torch.library.opcheck(registry.masked_ffn_fwd_op, args)


@pytest.mark.parametrize("biases", [True, False])
def test_torch_compile_fullgraph(biases):
    """One graph for a mixed and a homogeneous gated call, equal to eager (values, gradients)."""
    tensors, masks, ids = problem(8, 16, 8, 20, 3, dtype=torch.float32, biases=biases)
    present = [t for t in tensors if t is not None]

    def fn(*leaves):
        it = iter(leaves)
        args = [None if t is None else next(it) for t in tensors]
        return masked_glu_ffn(*args, masks, ids, "silu") + masked_glu_ffn(*args, masks, 1, "gelu_tanh")

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    outs = []
    for f in (fn, compiled):
        leaves = [t.detach().clone().requires_grad_(True) for t in present]
        y = f(*leaves)
        outs.append([y.detach(), *torch.autograd.grad(y, leaves, torch.ones_like(y))])
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want)
