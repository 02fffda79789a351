"""CUDA graphs for training steps: forward + backward of a loss, captured once per static shape.

A specialized step launches many small kernels (docs/design.md §3: 14–44 ops per masked FFN
call), so on a GPU its host work can outweigh its GPU time. `GraphedLoss` captures the forward
and backward of `loss_fn(model, key, *tensors)` with `torch.cuda.make_graphed_callables` and
replays them; the optimizer step stays eager (any optimizer; fused Adam is one launch).

One graph per (key, shapes/dtypes of the tensors, masks fingerprint, training mode):
- `key` holds the Python values the step branches on — for a homogeneous batch its int
  direction, which selects that direction's gathered shapes and is baked into the graph;
- the tensors are copied into the graph's static inputs on every call, so a replay computes on
  the new token and task ids: the per-batch routing (sort, group bounds, range check) runs
  inside the graph, and nothing captured reads a table that depends on the batch — a stale
  permutation on replay is impossible by construction;
- the masks fingerprint is the identity and version of every SpecializedFFN's index tensor:
  new masks (`set_masks`, or an in-place change) get a new capture.
Capture needs a CUDA device, no host syncs in the step (tests/test_plan.py audits the ops) and
every mask table built before capture: `prepare_tables` builds them all before each capture
(not trusting the warm-up iterations to touch every one), and a table built during a capture
raises (ops/memo.py forbid_in_capture; tests/test_graphs.py runs a step under an emulated
capture and fails on any table built, tensor made from host data or host read there). Shapes must repeat
to pay off: pad batches to shape buckets (data/batching.py `shape_bucket`, `pad_batch`) and
pass a homogeneous batch's direction as a 0-dim device tensor (one graph for every direction,
ops/plan.py UNIFORM). At most `max_graphs` are kept, least recently used evicted.

All graphs of one GraphedLoss share one memory pool and replay in any order (least recently
used, not capture order). That is safe because a graph's forward and backward always replay
back to back, no graph reads another's memory, what outlives a replay (static inputs, outputs,
gradient buffers) stays allocated, and nothing that outlives a capture is allocated inside it
besides those: the tables live outside the pool (built before, never evicted while their masks
live: memo.py). So the graphs' scratch memory overlaps instead of adding up. Gradients come back in the graph's static buffers (autograd may adopt
them as `.grad`); before the same graph replays again within one update, copy them out
(nmt/graphed_step.py does, for gradient accumulation).
"""
from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from .module import SpecializedFFN
from .plan import mask_tables

log = logging.getLogger(__name__)


def masks_fingerprint(model: nn.Module) -> tuple:
    """(id, version) of every SpecializedFFN's mask index tensor (None when dense)."""
    return tuple(None if m.masks is None else (id(m.masks.indices), m.masks.indices._version)
                 for m in model.modules() if isinstance(m, SpecializedFFN))


FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def prepare_tables(model: nn.Module) -> None:
    """Build every SpecializedFFN's mask tables, for every float dtype (its weights', autocast's,
    the float32 some backends use: [T, f] each, small), so that a capture finds them all built."""
    for m in model.modules():
        if isinstance(m, SpecializedFFN) and m.masks is not None:
            w = m.fc1.weight
            mask_tables(m.masks.indices, m.masks.offsets, w.shape[0]).prepare(*FLOAT_DTYPES)


class _Bound(nn.Module):
    """loss_fn(model, key, *tensors) as a module whose parameters are the model's (so the
    graphed backward returns their gradients)."""

    def __init__(self, model: nn.Module, loss_fn: Callable, key):
        super().__init__()
        self.model, self.loss_fn, self.key = model, loss_fn, key

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, self.key, *tensors)


def _cuda_capture(pool) -> Callable:
    """make_graphed_callables into `pool` (where this torch version takes one)."""
    shares = "pool" in inspect.signature(torch.cuda.make_graphed_callables).parameters

    def capture(module: nn.Module, sample_args: tuple) -> Callable:
        # allow_unused_input: a step may leave some parameters without a gradient (e.g. unused embeddings)
        return torch.cuda.make_graphed_callables(module, sample_args, num_warmup_iters=3, allow_unused_input=True,
                                                 **({"pool": pool} if shares else {}))
    return capture


class GraphedLoss:
    """Callable `(key, *tensors) -> loss`: the loss's forward and backward from CUDA graphs.

    `loss_fn(model, key, *tensors)` must return a scalar tensor (or a tuple of them, the first
    one differentiated) and read the batch only from `tensors` (any Python branching goes into
    the hashable `key`). Call `.backward()` on the result as usual; gradients accumulate into
    the parameters' `.grad`. The returned loss is a copy (the graph's output buffer is reused by
    the next replay). `capture` is for tests: a function (module, sample_args) -> callable
    replacing make_graphed_callables."""

    def __init__(self, model: nn.Module, loss_fn: Callable, max_graphs: int = 16,
                 capture: Callable | None = None):
        if max_graphs < 1:
            raise ValueError(f"max_graphs: must be >= 1, got {max_graphs}")
        if capture is None:
            device = next(model.parameters()).device
            if device.type != "cuda":
                raise ValueError(f"cuda graphs: the model is on {device}, CUDA graphs need a CUDA device")
            capture = _cuda_capture(torch.cuda.graph_pool_handle())
        self.model, self.loss_fn, self.max_graphs, self._capture = model, loss_fn, max_graphs, capture
        self._graphs: OrderedDict[tuple, Callable] = OrderedDict()
        self.captures = 0

    def __call__(self, key, *tensors: torch.Tensor) -> torch.Tensor:
        if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise TypeError("GraphedLoss: pass the batch as one or more tensors after the key")
        sig = (key, tuple((tuple(t.shape), t.dtype, t.device) for t in tensors), masks_fingerprint(self.model),
               self.model.training)
        fn = self._graphs.pop(sig, None)
        if fn is None:
            fn = self._new_graph(key, tensors)
        self._graphs[sig] = fn  # most recently used last
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        out = fn(*tensors)
        return out.clone() if isinstance(out, torch.Tensor) else tuple(o.clone() for o in out)

    def _new_graph(self, key, tensors: tuple) -> Callable:
        """Capture after warm-up iterations (they build the memoized mask tables and run the
        Triton autotuner outside the capture; they take no gradient into `.grad`)."""
        self.captures += 1
        log.info("capturing CUDA graph %d (key %r, shapes %s)", self.captures, key,
                 [tuple(t.shape) for t in tensors])
        bound = _Bound(self.model, self.loss_fn, key).train(self.model.training)
        prepare_tables(self.model)
        return self._capture(bound, tuple(t.detach().clone() for t in tensors))

    def __len__(self) -> int:
        return len(self._graphs)
