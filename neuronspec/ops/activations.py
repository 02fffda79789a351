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
