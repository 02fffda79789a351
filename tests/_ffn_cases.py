"""Shared random FFN problems for the op tests (any backend)."""
from __future__ import annotations

import torch

from neuronspec.ops import TaskMasks, masked_ffn, masked_ffn_reference

NAMES = ["x", "w1", "b1", "w2", "b2"]


def random_masks(gen: torch.Generator, num_tasks: int, f: int, density: float | None = None) -> TaskMasks:
    """Random per-task masks; density None draws one per task, forcing some empty/full."""
    rows = []
    for t in range(num_tasks):
        p = density if density is not None else float(torch.rand((), generator=gen))
        if density is None and t % 7 == 3:
            p = 0.0  # an empty mask now and then
        if density is None and t % 7 == 5:
            p = 1.0  # and a full one
        rows.append(torch.rand(f, generator=gen) < p)
    return TaskMasks.from_dense(torch.stack(rows), [f"t{t}" for t in range(num_tasks)])


def random_problem(seed: int, n: int, d: int, f: int, num_tasks: int, dtype=torch.float64,
                   density: float | None = None, d_out: int | None = None):
    """x [n, d], w1 [f, d], b1 [f], w2 [d_out, f], b2 [d_out], masks, unsorted task_ids [n]."""
    gen = torch.Generator().manual_seed(seed)
    d_out = d if d_out is None else d_out
    x = torch.randn(n, d, generator=gen)
    w1 = torch.randn(f, d, generator=gen) / d**0.5
    b1 = torch.randn(f, generator=gen) * 0.5
    w2 = torch.randn(d_out, f, generator=gen) / f**0.5
    b2 = torch.randn(d_out, generator=gen) * 0.5
    masks = random_masks(gen, num_tasks, f, density)
    task_ids = torch.randint(0, num_tasks, (n,), generator=gen)
    tensors = [t.to(dtype) for t in (x, w1, b1, w2, b2)]
    return tensors, masks, task_ids


def grads(fn, tensors, seed: int = 0):
    """Output and gradients of sum(fn(*leaves) * g) w.r.t. every tensor (cast to float64)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    y = fn(*leaves)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.device, y.dtype)
    gs = torch.autograd.grad(y, leaves, g, allow_unused=True)
    gs = [torch.zeros_like(l) if gr is None else gr for l, gr in zip(leaves, gs)]
    return y.detach().double().cpu(), [gr.double().cpu() for gr in gs]


def outputs_vs_reference(backend, tensors, masks, task_ids, activation, mask_bias):
    """[(name, got, want)] for the output "y" and the five gradients: masked_ffn(backend=...)
    vs autograd on masked_ffn_reference in float64 from the same rounded inputs (any leading
    dims; results float64 on the CPU)."""
    masks = masks.to(tensors[0].device)

    def op(x, w1, b1, w2, b2):
        return masked_ffn(x, w1, b1, w2, b2, masks, task_ids, activation, mask_bias, backend=backend)

    def ref(x, w1, b1, w2, b2):
        per_token = isinstance(task_ids, torch.Tensor) and task_ids.dim() > 0  # else an int or a 0-dim tensor
        ids = task_ids if per_token else torch.full(x.shape[:-1], int(task_ids), device=x.device)
        y = masked_ffn_reference(x.reshape(-1, x.shape[-1]), w1, b1, w2, b2, masks.indices, masks.offsets,
                                 ids.reshape(-1), activation, mask_bias)
        return y.reshape(*x.shape[:-1], w2.shape[0])

    y, gs = grads(op, tensors)
    y_ref, gs_ref = grads(ref, [t.double() for t in tensors])
    return list(zip(["y", *NAMES], [y, *gs], [y_ref, *gs_ref]))
