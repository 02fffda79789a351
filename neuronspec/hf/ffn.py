"""The FFN modules `wrap` puts into a `transformers` model (docs/design.md §9).

`FusedFFN` (fc1 → act → fc2 layers) and `SpecializedGLU` (gated `mlp`: separate gate/up or
Phi-3's fused `gate_up_proj`) run the masked ops over each token's direction, count
activations, or run dense. A PEFT tuner on a gated FFN's linears runs inside the masked FFN:
LoRA through the op on its effective weight `W + Σ scaling·B A` (so a masked row gets neither
the LoRA contribution nor gradient), any other tuner (or LoRA with active dropout, DoRA or a
LoRA bias) through `_masked_dense`, which calls the tuner modules and keeps only each token's
active neurons. fc1/fc2 layers refuse tuners (`refuse_tuner`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neuronspec.ops import TaskMasks, fc1_act_count, glu_act_count, masked_ffn, masked_glu_ffn
from neuronspec.ops.activations import act
from neuronspec.ops.functional import autocast_inputs

# HF activation name → the ops' name (ops/activations.py)
HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "silu", "silu": "silu",
                  "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def tuner_name(module: nn.Module) -> str | None:
    """'peft.tuners.lora.layer.Linear' for a PEFT tuner layer, else None."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}" if cls.__module__.startswith("peft.") else None


def refuse_tuner(module: nn.Module, where: str) -> None:
    """ValueError naming the PEFT tuner of an fc1/fc2 layer (they hold no separate linears)."""
    name = tuner_name(module)
    if name is not None:
        raise ValueError(f"model: {where} is a PEFT tuner layer ({name}); neuronspec runs tuners only on gated "
                         "FFNs (gate/up/down_proj): target the attention projections of fc1/fc2 models instead")


def _base(module: nn.Module) -> nn.Module:
    """The nn.Linear under a PEFT tuner layer (the module itself otherwise)."""
    return module.get_base_layer() if tuner_name(module) and hasattr(module, "get_base_layer") else module


def linear_params(module: nn.Module, where: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight [out, in], bias [out] or None) that `module` applies as x Wᵀ + b: an nn.Linear's
    own, a LoRA layer's effective weight, or None for a tuner the op cannot express (the caller
    then runs `_masked_dense`)."""
    if tuner_name(module) is None:
        if not isinstance(module, nn.Linear):
            raise ValueError(f"model: {where} is a {type(module).__name__}, expected an nn.Linear or a PEFT tuner")
        return module.weight, module.bias
    base = _base(module)
    if not isinstance(base, nn.Linear) or not hasattr(module, "get_delta_weight"):
        return None
    weight = base.weight
    if getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return weight, base.bias
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        dropout_on = module.training and not isinstance(module.lora_dropout[name], nn.Identity)
        if name in getattr(module, "lora_variant", {}) or module.lora_B[name].bias is not None or dropout_on:
            return None
        weight = weight + module.get_delta_weight(name)
    return weight, base.bias


class Passthrough(nn.Module):
    """Keeps a replaced fc2's parameters (same objects, same state_dict keys) and returns its
    input: the FFN output already came from the layer's FusedFFN."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _SpecializedBase(nn.Module):
    """What both FFN kinds share: the owning Specialization, the layer's masks and counts."""

    def _setup(self, spec, name: str, stack: str, num_neurons: int, activation: str) -> None:
        self._spec, self.layer_name, self.stack = spec, name, stack
        self.num_neurons, self.activation = num_neurons, activation
        self.masks: TaskMasks | None = None
        self.counts: torch.Tensor | None = None

    def _task(self, x: torch.Tensor):
        return self._spec._token_task(x.shape[:-1], x.device)

    def extra_repr(self) -> str:
        m = "dense" if self.masks is None else f"{self.masks.num_tasks} direction masks"
        return f"{self.layer_name}, activation={self.activation}, {m}"


class FusedFFN(_SpecializedBase):
    """fc2(act(fc1(x))) of an fc1/fc2 layer, in place of its fc1 (holds fc1's weight and bias;
    fc2's stay at the layer's `fc2` Passthrough). Masked: `masked_ffn`; counting: `fc1_act_count`
    (every activation of ops/activations.py). The layer's
    activation dropout is applied here between act and fc2, except with masks (the ops have no
    dropout)."""

    def __init__(self, fc1: nn.Linear, fc2: Passthrough, activation: str, activation_dropout: float,
                 spec, name: str, stack: str):
        super().__init__()
        self.weight, self.bias = fc1.weight, fc1.bias
        object.__setattr__(self, "_fc2", fc2)  # not a submodule: its parameters stay under layer.fc2
        self.activation_dropout = activation_dropout
        self._setup(spec, name, stack, fc1.out_features, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.masks is None and self.counts is None:
            h = act(F.linear(x, self.weight, self.bias), self.activation)
            return F.linear(F.dropout(h, p=self.activation_dropout, training=self.training),
                            self._fc2.weight, self._fc2.bias)
        x, w1, b1, w2, b2 = autocast_inputs(x, self.weight, self.bias, self._fc2.weight, self._fc2.bias)
        task = self._task(x)
        if self.counts is not None:
            h = fc1_act_count(x, w1, b1, self.counts, task, self._spec._valid(self.stack, x.shape[:-1]),
                              self.activation)
            return F.linear(F.dropout(h, p=self.activation_dropout, training=self.training), w2, b2)
        return masked_ffn(x, w1, b1, w2, b2, self.masks, task, self.activation, self._spec.mask_bias,
                          self._spec.backend)


class SpecializedGLU(_SpecializedBase):
    """down(act(gate(x)) ⊙ up(x)) in place of a gated `mlp`. Its children are the mlp's own
    linears (or the PEFT tuners put in their place): `gate_proj`, `up_proj`, `down_proj`, or
    Phi-3's `gate_up_proj` (gate rows first, then up rows) and `down_proj`."""

    def __init__(self, mlp: nn.Module, activation: str, spec, name: str, stack: str):
        super().__init__()
        self.fused = hasattr(mlp, "gate_up_proj")
        for attr in self.linear_names():
            setattr(self, attr, getattr(mlp, attr))
        self._setup(spec, name, stack, _base(self.down_proj).in_features, activation)

    def linear_names(self) -> tuple[str, ...]:
        return ("gate_up_proj", "down_proj") if self.fused else ("gate_proj", "up_proj", "down_proj")

    def _params(self) -> tuple | None:
        """(wg, bg, wu, bu, wd, bd) effective, or None when a tuner needs `_masked_dense`."""
        got = [linear_params(getattr(self, a), f"{self.layer_name} {a}") for a in self.linear_names()]
        if any(p is None for p in got):
            return None
        if self.fused:
            (w, b), down = got
            f = self.num_neurons
            return (w[:f], None if b is None else b[:f], w[f:], None if b is None else b[f:], *down)
        return (*got[0], *got[1], *got[2])

    def _gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fused:
            return self.gate_up_proj(x).chunk(2, dim=-1)
        return self.gate_proj(x), self.up_proj(x)

    def _masked_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The masked FFN through the modules themselves (any PEFT tuner): an inactive neuron's
        gate and up pre-activations are their base biases (0 without bias or with mask_bias),
        so neither its weights nor a tuner contribute or get gradient there."""
        g, u = self._gate_up(x)
        keep = self.masks.to_dense().to(x.device)[self._task(x)]  # [f] or [..., f]
        base = [_base(getattr(self, a)).bias for a in self.linear_names()[:-1]]
        if self.fused:
            f = self.num_neurons
            base = [None, None] if base[0] is None else [base[0][:f], base[0][f:]]
        bg, bu = (None if b is None or self._spec.mask_bias else b for b in base[:2])
        g = torch.where(keep, g, 0.0 if bg is None else bg.to(g.dtype))
        u = torch.where(keep, u, 0.0 if bu is None else bu.to(u.dtype))
        return self.down_proj(act(g, self.activation) * u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.masks is None and self.counts is None:
            g, u = self._gate_up(x)
            return self.down_proj(act(g, self.activation) * u)
        params = self._params()
        if self.counts is not None:
            if params is None:
                raise ValueError(f"model: {self.layer_name} has PEFT tuners that counting cannot read; count the "
                                 "model before adding them")
            x, wg, bg = autocast_inputs(x, *params[:2])
            a = glu_act_count(x, wg, bg, self.counts, self._task(x), self._spec._valid(self.stack, x.shape[:-1]),
                              self.activation)
            _, u = self._gate_up(x)
            return self.down_proj(a * u)
        if params is None:
            return self._masked_dense(x)
        x, wg, bg, wu, bu, wd, bd = autocast_inputs(x, *params)
        return masked_glu_ffn(x, wg, bg, wu, bu, wd, bd, self.masks, self._task(x), self.activation,
                              self._spec.mask_bias, self._spec.backend)
