"""The activations of every FFN op, in one table, with their derivatives.

    relu        max(z, 0)                    (relu'(0) = 0, as autograd)
    gelu        exact erf GELU, like nn.GELU()
    gelu_tanh   GELU's tanh approximation (HF `gelu_pytorch_tanh`, `gelu_new`)
    silu        z · sigmoid(z) (HF `silu`, `swish`)

`code` is the activation's number in the Triton and CUDA kernels (None: no kernel has it; a
backend declares the activations it runs in its CAPS). act(z) > 0 ⇔ z > 0 for all four, which
is what counting records.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def _gelu_grad(z: torch.Tensor) -> torch.Tensor:
    zf = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    cdf = 0.5 * (1.0 + torch.erf(zf * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * zf * zf) * (1.0 / math.sqrt(2.0 * math.pi))
    return (cdf + zf * pdf).to(z.dtype)


@dataclass(frozen=True)
class Activation:
    """forward(z); backward(dh, z) = dh ⊙ act'(z) in one kernel (relu's also takes H for z:
    H > 0 ⇔ Z > 0, so backends save H instead of Z when `saves_output`); grad(z) = act'(z)."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor], torch.Tensor]
    code: int | None
    saves_output: bool = False


TABLE: dict[str, Activation] = {
    "relu": Activation(torch.relu, lambda dh, z: torch.ops.aten.threshold_backward(dh, z, 0),
                       lambda z: (z > 0).to(z.dtype), code=0, saves_output=True),
    "gelu": Activation(F.gelu, torch.ops.aten.gelu_backward, _gelu_grad, code=1),
    "gelu_tanh": Activation(lambda z: F.gelu(z, approximate="tanh"),
                            lambda dh, z: torch.ops.aten.gelu_backward(dh, z, approximate="tanh"),
                            lambda z: torch.ops.aten.gelu_backward(torch.ones_like(z), z, approximate="tanh"),
                            code=None),
    "silu": Activation(F.silu, torch.ops.aten.silu_backward,
                       lambda z: torch.ops.aten.silu_backward(torch.ones_like(z), z), code=None),
}
ACTIVATIONS = tuple(TABLE)


def act(z: torch.Tensor, activation: str) -> torch.Tensor:
    """act(z) elementwise."""
    return TABLE[activation].forward(z)


def act_grad(z: torch.Tensor, activation: str) -> torch.Tensor:
    """act'(z) elementwise."""
    return TABLE[activation].grad(z)


def act_backward(dh: torch.Tensor, saved: torch.Tensor, activation: str) -> torch.Tensor:
    """dZ = dH ⊙ act'(Z), one kernel; `saved` is what `saved_for_backward` kept (H or Z), or Z."""
    return TABLE[activation].backward(dh, saved)


def act_inplace(z: torch.Tensor, activation: str) -> torch.Tensor:
    """act(z), in z's memory where the activation has an in-place kernel (relu)."""
    return z.relu_() if activation == "relu" else act(z, activation)


def saved_for_backward(z: torch.Tensor, h: torch.Tensor, activation: str) -> torch.Tensor:
    """What a backend keeps for act_backward: H for relu (frees Z), else Z."""
    return h if TABLE[activation].saves_output else z


def from_saved(saved: torch.Tensor, activation: str) -> torch.Tensor:
    """H = act(Z) from what saved_for_backward kept."""
    return saved if TABLE[activation].saves_output else act(saved, activation)
