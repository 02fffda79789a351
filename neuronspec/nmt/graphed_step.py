"""Training micro-batches through CUDA graphs: `neuronspec train --cuda-graphs`.

A specialized step launches many small kernels (docs/design.md §3); a CUDA graph replays them
with no host work. `GraphedTrainStep` runs one micro-batch's forward + backward (loss included)
as a graph captured once per batch *shape* (ops/graphs.py `GraphedLoss`):

- each batch is padded to a shape bucket (`shape_bucket`: 4 sizes per octave for sentences,
  source and target length, each at most 25 % larger; on the built-in corpus 14 % more cells,
  44–78 shapes) by filler rows and pad columns that change neither the loss nor a gradient
  (data/batching.py `pad_batch`);
- a homogeneous batch's direction goes in as a 0-dim device tensor (ops/plan.py UNIFORM: masks
  computed at the widest direction's width), so one graph serves every direction; a mixed
  batch passes its [B] task tensor;
- the label-smoothed loss and bf16 autocast run inside the graph (autocast's weight-cast cache
  off, as capture requires);
- gradients come back in a graph's static buffers: when more micro-batches follow in the same
  update, `own_grads` copies them out first (a later replay of the same graph would overwrite
  them).
The optimizer step, gradient clipping and the EMA stay eager. Not with DDP (one process).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..data.batching import Batch, pad_batch, shape_bucket
from ..ops.graphs import GraphedLoss
from .loss import label_smoothed_loss
from .model import Transformer

PER_OCTAVE = 4  # shape buckets per octave of batch size and length


def bucket_shape(batch: Batch) -> tuple[int, int, int]:
    """(rows, source length, target length) of `batch`'s shape bucket."""
    return tuple(shape_bucket(n, PER_OCTAVE) for n in (len(batch), batch.src.shape[1], batch.tgt_in.shape[1]))


class GraphedTrainStep:
    """`step(batch) -> (loss, nll)` (summed over the batch's target tokens, as
    label_smoothed_loss), forward from a CUDA graph; call `loss.backward()` as usual.

    `batch` is on the model's device; `mixed` says whether batches mix directions (else every
    batch has one). `capture` is for tests (see GraphedLoss)."""

    def __init__(self, model: Transformer, *, label_smoothing: float, amp: bool, mixed: bool,
                 max_graphs: int = 32, capture: Callable | None = None):
        self.model, self.eps, self.amp, self.mixed = model, label_smoothing, amp, mixed
        self.device_type = next(model.parameters()).device.type
        self.graphs = GraphedLoss(model, self._loss, max_graphs=max_graphs, capture=capture)
        self._owned: set[int] = set()

    def _loss(self, model: nn.Module, key, src, tgt_in, tgt_out, task):
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            logits = model.decode(tgt_in, model.encode(src, task), task)
            return label_smoothed_loss(logits, tgt_out, self.eps, model.cfg.pad)

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        padded = pad_batch(batch, *bucket_shape(batch))
        task = padded.task if self.mixed else padded.task[0]  # [B], or 0-dim: one graph for every direction
        return self.graphs("mixed" if self.mixed else "uniform", padded.src, padded.tgt_in, padded.tgt_out, task)

    def start_update(self) -> None:
        """Call before an update's first micro-batch (after zeroing the gradients)."""
        self._owned.clear()

    def own_grads(self) -> None:
        """Copy gradients out of the graphs' static buffers (once per parameter and update), so
        that the next micro-batch's replay accumulates into them instead of overwriting them."""
        for p in self.model.parameters():
            if p.grad is not None and id(p) not in self._owned:
                p.grad = p.grad.clone()
                self._owned.add(id(p))

    @property
    def captures(self) -> int:
        return self.graphs.captures

    def __len__(self) -> int:
        return len(self.graphs)
