"""Backend selection and the `torch.library` custom ops (autograd + fake kernels).

A backend is a module with
    available(device) -> None | str (why not)
    masked_ffn_fwd(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias)
        -> (y [N, d_out], z [N, f] saved for backward, layout private to the backend)
    masked_ffn_bwd(dy, x, w1, b1, w2, b2, indices, offsets, task_ids, task, z, activation,
        mask_bias) -> (dx, dw1, db1, dw2, db2)
    fc1_act_count(x, w1, b1, counts, task_ids, task, valid, activation, write_output) -> h
Inputs reach a backend validated, 2-D and contiguous; `task >= 0` means every token belongs
to that task (task_ids is then empty), `task == -1` means per-token `task_ids` [N] int64.
"""
from __future__ import annotations

import importlib
import os
from typing import Optional

import torch
from torch import Tensor

from .validation import check_task_range

BACKENDS = {
    "reference": "neuronspec.ops.reference",
    "torch": "neuronspec.ops.torch_backend",
    "triton": "neuronspec.ops.triton_backend",
    "cuda": "neuronspec.ops.cuda_backend",
}
ENV_VAR = "NEURONSPEC_BACKEND"


def _module(name: str):
    return importlib.import_module(BACKENDS[name])


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """None if backend `name` can run on `device`, else a sentence saying why not."""
    try:
        module = _module(name)
    except ImportError as e:
        return f"cannot import {BACKENDS[name]}: {e}"
    return module.available(torch.device(device))


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    return [b for b in BACKENDS if unavailable_reason(b, torch.device(device)) is None]


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Argument, else $NEURONSPEC_BACKEND, else the fastest correct backend for `device`."""
    return _resolve(backend, os.environ.get(ENV_VAR) or None, str(device))


_RESOLVED: dict[tuple, str] = {}


@torch.compiler.assume_constant_result  # evaluated once at trace time under torch.compile
def _resolve(backend: str | None, env_backend: str | None, device: str) -> str:
    key = (backend, env_backend, device)
    if key not in _RESOLVED:
        _RESOLVED[key] = _choose(backend, env_backend, torch.device(device))
    return _RESOLVED[key]


def _choose(backend: str | None, env_backend: str | None, device: torch.device) -> str:
    source = "backend"
    if backend is None and env_backend:
        backend, source = env_backend, ENV_VAR
    if backend is None:
        preferred = ("triton", "cuda", "torch") if device.type == "cuda" else ("torch",)
        return next(b for b in preferred if unavailable_reason(b, device) is None)
    if backend not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    why = unavailable_reason(backend, device)
    if why is not None:
        raise ValueError(f"{source}: backend {backend!r} is unavailable on {device}: {why}")
    return backend


# ---- masked FFN -------------------------------------------------------------------------
# The op bodies live in plain functions: the custom ops (traced by torch.compile) and the eager
# autograd.Function below both call them.
def _fwd(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend):
    check_task_range(task_ids, offsets.numel() - 1)
    return _module(backend).masked_ffn_fwd(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias)


def _bwd(dy, x, w1, b1, w2, b2, indices, offsets, task_ids, task, z, activation, mask_bias, backend):
    return _module(backend).masked_ffn_bwd(
        dy.contiguous(), x, w1, b1, w2, b2, indices, offsets, task_ids, task, z, activation, mask_bias
    )


@torch.library.custom_op("neuronspec::masked_ffn_fwd", mutates_args=())
def masked_ffn_fwd(
    x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, indices: Tensor, offsets: Tensor,
    task_ids: Tensor, task: int, activation: str, mask_bias: bool, backend: str,
) -> tuple[Tensor, Tensor]:
    return _fwd(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend)


@masked_ffn_fwd.register_fake
def _(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend):
    return x.new_empty(x.shape[0], w2.shape[0]), x.new_empty(x.shape[0], w1.shape[0])


@torch.library.custom_op("neuronspec::masked_ffn_bwd", mutates_args=())
def masked_ffn_bwd(
    dy: Tensor, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, indices: Tensor,
    offsets: Tensor, task_ids: Tensor, task: int, z: Tensor, activation: str, mask_bias: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _bwd(dy, x, w1, b1, w2, b2, indices, offsets, task_ids, task, z, activation, mask_bias, backend)
    return tuple(g.contiguous() for g in grads)


@masked_ffn_bwd.register_fake
def _(dy, x, w1, b1, w2, b2, indices, offsets, task_ids, task, z, activation, mask_bias, backend):
    return tuple(torch.empty_like(t) for t in (x, w1, b1, w2, b2))


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend = inputs
    ctx.save_for_backward(x, w1, b1, w2, b2, indices, offsets, task_ids, output[1])
    ctx.task, ctx.activation, ctx.mask_bias, ctx.backend = task, activation, mask_bias, backend
    ctx.set_materialize_grads(False)  # z is never differentiated: no [N, f] zero gradient for it


def _input_grads(ctx, dy, bwd):
    """The 12 input gradients of masked_ffn_fwd from what _setup_context saved, through `bwd`."""
    if dy is None:  # y did not reach the loss
        return (None,) * 12
    x, w1, b1, w2, b2, indices, offsets, task_ids, z = ctx.saved_tensors
    grads = bwd(dy, x, w1, b1, w2, b2, indices, offsets, task_ids, ctx.task, z, ctx.activation, ctx.mask_bias,
                ctx.backend)
    return (*grads, None, None, None, None, None, None, None)


masked_ffn_fwd.register_autograd(lambda ctx, dy, _dz: _input_grads(ctx, dy, masked_ffn_bwd),
                                 setup_context=_setup_context)


class _EagerMaskedFFN(torch.autograd.Function):
    """Eager twin of the custom op above: the same op bodies without the custom-op dispatch,
    which costs ~100 µs of Python per forward+backward (measured on CPU with no-op kernels);
    `masked_ffn` uses it unless torch.compile is tracing."""

    @staticmethod
    def forward(ctx, *inputs):
        y, z = _fwd(*inputs)
        _setup_context(ctx, inputs, (y, z))
        return y

    @staticmethod
    def backward(ctx, dy):
        return _input_grads(ctx, dy, _bwd)


def masked_ffn(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend) -> Tensor:
    """y [N, d_out] through the custom op when torch.compile traces, else through _EagerMaskedFFN."""
    args = (x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend)
    if torch.compiler.is_compiling():
        return masked_ffn_fwd(*args)[0]
    return _EagerMaskedFFN.apply(*args)


# ---- fused fc1 + activation + counting ----------------------------------------------------
def _count(x, w1, b1, counts, task_ids, task, valid, activation, write_output, backend):
    check_task_range(task_ids, counts.shape[0])
    return _module(backend).fc1_act_count(x, w1, b1, counts, task_ids, task, valid, activation, write_output)


@torch.library.custom_op("neuronspec::fc1_act_count", mutates_args=("counts",))
def fc1_act_count(
    x: Tensor, w1: Tensor, b1: Tensor, counts: Tensor, task_ids: Tensor, task: int,
    valid: Optional[Tensor], activation: str, write_output: bool, backend: str,
) -> Tensor:
    return _count(x, w1, b1, counts, task_ids, task, valid, activation, write_output, backend)


def fc1_act_count_call(x, w1, b1, counts, task_ids, task, valid, activation, write_output, backend) -> Tensor:
    """The custom op when torch.compile traces, else its body directly (no dispatch cost)."""
    args = (x, w1, b1, counts, task_ids, task, valid, activation, write_output, backend)
    return fc1_act_count(*args) if torch.compiler.is_compiling() else _count(*args)


@fc1_act_count.register_fake
def _(x, w1, b1, counts, task_ids, task, valid, activation, write_output, backend):
    return x.new_empty(x.shape[0] if write_output else 0, w1.shape[0])
