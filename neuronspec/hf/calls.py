"""What a wrapped model's calls carry (docs/design.md §9): the direction travels with the call.

`install(spec)` sets instance attributes on the model (removed by `uninstall`):
    forward(..., task_ids=None, direction=None)   the call's directions (an id, a name, a list or a
                                                  tensor [B]); else the ones of `spec.direction(...)`
    generate(..., task_ids=None, direction=None)  the same for every step and the encoder call
    save_pretrained(folder, ...)                  also writes the masks and marks the config
`forward`'s signature names `task_ids` and `direction`, so the Trainer keeps those dataset
columns. Gradient checkpointing: `pin_checkpointing` wraps every `_gradient_checkpointing_func`
of the model so that the function checkpointed runs under the directions of its forward call;
the recomputation in backward reuses them whatever is set by then (reentrant or not).
"""
from __future__ import annotations

import functools
import inspect
import types

from torch import nn


class PinnedCheckpoint:
    """A `_gradient_checkpointing_func` that runs the checkpointed function (at forward and at
    recomputation) under the directions current when it was called."""

    def __init__(self, inner, spec):
        self.inner, self.spec = inner, spec

    def __call__(self, fn, *args, **kwargs):
        return self.inner(functools.partial(self.spec._run_with, self.spec._active_ids(), fn), *args, **kwargs)


def pin_checkpointing(spec) -> None:
    """Wrap the model's checkpointing functions (set by `gradient_checkpointing_enable`, before or
    after `wrap`) in PinnedCheckpoint; cheap when already done."""
    for module in spec._checkpointed:
        inner = module.__dict__.get("_gradient_checkpointing_func")
        if inner is not None and not isinstance(inner, PinnedCheckpoint):
            module._gradient_checkpointing_func = PinnedCheckpoint(inner, spec)


def unpin_checkpointing(spec) -> None:
    for module in spec._checkpointed:
        inner = module.__dict__.get("_gradient_checkpointing_func")
        if isinstance(inner, PinnedCheckpoint):
            module._gradient_checkpointing_func = inner.inner


def _call_ids(task_ids, direction):
    if task_ids is not None and direction is not None:
        raise ValueError("task_ids, direction: give one of them (both name the call's directions)")
    return task_ids if task_ids is not None else direction


def _with_direction_params(fn, signature: inspect.Signature):
    """fn with `signature` plus keyword-only task_ids and direction (before **kwargs)."""
    params = [p for p in signature.parameters.values()]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in ("task_ids", "direction")]
    cut = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    fn.__signature__ = signature.replace(parameters=[self_param, *params[:cut], *extra, *params[cut:]])
    return fn


def _inner(model: nn.Module, name: str):
    """The method `name` that wrap's attribute wraps: the instance attribute set before `wrap`
    (e.g. by accelerate), else the class's. Read from the model at each call, so a deep copy of
    a wrapped model runs its own parameters."""
    before = model._neuronspec._overrides.get(name)
    return before if before is not None else getattr(type(model), name).__get__(model)


def install(spec) -> None:
    """Set the model's forward, generate and save_pretrained attributes (module docstring). They
    capture nothing: each call reads the model's own `_neuronspec`."""
    model: nn.Module = spec.model
    spec._overrides = {n: model.__dict__.get(n) for n in ("forward", "generate", "save_pretrained")}
    signature = inspect.signature(model.forward)

    def forward(self, *args, task_ids=None, direction=None, **kwargs):
        return self._neuronspec._forward(_inner(self, "forward"), args, kwargs, _call_ids(task_ids, direction))

    functools.update_wrapper(forward, model.forward, assigned=("__doc__", "__name__", "__qualname__"))
    model.forward = types.MethodType(_with_direction_params(forward, signature), model)
    if hasattr(model, "generate"):
        def generate(self, *args, task_ids=None, direction=None, **kwargs):
            ids = _call_ids(task_ids, direction)
            if ids is None:
                return _inner(self, "generate")(*args, **kwargs)
            with self._neuronspec.direction(ids):
                return _inner(self, "generate")(*args, **kwargs)

        functools.update_wrapper(generate, model.generate, assigned=("__doc__", "__name__", "__qualname__"))
        model.generate = types.MethodType(generate, model)
    if hasattr(model, "save_pretrained"):
        def save_pretrained(self, save_directory, *args, **kwargs):
            return self._neuronspec._save_pretrained(_inner(self, "save_pretrained"), save_directory, args, kwargs)

        functools.update_wrapper(save_pretrained, model.save_pretrained, assigned=("__doc__", "__name__",
                                                                                   "__qualname__"))
        model.save_pretrained = types.MethodType(save_pretrained, model)


def uninstall(spec) -> None:
    model = spec.model
    for name, before in spec._overrides.items():
        if before is None:
            model.__dict__.pop(name, None)
        else:
            setattr(model, name, before)
    spec._overrides = {}
    unpin_checkpointing(spec)
