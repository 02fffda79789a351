"""Backend selection and the `torch.library` custom ops (autograd + fake kernels).

A backend is a module with
    available(device) -> None | str (why not)
    masked_ffn_fwd(x, w1, b1, w2, b2, plan, activation, mask_bias) -> (y [N, d_out], saved tuple)
    masked_ffn_bwd(dy, x, w1, b1, w2, b2, plan, saved, activation, mask_bias) -> (dx, dw1, db1, dw2, db2)
    act_count(x, w1, b1, counts, routing, valid, activation, write_output) -> h   (not `maskmul`)
Inputs reach a backend validated, 2-D and contiguous, with one `Plan` per call (ops/plan.py:
token routing + the masks' static tables, built here once, without host syncs). The default,
`auto`, picks per call between gathering the active neurons and the dense mask-multiply by the
call's regime (ops/routing.py).
"""
from __future__ import annotations

import importlib
import os
from typing import Optional

import torch
from torch import Tensor

from .plan import as_mixed, make_plan, mask_tables, route
from .routing import auto_backend

BACKENDS = {
    "reference": "neuronspec.ops.reference",
    "maskmul": "neuronspec.ops.maskmul_backend",
    "torch": "neuronspec.ops.torch_backend",
    "triton": "neuronspec.ops.triton_backend",
    "cuda": "neuronspec.ops.cuda_backend",
}
ENV_VAR = "NEURONSPEC_BACKEND"
AUTO = "auto"
GROUPING = ("torch", "triton", "cuda")  # backends that take mixed batches sorted by task from the plan
UNIFORM_NATIVE = ("torch", "maskmul")  # backends with a UNIFORM path (the others run it as mixed)


def _module(name: str):
    return importlib.import_module(BACKENDS[name])


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """None if backend `name` can run on `device`, else a sentence saying why not."""
    if name == AUTO:
        return None
    try:
        module = _module(name)
    except ImportError as e:
        return f"cannot import {BACKENDS[name]}: {e}"
    return module.available(torch.device(device))


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Concrete backends that run on `device` (`auto` chooses among them per call)."""
    return [b for b in BACKENDS if unavailable_reason(b, torch.device(device)) is None]


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Argument, else $NEURONSPEC_BACKEND, else `auto` (per call: gathering where measured
    faster, else the dense mask-multiply; ops/routing.py)."""
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
    if backend is None or backend == AUTO:
        return AUTO
    if backend not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {backend!r}; choose one of {sorted([AUTO, *BACKENDS])}")
    why = unavailable_reason(backend, device)
    if why is not None:
        raise ValueError(f"{source}: backend {backend!r} is unavailable on {device}: {why}")
    return backend


def counting_backend(name: str, device: torch.device) -> str:
    """The backend that counts for `name`: auto and maskmul (whose count would be the plain
    fc1 + act anyway) use the device's fused counting kernels: triton on CUDA, else torch."""
    if name not in (AUTO, "maskmul"):
        return name
    preferred = ("triton", "torch") if device.type == "cuda" else ("torch",)
    return next(b for b in preferred if unavailable_reason(b, device) is None)


# ---- masked FFN -------------------------------------------------------------------------
# The op bodies live in plain functions: the custom ops (traced by torch.compile) and the eager
# autograd.Function below both call them. `state` = (plan, backend that ran, what it saved).
def _forward(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend):
    tables = mask_tables(indices, offsets, w1.shape[0])
    name = auto_backend(tables, task, x) if backend == AUTO else backend
    if name not in UNIFORM_NATIVE:
        task_ids, task = as_mixed(task_ids, task, x.shape[0])
    plan = make_plan(tables, task_ids, task, x.shape[0], sort=name in GROUPING)
    y, saved = _module(name).masked_ffn_fwd(x, w1, b1, w2, b2, plan, activation, mask_bias)
    return y, (plan, name, saved)


def _backward(dy, x, w1, b1, w2, b2, state, activation, mask_bias):
    plan, name, saved = state
    return _module(name).masked_ffn_bwd(dy.contiguous(), x, w1, b1, w2, b2, plan, saved, activation, mask_bias)


@torch.library.custom_op("neuronspec::masked_ffn_fwd", mutates_args=())
def masked_ffn_fwd_op(
    x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, indices: Tensor, offsets: Tensor,
    task_ids: Tensor, task: int, activation: str, mask_bias: bool, backend: str,
) -> Tensor:
    return _forward(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend)[0]


@masked_ffn_fwd_op.register_fake
def _(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend):
    return x.new_empty(x.shape[0], w2.shape[0])


@torch.library.custom_op("neuronspec::masked_ffn_bwd", mutates_args=())
def masked_ffn_bwd_op(
    dy: Tensor, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, indices: Tensor,
    offsets: Tensor, task_ids: Tensor, task: int, activation: str, mask_bias: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Under torch.compile the backward runs the forward's GEMMs again for what it saves (the
    saved layout is each backend's own; a custom op's outputs need static shapes)."""
    state = _forward(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend)[1]
    grads = _backward(dy, x, w1, b1, w2, b2, state, activation, mask_bias)
    return tuple(g.contiguous() for g in grads)


@masked_ffn_bwd_op.register_fake
def _(dy, x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend):
    return tuple(torch.empty_like(t) for t in (x, w1, b1, w2, b2))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8])
    ctx.task, ctx.activation, ctx.mask_bias, ctx.backend = inputs[8:]


def _compiled_backward(ctx, dy):
    x, w1, b1, w2, b2, indices, offsets, task_ids = ctx.saved_tensors
    grads = masked_ffn_bwd_op(dy, x, w1, b1, w2, b2, indices, offsets, task_ids, ctx.task, ctx.activation,
                           ctx.mask_bias, ctx.backend)
    return (*grads, None, None, None, None, None, None, None)


masked_ffn_fwd_op.register_autograd(_compiled_backward, setup_context=_setup_context)


class _EagerMaskedFFN(torch.autograd.Function):
    """Eager twin of the custom ops above: the same op bodies without the custom-op dispatch
    (~100 µs of Python per forward+backward), and the forward's plan and saved tensors reach
    the backward as they are; `masked_ffn_dispatch` uses it unless torch.compile is tracing."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend):
        y, (plan, name, saved) = _forward(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation,
                                          mask_bias, backend)
        ctx.save_for_backward(x, w1, b1, w2, b2, *saved)
        ctx.plan, ctx.name, ctx.activation, ctx.mask_bias = plan, name, activation, mask_bias
        ctx.set_materialize_grads(False)
        return y

    @staticmethod
    def backward(ctx, dy):
        if dy is None:  # y did not reach the loss
            return (None,) * 12
        x, w1, b1, w2, b2, *saved = ctx.saved_tensors
        grads = _backward(dy, x, w1, b1, w2, b2, (ctx.plan, ctx.name, tuple(saved)), ctx.activation, ctx.mask_bias)
        return (*grads, None, None, None, None, None, None, None)


def masked_ffn_dispatch(x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend) -> Tensor:
    """y [N, d_out] through the custom op when torch.compile traces, else through _EagerMaskedFFN."""
    args = (x, w1, b1, w2, b2, indices, offsets, task_ids, task, activation, mask_bias, backend)
    if torch.compiler.is_compiling():
        return masked_ffn_fwd_op(*args)
    return _EagerMaskedFFN.apply(*args)


# ---- fused fc1 + activation + counting ----------------------------------------------------
def _count(x, w1, b1, counts, task_ids, task, valid, activation, write_output, backend):
    name = counting_backend(backend, x.device)
    task_ids, task = as_mixed(task_ids, task, x.shape[0])
    routing = route(task_ids, task, counts.shape[0], x.shape[0], sort=name in ("triton", "cuda"))
    return _module(name).act_count(x, w1, b1, counts, routing, valid, activation, write_output)


@torch.library.custom_op("neuronspec::fc1_act_count", mutates_args=("counts",))
def fc1_act_count_op(
    x: Tensor, w1: Tensor, b1: Tensor, counts: Tensor, task_ids: Tensor, task: int,
    valid: Optional[Tensor], activation: str, write_output: bool, backend: str,
) -> Tensor:
    return _count(x, w1, b1, counts, task_ids, task, valid, activation, write_output, backend)


def fc1_act_count_dispatch(x, w1, b1, counts, task_ids, task, valid, activation, write_output, backend) -> Tensor:
    """The custom op when torch.compile traces, else its body directly (no dispatch cost)."""
    args = (x, w1, b1, counts, task_ids, task, valid, activation, write_output, backend)
    return fc1_act_count_op(*args) if torch.compiler.is_compiling() else _count(*args)


@fc1_act_count_op.register_fake
def _(x, w1, b1, counts, task_ids, task, valid, activation, write_output, backend):
    return x.new_empty(x.shape[0] if write_output else 0, w1.shape[0])
