"""The backend table: every backend's module, and what each one declares it can run (CAPS).

Adding a backend is one module with a `CAPS = Caps(...)` and the protocol below, plus one line
in BACKENDS (docs/design.md, "How to add a backend"). A backend module provides

    CAPS                                     what it runs (read here, used by ops/routing.py)
    available(device) -> None | str          optional: None if it runs on `device` (beyond
                                             CAPS.dtypes' device types), else why not
    forward(x, weights, plan, opts) -> (y [N, d_out], saved tuple)
    backward(dy, x, weights, plan, opts, saved) -> (dx, FFNWeights of gradients)
    act_count(x, weights, counting, opts) -> H [N, f] or [0, f]      (only when CAPS.counting)

with `weights` an FFNWeights, `opts` FFNOptions, `counting` Counting (ops/call.py) and `plan`
a Plan (ops/plan.py). Inputs arrive validated, 2-D and contiguous, biases present (the public
ops pass zeros for absent ones), and only calls its CAPS declare.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from types import ModuleType

import torch

from .activations import ACTIVATIONS

BACKENDS = {
    "reference": "neuronspec.ops.reference",
    "maskmul": "neuronspec.ops.maskmul_backend",
    "torch": "neuronspec.ops.torch_backend",
    "triton": "neuronspec.ops.triton_backend",
    "cuda": "neuronspec.ops.cuda_backend",
}
ALL_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Caps:
    """What a backend runs.

    dtypes      {device type: float dtypes it takes there}; the keys are the device types
    activations names from ops/activations.py
    gated       takes gated FFNs (FFNWeights.w_up)
    grouping    mixed batches must reach it sorted by task (plan.order, plan.starts)
    uniform     runs UNIFORM calls (task id on the device, ops/plan.py); else they reach it as
                mixed calls
    counting    has act_count (else a counting call routes to the device's counting backend)
    sorted_counting  its act_count needs the tokens sorted by task"""

    dtypes: dict
    activations: tuple = ACTIVATIONS
    gated: bool = False
    grouping: bool = False
    uniform: bool = False
    counting: bool = False
    sorted_counting: bool = False

    def refuses(self, device: torch.device, dtype: torch.dtype, activation: str, gated: bool) -> str | None:
        """None if a call of this kind is declared, else what is not."""
        if device.type not in self.dtypes:
            return f"runs on {sorted(self.dtypes)}, not {device.type}"
        if dtype not in self.dtypes[device.type]:
            return f"takes {[str(d).replace('torch.', '') for d in self.dtypes[device.type]]} on {device.type}, not {dtype}"
        if activation not in self.activations:
            return f"runs the activations {self.activations}, not {activation!r}"
        if gated and not self.gated:
            return "does not run gated FFNs (w_up)"
        return None


def module(name: str) -> ModuleType:
    path = BACKENDS[name]
    return sys.modules.get(path) or importlib.import_module(path)


def caps(name: str) -> Caps:
    return module(name).CAPS


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """None if backend `name` (or `auto`, which picks per call) can run on `device`, else a
    sentence saying why not."""
    if name not in BACKENDS:
        return None if name == "auto" else f"unknown backend {name!r}; the backends are {list(BACKENDS)}"
    try:
        mod = module(name)
    except ImportError as e:
        return f"cannot import {BACKENDS[name]}: {e}"
    device = torch.device(device)
    if device.type not in mod.CAPS.dtypes:
        return f"it runs on {sorted(mod.CAPS.dtypes)} tensors, not {device.type} (declared in {mod.__name__}.CAPS)"
    available = getattr(mod, "available", None)
    return None if available is None else available(device)
