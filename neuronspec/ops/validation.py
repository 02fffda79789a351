"""Argument checks done once at the op boundary: a wrong input is a ValueError/TypeError that
names the argument, never a silent wrong answer or a crash inside a kernel."""
from __future__ import annotations

import torch

from .activations import ACTIVATIONS
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


def check_ffn_weights(x, w1, b1, w2=None, b2=None) -> tuple[int, int]:
    """x [..., d], w1 [f, d], b1 [f], w2 [d_out, f], b2 [d_out], all one float dtype and device."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if x.dim() < 1:
        raise ValueError(f"x: expected shape [..., d], got {describe(x)}")
    d = x.shape[-1]
    check_tensor("w1", w1, shape=(None, d), dtype=x.dtype, device=x.device)
    f = w1.shape[0]
    if f == 0:
        raise ValueError(f"w1: needs at least one neuron, got {describe(w1)}")
    check_tensor("b1", b1, shape=(f,), dtype=x.dtype, device=x.device)
    if w2 is not None:
        check_tensor("w2", w2, shape=(None, f), dtype=x.dtype, device=x.device)
        check_tensor("b2", b2, shape=(w2.shape[0],), dtype=x.dtype, device=x.device)
    return d, f


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
