"""Activations used by the FFN ops and their derivatives (exact erf GELU, like nn.GELU())."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ACTIVATIONS = ("relu", "gelu")


def act(z: torch.Tensor, activation: str) -> torch.Tensor:
    """act(z) elementwise."""
    return torch.relu(z) if activation == "relu" else F.gelu(z)


def act_grad(z: torch.Tensor, activation: str) -> torch.Tensor:
    """act'(z) elementwise (relu'(0) = 0, as autograd does)."""
    if activation == "relu":
        return (z > 0).to(z.dtype)
    zf = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    cdf = 0.5 * (1.0 + torch.erf(zf * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * zf * zf) * (1.0 / math.sqrt(2.0 * math.pi))
    return (cdf + zf * pdf).to(z.dtype)


def act_backward(dh: torch.Tensor, saved: torch.Tensor, activation: str) -> torch.Tensor:
    """dZ = dH ⊙ act'(Z), one kernel; `saved` is H for ReLU (H > 0 ⇔ Z > 0) and Z for GELU."""
    if activation == "relu":
        return torch.ops.aten.threshold_backward(dh, saved, 0)
    return torch.ops.aten.gelu_backward(dh, saved)


def act_inplace(z: torch.Tensor, activation: str) -> torch.Tensor:
    return z.relu_() if activation == "relu" else act(z, activation)
