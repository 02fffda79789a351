"""Public ops: `masked_ffn` and `fc1_act_count` (docs/design.md §2), on any backend."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import registry
from .activations import act
from .masks import TaskMasks
from .validation import check_activation, check_ffn_weights, check_tensor, describe, normalize_task_ids


def masked_ffn(x, w1, b1, w2, b2, masks: TaskMasks, task_ids, activation: str = "relu",
               mask_bias: bool = False, backend: str | None = None) -> torch.Tensor:
    """FFN where each token uses only its task's rows of W1.

    x [..., d]; w1 [f, d]; b1 [f]; w2 [d_out, f]; b2 [d_out]; masks: TaskMasks over f neurons;
    task_ids: int (homogeneous batch) or integer tensor [...] / [N] (one id per token, any
    order). Returns [..., d_out] equal to act(x (m_t ⊙ W1)ᵀ + b1) W2ᵀ + b2 per token; with
    mask_bias=True inactive neurons output 0 instead of act(b1_i). Differentiable in x and all
    weights; computes only active neurons (except on the `reference` backend).
    """
    d, f = check_ffn_weights(x, w1, b1, w2, b2)
    check_activation(activation)
    if not isinstance(masks, TaskMasks):
        raise TypeError(f"masks: expected a TaskMasks, got {describe(masks)}")
    if masks.num_neurons != f:
        raise ValueError(f"masks: built for {masks.num_neurons} neurons but w1 has {f} rows")
    if masks.device != x.device:
        raise ValueError(f"masks: on {masks.device} but x is on {x.device}; call masks.to(x.device)")
    lead = x.shape[:-1]
    ids, task = normalize_task_ids(task_ids, lead, masks.num_tasks, x.device)
    name = registry.resolve_backend(backend, x.device)
    x2 = x.reshape(-1, d).contiguous()
    y = registry.masked_ffn_dispatch(
        x2, w1.contiguous(), b1.contiguous(), w2.contiguous(), b2.contiguous(),
        masks.indices, masks.offsets, ids, task, activation, bool(mask_bias), name,
    )
    return y.reshape(*lead, w2.shape[0])


def fc1_act_count(x, w1, b1, counts, task_ids=None, valid=None, activation: str = "relu",
                  return_output: bool = True, backend: str | None = None):
    """H = act(x W1ᵀ + b1) [..., f], and counts[t, n] += #valid tokens of task t with Z_n > 0.

    counts: int64 [T, f], updated in place; task_ids: None (all task 0), int, or integer tensor
    [...] / [N]; valid: bool [...] / [N] (False = padding, not counted) or None.
    return_output=False only counts (no H written) and returns None. When autograd needs H,
    H comes from differentiable torch ops and the count from the fused op.
    """
    d, f = check_ffn_weights(x, w1, b1)
    check_activation(activation)
    check_tensor("counts", counts, dtype=torch.int64, device=x.device)
    if counts.dim() != 2 or counts.shape[1] != f:
        raise ValueError(f"counts: expected shape [T, {f}] (f = rows of w1), got {describe(counts)}")
    if not counts.is_contiguous():
        raise ValueError("counts: must be contiguous (it is updated in place)")
    lead = x.shape[:-1]
    ids, task = normalize_task_ids(0 if task_ids is None else task_ids, lead, counts.shape[0], x.device)
    n = x.numel() // d if d else 0
    if valid is not None:
        check_tensor("valid", valid, dtype=torch.bool, device=x.device)
        if tuple(valid.shape) not in (tuple(lead), (n,)):
            raise ValueError(f"valid: expected shape {list(lead)} or [{n}], got {describe(valid)}")
        valid = valid.reshape(n).contiguous()
    name = registry.resolve_backend(backend, x.device)
    x2 = x.reshape(-1, d).contiguous()
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, w1, b1))
    write = return_output and not needs_grad
    h = registry.fc1_act_count_dispatch(x2, w1.contiguous(), b1.contiguous(), counts, ids, task, valid, activation, write, name)
    if not return_output:
        return None
    if needs_grad:
        return act(F.linear(x, w1, b1), activation)
    return h.reshape(*lead, f)
