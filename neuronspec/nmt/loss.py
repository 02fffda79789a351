"""The training loss: fairseq's label-smoothed cross-entropy, summed over target tokens."""
from __future__ import annotations

import torch


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, eps: float, pad: int):
    """Summed label-smoothed NLL and plain NLL (nats) over non-pad targets.

    logits [B, L, V]; target [B, L]. fairseq's formula: (1-eps)·nll + eps/V·Σ_v -log p_v."""
    lprobs = torch.nn.functional.log_softmax(logits.float(), dim=-1).view(-1, logits.shape[-1])
    target = target.reshape(-1)
    keep = target != pad
    nll = -lprobs.gather(1, target[:, None]).squeeze(1)
    smooth = -lprobs.mean(-1)
    nll = nll.masked_fill(~keep, 0.0).sum()
    loss = (1 - eps) * nll + eps * smooth.masked_fill(~keep, 0.0).sum()
    return loss, nll.detach()
