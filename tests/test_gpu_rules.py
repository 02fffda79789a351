"""The torch backend's GPU branch under the CUDA rules of its grouped GEMMs, checked on CPU.

`cuda_rules` runs the GPU path (mixed batches through grouped_mm, GROUPED_ON_CPU) with the
dtype rule of a CUDA device (bf16 only; fp16 and fp32 loop over the groups) and sends every
F.grouped_mm call first through torch's meta kernel on operands of the same shapes, strides and
dtypes: the meta kernel enforces what the CUDA kernel accepts (bf16 operands, no other output
dtype, 16-byte strides, int32 offsets). The CPU kernel then computes the values, which are
checked against the float64 reference.
"""
import pytest
import torch
import torch.nn.functional as F

from neuronspec.ops import TaskMasks, masked_ffn, torch_backend

from _ffn_cases import outputs_vs_reference, random_problem


def _meta_like(t):
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta") if isinstance(t, torch.Tensor) else t


@pytest.fixture
def cuda_rules(monkeypatch):
    """→ list of (a dtype, out dtype) of every grouped_mm call, each one meta-checked first."""
    calls = []
    real = F.grouped_mm

    def checked(a, b, *args, **kwargs):
        meta = real(_meta_like(a), _meta_like(b), *map(_meta_like, args),
                    **{k: _meta_like(v) for k, v in kwargs.items()})
        out = real(a, b, *args, **kwargs)
        assert out.shape == meta.shape and out.dtype == meta.dtype
        calls.append((a.dtype, out.dtype))
        return out

    monkeypatch.setattr(F, "grouped_mm", checked)
    monkeypatch.setattr(torch_backend, "GROUPED_ON_CPU", True)
    monkeypatch.setattr(torch_backend, "grouped_dtype_ok", lambda dtype, device: dtype == torch.bfloat16)
    return calls


def test_meta_kernel_enforces_the_cuda_rules():
    """The check is not vacuous: bf16 operands with an fp32 output (what the torch backend once
    asked for) and fp16 operands are refused on meta, as on CUDA."""
    a = torch.empty(32, 16, dtype=torch.bfloat16, device="meta")
    b = torch.empty(2, 16, 24, dtype=torch.bfloat16, device="meta")
    offs = torch.empty(2, dtype=torch.int32, device="meta")
    assert F.grouped_mm(a, b, offs=offs).dtype == torch.bfloat16
    with pytest.raises(RuntimeError, match="bfloat16"):
        F.grouped_mm(a, b, offs=offs, out_dtype=torch.float32)
    with pytest.raises(RuntimeError, match="BF16"):
        F.grouped_mm(a.half(), b.half(), offs=offs)


TOL = {torch.bfloat16: 3e-2, torch.float16: 3e-3}
# (n, d, f, d_out, tasks, density): aligned widths, odd widths (the loop fallback), empty groups
# (more tasks than tokens, and a task without neurons), a mask keeping every neuron
CASES = [(96, 32, 64, 48, 4, 0.5), (70, 13, 37, 11, 3, 0.6), (5, 16, 40, 24, 9, None), (40, 24, 24, 16, 2, 1.0)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("activation, mask_bias", [("relu", False), ("gelu", True), ("gelu", False)])
def test_mixed_batches_under_cuda_rules(cuda_rules, dtype, case, activation, mask_bias):
    """Forward and all five gradients of mixed batches, bf16 (grouped_mm where the widths are
    16-byte aligned) and fp16 (the group loop), against the float64 reference."""
    n, d, f, d_out, tasks, density = case
    tensors, masks, ids = random_problem(7, n, d, f, tasks, dtype=dtype, density=density, d_out=d_out)
    for name, got, want in outputs_vs_reference("torch", tensors, masks, ids, activation, mask_bias):
        err = (got - want).norm() / want.norm().clamp_min(1e-6)
        assert err < TOL[dtype], (name, float(err))
    aligned = d * 2 % 16 == 0 and d_out * 2 % 16 == 0
    native = dtype == torch.bfloat16 and aligned
    assert len(cuda_rules) == (6 if native else 0)  # fc1, fc2 forward; dH, dX, dW1, dW2 backward
    assert all(a == out == torch.bfloat16 for a, out in cuda_rules)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["homogeneous", "uniform"])
def test_one_task_batches_under_cuda_rules(cuda_rules, dtype, kind):
    """Homogeneous (host int) and uniform (0-dim device id) batches use addmm, not grouped_mm."""
    tensors, masks, _ = random_problem(3, 33, 16, 40, 3, dtype=dtype, density=0.5)
    ids = 1 if kind == "homogeneous" else torch.tensor(1)
    for name, got, want in outputs_vs_reference("torch", tensors, masks, ids, "gelu", False):
        assert (got - want).norm() / want.norm().clamp_min(1e-6) < TOL[dtype], name
    assert cuda_rules == []


def test_bf16_bias_is_added_before_rounding(cuda_rules):
    """Z = x·w1 + b1 with x·w1 = 1 + 2⁻¹² and b1 = −1: rounding the product to bf16 first gives
    1 − 1 = 0 and relu'(Z) = 0; the bias inside the GEMM's fp32 accumulator gives Z = 2⁻¹² > 0,
    as addmm does. Neuron 0 is then active: it passes dY on to b1 and to the output."""
    d, f = 16, 8
    x = torch.zeros(16, d)
    x[:, 0], x[:, 1] = 1.0, 2.0**-12
    w1 = torch.zeros(f, d)
    w1[:, :2] = 1.0
    b1 = torch.full((f,), -1.0)
    w2 = torch.eye(d, f) * 2.0**10
    tensors = [t.to(torch.bfloat16).requires_grad_(True) for t in (x, w1, b1, w2, torch.zeros(d))]
    masks = TaskMasks.from_indices([[0, 1, 2, 3], [0, 4, 5, 6, 7]], f)
    ids = torch.arange(16) % 2
    y = masked_ffn(*tensors, masks, ids, "relu", mask_bias=True, backend="torch")
    assert len(cuda_rules) == 2  # both forward GEMMs took grouped_mm
    assert torch.equal(y[:, 0].float(), torch.full((16,), 2.0**-2))  # H₀ W2[0, 0] = 2⁻¹² · 2¹⁰
    y[:, 0].sum().backward()
    assert float(tensors[2].grad[0]) == 16 * 2.0**10
