"""Argument checks done once at the op boundary: a wrong input is a ValueError/TypeError that
names the argument, never a silent wrong answer or a crash inside a kernel."""
from __future__ import annotations

import torch

from .activations import ACTIVATIONS
from .call import FFNWeights
from .masks import TaskMasks
from .plan import UNIFORM

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{str(t.dtype).replace('torch.', '')} tensor of shape {tuple(t.shape)} on {t.device}"
    return f"{type(t).__name__} {t!r}"[:80]


def check_tensor(name: str, t, shape: tuple | None = None, dtype=None, device=None, dtypes=None) -> None:
    """shape entries of None match any size."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {describe(t)}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {describe(t)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected one of {[str(d) for d in dtypes]}, got {describe(t)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (like x), got {describe(t)}")
    if shape is not None and (t.dim() != len(shape) or any(s is not None and s != a for s, a in zip(shape, t.shape))):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {describe(t)}")


def check_activation(activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")


PLAIN_NAMES = ("w1", "b1", "w2", "b2", "w_up", "b_up")  # FFNWeights fields as masked_ffn names them
GATED_NAMES = ("w_gate", "b_gate", "w_down", "b_down", "w_up", "b_up")  # ... and masked_glu_ffn


def check_ffn_weights(x, w: FFNWeights, names: tuple = PLAIN_NAMES, optional_biases: bool = False) -> tuple[int, int]:
    """x [..., d], w1 [f, d], b1 [f], w2 [d_out, f], b2 [d_out], w_up [f, d], b_up [f] (w2 and
    b2 None when counting, w_up and b_up None when not gated; biases None when
    optional_biases), one float dtype and device → (d, f). Errors use `names`."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if x.dim() < 1:
        raise ValueError(f"x: expected shape [..., d], got {describe(x)}")
    d = x.shape[-1]
    n_w1, n_b1, n_w2, n_b2, n_wu, n_bu = names
    check_tensor(n_w1, w.w1, shape=(None, d), dtype=x.dtype, device=x.device)
    f = w.w1.shape[0]
    if f == 0:
        raise ValueError(f"{n_w1}: needs at least one neuron, got {describe(w.w1)}")
    shapes = [(n_b1, w.b1, (f,)), (n_wu, w.w_up, (f, d)), (n_bu, w.b_up, (f,))]
    if w.w2 is not None:
        check_tensor(n_w2, w.w2, shape=(None, f), dtype=x.dtype, device=x.device)
        shapes.append((n_b2, w.b2, (w.w2.shape[0],)))
    for name, t, shape in shapes:
        if t is not None or (name in (n_b1, n_b2) and not optional_biases):
            check_tensor(name, t, shape=shape, dtype=x.dtype, device=x.device)
    if w.w_up is None and w.b_up is not None:
        raise ValueError(f"{n_bu}: given without {n_wu} ({n_wu}=None is the ungated FFN)")
    return d, f


def check_masks(masks, f: int, device: torch.device | None, rows_of: str = "w1", name: str = "masks") -> None:
    """masks: a TaskMasks over f neurons (the rows of `rows_of`), on `device` unless None; errors
    name the argument `name`."""
    if not isinstance(masks, TaskMasks):
        raise TypeError(f"{name}: expected a TaskMasks, got {describe(masks)}")
    if masks.num_neurons != f:
        raise ValueError(f"{name}: built for {masks.num_neurons} neurons but {rows_of} has {f} rows")
    if device is not None and masks.device != device:
        raise ValueError(f"{name}: on {masks.device} but x is on {device}; call masks.to(x.device)")


def check_counts(counts, f: int, device: torch.device, rows_of: str = "w1") -> None:
    """counts: contiguous int64 [T, f] on `device` (updated in place)."""
    check_tensor("counts", counts, dtype=torch.int64, device=device)
    if counts.dim() != 2 or counts.shape[1] != f:
        raise ValueError(f"counts: expected shape [T, {f}] (f = rows of {rows_of}), got {describe(counts)}")
    if not counts.is_contiguous():
        raise ValueError("counts: must be contiguous (it is updated in place)")


def check_valid(valid, lead_shape: torch.Size, n: int, device: torch.device):
    """valid: None or bool of shape lead_shape / [N] → None or bool [N]."""
    if valid is None:
        return None
    check_tensor("valid", valid, dtype=torch.bool, device=device)
    if tuple(valid.shape) not in (tuple(lead_shape), (n,)):
        raise ValueError(f"valid: expected shape {list(lead_shape)} or [{n}], got {describe(valid)}")
    return valid.reshape(n).contiguous()


def normalize_task_ids(task_ids, lead_shape: torch.Size, num_tasks: int, device: torch.device):
    """→ (task_ids, task): an int t → (empty, t), every token is t's, checked here; a 0-dim
    integer tensor → (its value as int64 [1], UNIFORM = -2), every token is that task's, read
    and range-checked on the device only (no host sync: CUDA graphs can capture it); a tensor of
    shape lead_shape or [N] → (int64 [N], -1), one task per token."""
    n = 1
    for s in lead_shape:
        n *= s
    if isinstance(task_ids, bool) or not isinstance(task_ids, (int, torch.Tensor)):
        raise TypeError(f"task_ids: expected an int or an integer tensor, got {describe(task_ids)}")
    if isinstance(task_ids, int):
        if not 0 <= task_ids < num_tasks:
            raise ValueError(f"task_ids: task {task_ids} out of range [0, {num_tasks})")
        return torch.empty(0, dtype=torch.long, device=device), task_ids
    if task_ids.dtype.is_floating_point or task_ids.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise TypeError(f"task_ids: expected an integer tensor, got {describe(task_ids)}")
    if task_ids.device != device:
        raise ValueError(f"task_ids: expected a tensor on {device} (like x), got {describe(task_ids)}")
    if task_ids.dim() == 0:
        return task_ids.reshape(1).long(), UNIFORM
    if tuple(task_ids.shape) != tuple(lead_shape) and tuple(task_ids.shape) != (n,):
        raise ValueError(
            f"task_ids: expected one id per token, shape {list(lead_shape)} or [{n}], got {describe(task_ids)}"
        )
    return task_ids.reshape(n).long().contiguous(), -1
