"""Public ops (docs/design.md §2, §9): the masked FFN, plain (`masked_ffn`) or gated
(`masked_glu_ffn`), and the fused counting (`fc1_act_count`, `glu_act_count`): one op family
through one registry, on any backend whose CAPS take the call."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import registry
from .activations import act
from .call import FFNOptions, FFNWeights
from .masks import TaskMasks
from .validation import (
    GATED_NAMES, PLAIN_NAMES, check_activation, check_counts, check_ffn_weights, check_masks, check_valid,
    normalize_task_ids,
)


def masked_ffn(x, w1, b1, w2, b2, masks: TaskMasks, task_ids, activation: str = "relu",
               mask_bias: bool = False, backend: str | None = None) -> torch.Tensor:
    """FFN where each token uses only its task's rows of W1.

    x [..., d]; w1 [f, d]; b1 [f]; w2 [d_out, f]; b2 [d_out]; masks: TaskMasks over f neurons;
    task_ids: int (homogeneous batch) or integer tensor [...] / [N] (one id per token, any
    order). Returns [..., d_out] equal to act(x (m_t ⊙ W1)ᵀ + b1) W2ᵀ + b2 per token; with
    mask_bias=True inactive neurons output 0 instead of act(b1_i). Differentiable in x and all
    weights; computes only active neurons (except on the `reference` and `maskmul` backends).
    """
    return _masked(x, FFNWeights(w1, b1, w2, b2), PLAIN_NAMES, False, masks, task_ids, activation, mask_bias, backend)


def masked_glu_ffn(x, w_gate, b_gate, w_up, b_up, w_down, b_down, masks: TaskMasks, task_ids,
                   activation: str = "silu", mask_bias: bool = False, backend: str | None = None) -> torch.Tensor:
    """Gated FFN where each token uses only its task's rows of W_g and W_u (docs/design.md §9):
    (act(x W_gᵀ + b_g) ⊙ (x W_uᵀ + b_u)) W_dᵀ + b_d over the task's neurons. The same op as
    masked_ffn with a gate weight (w1 = w_gate, w2 = w_down).

    x [..., d]; w_gate, w_up [f, d]; w_down [d_out, f]; b_gate, b_up [f], b_down [d_out] or None;
    w_up None: ungated; masks, task_ids, mask_bias, backend as in masked_ffn. Returns [..., d_out].
    """
    weights = FFNWeights(w_gate, b_gate, w_down, b_down, w_up, b_up)
    return _masked(x, weights, GATED_NAMES, True, masks, task_ids, activation, mask_bias, backend)


def _with_zero_biases(w: FFNWeights) -> FFNWeights:
    """Absent biases as zeros (exactly the FFN without them; their gradients are dropped)."""
    f = w.w1.shape[0]
    b1 = w.w1.new_zeros(f) if w.b1 is None else w.b1
    b2 = w.w2.new_zeros(w.w2.shape[0]) if w.b2 is None else w.b2
    b_up = w.w1.new_zeros(f) if w.gated and w.b_up is None else w.b_up
    return FFNWeights(w.w1, b1, w.w2, b2, w.w_up, b_up)


def _masked(x, weights: FFNWeights, names, optional_biases, masks, task_ids, activation, mask_bias, backend):
    d, f = check_ffn_weights(x, weights, names, optional_biases)
    check_activation(activation)
    check_masks(masks, f, x.device, names[0])
    lead = x.shape[:-1]
    ids, task = normalize_task_ids(task_ids, lead, masks.num_tasks, x.device)
    name = registry.resolve_backend(backend, x.device)
    # an inactive neuron outputs act(b1)·b_up: 0 without b1 (act(0) = 0), or gated without b_up
    zero_output = weights.b1 is None or (weights.gated and weights.b_up is None)
    weights = FFNWeights(*(None if t is None else t.contiguous() for t in _with_zero_biases(weights).tensors()))
    call = registry.Call(masks.indices, masks.offsets, ids, task, FFNOptions(activation, bool(mask_bias) or zero_output),
                         name)
    y = registry.masked_ffn_dispatch(x.reshape(-1, d).contiguous(), weights, call)
    return y.reshape(*lead, weights.w2.shape[0])


def autocast_inputs(*tensors: torch.Tensor | None) -> tuple:
    """Under torch.autocast, the ops' inputs in the autocast dtype (as nn.Linear would run: the
    custom ops have no autocast rule); gradients flow back through the casts to the float32
    parameters. None stays None."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def fc1_act_count(x, w1, b1, counts, task_ids=None, valid=None, activation: str = "relu",
                  return_output: bool = True, backend: str | None = None):
    """H = act(x W1ᵀ + b1) [..., f], and counts[t, n] += #valid tokens of task t with Z_n > 0.

    counts: int64 [T, f], updated in place; task_ids: None (all task 0), int, or integer tensor
    [...] / [N]; valid: bool [...] / [N] (False = padding, not counted) or None.
    return_output=False only counts (no H written) and returns None. When autograd needs H,
    H comes from differentiable torch ops and the count from the fused op.
    """
    return _count(x, FFNWeights(w1, b1), PLAIN_NAMES, counts, task_ids, valid, activation, return_output, backend)


def glu_act_count(x, w_gate, b_gate, counts, task_ids=None, valid=None, activation: str = "silu") -> torch.Tensor:
    """act(G) [..., f] with G = x W_gᵀ + b_g (b_gate may be None), and counts[t, n] += #valid
    tokens of task t with act(G_n) > 0 (⇔ G_n > 0), in place: fc1_act_count of the gate."""
    return _count(x, FFNWeights(w_gate, b_gate), GATED_NAMES, counts, task_ids, valid, activation, True, None)


def _count(x, weights: FFNWeights, names, counts, task_ids, valid, activation, return_output, backend):
    d, f = check_ffn_weights(x, weights, names, optional_biases=names is GATED_NAMES)
    check_activation(activation)
    check_counts(counts, f, x.device, names[0])
    lead = x.shape[:-1]
    ids, task = normalize_task_ids(0 if task_ids is None else task_ids, lead, counts.shape[0], x.device)
    n = x.numel() // d if d else 0
    valid = check_valid(valid, lead, n, x.device)
    name = registry.resolve_backend(backend, x.device)
    w1 = weights.w1.contiguous()
    b1 = w1.new_zeros(f) if weights.b1 is None else weights.b1.contiguous()
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *weights.tensors()))
    write = return_output and not needs_grad
    call = registry.CountCall(counts, ids, task, valid, write, activation, name)
    h = registry.fc1_act_count_dispatch(x.reshape(-1, d).contiguous(), FFNWeights(w1, b1), call)
    if not return_output:
        return None
    if needs_grad:
        return act(F.linear(x, weights.w1, weights.b1), activation)
    return h.reshape(*lead, f)
