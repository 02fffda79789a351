"""Per-tensor memo for tables derived from masks or task ids (built once, not every call), and
the guard that keeps table building out of CUDA graph captures."""
from __future__ import annotations

import weakref

import torch

_MEMO: dict[tuple, tuple] = {}
PURGE_AT = 256  # entries; past it, inserting drops the entries whose tensor is gone


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def forbid_in_capture(what: str) -> None:
    """Raise if a CUDA graph is being captured. A table built inside a capture would read host
    data (a copy the capture refuses) and live in the graph's memory pool, which other graphs
    reuse: it must be built before (ops/graphs.py prepare_tables, or an eager warm-up call)."""
    if capturing():
        raise RuntimeError(f"{what}: built during a CUDA graph capture; build it before capturing "
                           "(neuronspec.ops.graphs.prepare_tables)")


def memo(t: torch.Tensor, tag: tuple, make):
    """make(), cached for the contents of `t` and `tag`.

    The key is the tensor that owns the memory (t itself, or the tensor t is a view of: every
    layer's reshape of one task-id tensor shares it), held weakly, plus t's data pointer, shape,
    strides and in-place version, so any change of contents or layout rebuilds. On a GPU every
    small op is a kernel launch and every host copy a sync: the launchers build index tables,
    host copies of offsets and id-range checks once per masks or batch, not once per call.
    Entries of live tensors are never evicted (a captured step may need them at any time); a
    miss during a CUDA graph capture is an error (forbid_in_capture)."""
    owner = t if t._base is None else t._base
    key = (id(owner), t.data_ptr(), tuple(t.shape), tuple(t.stride()), tag)
    hit = _MEMO.get(key)
    if hit is not None and hit[0]() is owner and hit[1] == t._version:
        return hit[2]
    forbid_in_capture(f"memo {tag[0]!r}")
    value = make()
    if len(_MEMO) >= PURGE_AT:
        for k in [k for k, (ref, _, _) in _MEMO.items() if ref() is None]:
            del _MEMO[k]
    _MEMO[key] = (weakref.ref(owner), t._version, value)
    return value
