"""Backend selection and the `torch.library` custom ops (autograd + fake kernels).

One op family: the masked FFN, plain or gated (FFNWeights.w_up), and its fused counting.
Backends and what they declare are in ops/backends.py, which one runs a call is decided in
ops/routing.py; here each call builds its `Plan` once (ops/plan.py: token routing + the masks'
static tables, without host syncs), hands the backend the typed objects of ops/call.py and
records which backend ran (`last_backend`). The flat argument lists below exist only because
a custom op needs them (`_flat` / `_unflat`).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from . import routing
from .backends import BACKENDS, caps, module, unavailable_reason
from .call import Counting, FFNOptions, FFNWeights
from .plan import as_mixed, make_plan, mask_tables, route
from .routing import AUTO

ENV_VAR = "NEURONSPEC_BACKEND"
_LAST: dict[str, str] = {}


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Concrete backends that run on `device` (`auto` chooses among them per call)."""
    return [b for b in BACKENDS if unavailable_reason(b, torch.device(device)) is None]


def last_backend(op: str = "masked_ffn") -> str | None:
    """The backend that ran the last `masked_ffn` (or `count`) call in this process, after
    `auto` and CAPS routing (None before any): what benchmarks report as the backend timed."""
    return _LAST.get(op)


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


class Call(NamedTuple):
    """A masked-FFN call apart from x and the weights: the masks' CSR (indices int32, offsets
    int32 [T+1]), task ids (int64 [N], [1] for UNIFORM, empty for a host task), `task` (>= 0,
    -1 mixed, UNIFORM), options and the resolved backend name (or `auto`)."""

    indices: Tensor
    offsets: Tensor
    task_ids: Tensor
    task: int
    opts: FFNOptions
    backend: str


# ---- masked FFN -------------------------------------------------------------------------
# The op bodies live in plain functions: the custom ops (traced by torch.compile) and the eager
# autograd.Function below both call them. `state` = (plan, backend that ran, what it saved).
def _forward(x: Tensor, weights: FFNWeights, call: Call):
    tables = mask_tables(call.indices, call.offsets, weights.w1.shape[0])
    name = routing.ffn_backend(call.backend, tables, call.task, x, call.opts.activation, weights.gated)
    task_ids, task, c = call.task_ids, call.task, caps(name)
    if not c.uniform:
        task_ids, task = as_mixed(task_ids, task, x.shape[0])
    plan = make_plan(tables, task_ids, task, x.shape[0], sort=c.grouping)
    y, saved = module(name).forward(x, weights, plan, call.opts)
    _LAST["masked_ffn"] = name
    return y, (plan, name, saved)


def _backward(dy: Tensor, x: Tensor, weights: FFNWeights, call: Call, state) -> tuple[Tensor, FFNWeights]:
    plan, name, saved = state
    return module(name).backward(dy.contiguous(), x, weights, plan, call.opts, saved)


def _flat(x: Tensor, weights: FFNWeights, call: Call) -> tuple:
    """The custom ops' argument list (the one place its order is spelled, with _unflat)."""
    o = call.opts
    return (x, *weights.tensors(), call.indices, call.offsets, call.task_ids, call.task, o.activation, o.mask_bias,
            call.backend)


def _unflat(args) -> tuple[Tensor, FFNWeights, Call]:
    x, w1, b1, w2, b2, w_up, b_up, indices, offsets, task_ids, task, activation, mask_bias, backend = args
    return x, FFNWeights(w1, b1, w2, b2, w_up, b_up), Call(indices, offsets, task_ids, task,
                                                           FFNOptions(activation, mask_bias), backend)


NUM_WEIGHTS, NUM_ARGS = 6, 14  # of _flat: weights after x, then the call


@torch.library.custom_op("neuronspec::masked_ffn_fwd", mutates_args=())
def masked_ffn_fwd_op(
    x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, w_up: Optional[Tensor], b_up: Optional[Tensor],
    indices: Tensor, offsets: Tensor, task_ids: Tensor, task: int, activation: str, mask_bias: bool, backend: str,
) -> Tensor:
    return _forward(*_unflat(locals().values()))[0]


@masked_ffn_fwd_op.register_fake
def _(*args):
    x, weights, _ = _unflat(args)
    return x.new_empty(x.shape[0], weights.w2.shape[0])


@torch.library.custom_op("neuronspec::masked_ffn_bwd", mutates_args=())
def masked_ffn_bwd_op(
    dy: Tensor, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, w_up: Optional[Tensor],
    b_up: Optional[Tensor], indices: Tensor, offsets: Tensor, task_ids: Tensor, task: int, activation: str,
    mask_bias: bool, backend: str,
) -> list[Tensor]:
    """[dx, dw1, db1, dw2, db2] (+ [dw_up, db_up] when gated). Under torch.compile the backward
    runs the forward's GEMMs again for what it saves (the saved layout is each backend's own; a
    custom op's outputs need static shapes)."""
    args = list(locals().values())
    x, weights, call = _unflat(args[1:])
    dx, grads = _backward(args[0], x, weights, call, _forward(x, weights, call)[1])
    return [g.contiguous() for g in (dx, *grads.tensors()) if g is not None]


@masked_ffn_bwd_op.register_fake
def _(dy, *args):
    x, weights, _ = _unflat(args)
    return [torch.empty_like(t) for t in (x, *weights.tensors()) if t is not None]


def _setup_context(ctx, inputs, output):
    x, weights, call = _unflat(inputs)
    ctx.save_for_backward(x, *weights.tensors(), call.indices, call.offsets, call.task_ids)
    ctx.meta = (call.task, call.opts, call.backend)


def _compiled_backward(ctx, dy):
    x, *ws, indices, offsets, task_ids = ctx.saved_tensors
    weights, call = FFNWeights(*ws), Call(indices, offsets, task_ids, *ctx.meta)
    grads = iter(masked_ffn_bwd_op(dy, *_flat(x, weights, call)))
    dx = next(grads)
    return (dx, *(None if t is None else next(grads) for t in weights.tensors()),
            *[None] * (NUM_ARGS - 1 - NUM_WEIGHTS))


masked_ffn_fwd_op.register_autograd(_compiled_backward, setup_context=_setup_context)


class _EagerMaskedFFN(torch.autograd.Function):
    """Eager twin of the custom ops above: the same op bodies without the custom-op dispatch
    (~100 µs of Python per forward+backward), and the forward's plan and saved tensors reach
    the backward as they are; `masked_ffn_dispatch` uses it unless torch.compile is tracing."""

    @staticmethod
    def forward(ctx, call, x, *weight_tensors):
        weights = FFNWeights(*weight_tensors)
        y, (plan, name, saved) = _forward(x, weights, call)
        ctx.save_for_backward(x, *weight_tensors, *saved)
        ctx.call, ctx.plan, ctx.name = call, plan, name
        ctx.set_materialize_grads(False)
        return y

    @staticmethod
    def backward(ctx, dy):
        if dy is None:  # y did not reach the loss
            return (None,) * (2 + NUM_WEIGHTS)
        x, *rest = ctx.saved_tensors
        weights = FFNWeights(*rest[:NUM_WEIGHTS])
        dx, grads = _backward(dy, x, weights, ctx.call, (ctx.plan, ctx.name, tuple(rest[NUM_WEIGHTS:])))
        return (None, dx, *grads.tensors())


def masked_ffn_dispatch(x: Tensor, weights: FFNWeights, call: Call) -> Tensor:
    """y [N, d_out] through the custom op when torch.compile traces, else through _EagerMaskedFFN."""
    if torch.compiler.is_compiling():
        return masked_ffn_fwd_op(*_flat(x, weights, call))
    return _EagerMaskedFFN.apply(call, x, *weights.tensors())


# ---- fused fc1 + activation + counting ----------------------------------------------------
class CountCall(NamedTuple):
    """A counting call apart from x and fc1's weights: counts int64 [T, f] (updated in place),
    task ids and `task` as in Call, valid bool [N] or None, whether to return H, the
    activation and the resolved backend name."""

    counts: Tensor
    task_ids: Tensor
    task: int
    valid: Optional[Tensor]
    write_output: bool
    activation: str
    backend: str


def _count(x: Tensor, weights: FFNWeights, call: CountCall) -> Tensor:
    name = routing.counting_backend(call.backend, x, call.activation)
    task_ids, task = as_mixed(call.task_ids, call.task, x.shape[0])
    r = route(task_ids, task, call.counts.shape[0], x.shape[0], sort=caps(name).sorted_counting)
    h = module(name).act_count(x, weights, Counting(call.counts, r, call.valid, call.write_output),
                               FFNOptions(call.activation))
    _LAST["count"] = name
    return h


@torch.library.custom_op("neuronspec::fc1_act_count", mutates_args=("counts",))
def fc1_act_count_op(
    x: Tensor, w1: Tensor, b1: Tensor, counts: Tensor, task_ids: Tensor, task: int,
    valid: Optional[Tensor], activation: str, write_output: bool, backend: str,
) -> Tensor:
    return _count(x, FFNWeights(w1, b1), CountCall(counts, task_ids, task, valid, write_output, activation, backend))


def fc1_act_count_dispatch(x: Tensor, weights: FFNWeights, call: CountCall) -> Tensor:
    """The custom op when torch.compile traces, else its body directly (no dispatch cost)."""
    if torch.compiler.is_compiling():
        return fc1_act_count_op(x, weights.w1, weights.b1, call.counts, call.task_ids, call.task, call.valid,
                                call.activation, call.write_output, call.backend)
    return _count(x, weights, call)


@fc1_act_count_op.register_fake
def _(x, w1, b1, counts, *args):
    write_output = args[-2]
    return x.new_empty(x.shape[0] if write_output else 0, w1.shape[0])
