"""Seeded property tests of masked_ffn: values and all five gradients against the reference over
random sizes, task mixes, masks (empty, full, random), dtypes, activations and mask_bias, on
every CPU backend (the torch backend's CPU loop and its GPU path, grouped_mm), and small cases
of the Triton kernels under the interpreter. NEURONSPEC_FUZZ=K runs K times as many cases.
Non-finite inputs: docs/design.md §2 (a NaN token spoils its own output row only)."""
import os

import pytest
import torch

from neuronspec.ops import TaskMasks, masked_ffn
from neuronspec.ops import torch_backend

from _ffn_cases import outputs_vs_reference, random_masks

SCALE = max(1, int(os.environ.get("NEURONSPEC_FUZZ", "1")))
TOL = {torch.float64: (1e-9, 1e-7), torch.float32: (2e-4, 2e-4)}


def draw_case(seed: int, max_n=48, max_d=24, max_f=40, max_tasks=9, aligned=False):
    """A random problem: sizes, dtype, activation, mask_bias, masks, task ids (int or unsorted)."""
    g = torch.Generator().manual_seed(seed)

    def rint(lo, hi):
        return int(torch.randint(lo, hi + 1, (), generator=g))
    n, d, f, d_out, tasks = rint(0, max_n), rint(1, max_d), rint(1, max_f), rint(1, max_d), rint(1, max_tasks)
    if aligned:  # grouped_mm's 16-byte rows in fp32
        d, d_out = 4 * rint(1, max(1, max_d // 4)), 4 * rint(1, max(1, max_d // 4))
    dtype = torch.float32 if aligned or seed % 3 == 0 else torch.float64
    x = torch.randn(n, d, generator=g)
    w1, b1 = torch.randn(f, d, generator=g) / d**0.5, torch.randn(f, generator=g) * 0.5
    w2, b2 = torch.randn(d_out, f, generator=g) / f**0.5, torch.randn(d_out, generator=g) * 0.5
    kind = seed % 4  # random per-task densities with empty/full ones, all empty, all full, one density
    if kind == 1:
        masks = TaskMasks.from_indices([[] for _ in range(tasks)], f)
    elif kind == 2:
        masks = TaskMasks.full(tasks, f)
    else:
        masks = random_masks(g, tasks, f, None if kind == 0 else float(torch.rand((), generator=g)))
    if seed % 5 == 0 and n:
        task_ids = rint(0, tasks - 1)
    else:
        task_ids = torch.randint(0, tasks, (n,), generator=g)
    tensors = [t.to(dtype) for t in (x, w1, b1, w2, b2)]
    return tensors, masks, task_ids, ("relu", "gelu")[seed % 2], bool(seed // 2 % 2)


def check(backend, seed, **kw):
    tensors, masks, task_ids, activation, mask_bias = draw_case(seed, **kw)
    atol, rtol = TOL[tensors[0].dtype]
    for name, got, want in outputs_vs_reference(backend, tensors, masks, task_ids, activation, mask_bias):
        scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
        torch.testing.assert_close(got, want, atol=atol * scale, rtol=rtol,
                                   msg=lambda m: f"seed {seed} {backend} {name}: {m}")


@pytest.mark.parametrize("seed", range(160 * SCALE))  # + 40 grouped below: 200 torch-backend cases
def test_fuzz_torch_backend(seed):
    check("torch", seed)


@pytest.mark.parametrize("seed", range(40 * SCALE))
def test_fuzz_torch_backend_gpu_path(seed, monkeypatch):
    """Mixed batches through grouped_mm (the sync-free GPU path), aligned fp32 sizes."""
    monkeypatch.setattr(torch_backend, "GROUPED_ON_CPU", True)
    check("torch", 10_000 + seed, aligned=True)


@pytest.mark.parametrize("seed", range(40 * SCALE))
def test_fuzz_maskmul_and_auto(seed):
    check("maskmul" if seed % 2 else "auto", 20_000 + seed)


triton_backend = pytest.importorskip("neuronspec.ops.triton_backend")


@pytest.mark.skipif(triton_backend.available(torch.device("cpu")) is not None, reason="needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("seed", range(50 * SCALE))
def test_fuzz_triton_interpreter(seed):
    check("triton", 30_000 + seed, max_n=20, max_d=12, max_f=24, max_tasks=4)


# ---- non-finite inputs ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "maskmul", "torch", "auto"])
@pytest.mark.parametrize("mixed", [False, True])
def test_nan_token_spoils_only_its_own_output_row(backend, mixed):
    g = torch.Generator().manual_seed(1)
    x, w1, b1 = torch.randn(12, 8, generator=g), torch.randn(16, 8, generator=g), torch.randn(16, generator=g)
    w2, b2 = torch.randn(8, 16, generator=g), torch.randn(8, generator=g)
    x[5, 3] = float("nan")
    masks = random_masks(g, 3, 16, 0.5)
    ids = torch.randint(0, 3, (12,), generator=g) if mixed else 1
    y = masked_ffn(x, w1, b1, w2, b2, masks, ids, backend=backend)
    bad = torch.isnan(y).any(1)
    assert bad[5] and not bad[torch.arange(12) != 5].any()
