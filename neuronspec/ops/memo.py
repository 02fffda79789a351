"""Per-tensor memo for tables derived from masks or task ids (built once, not every call)."""
from __future__ import annotations

import weakref

import torch

_MEMO: dict[tuple, tuple] = {}


def memo(t: torch.Tensor, tag: tuple, make):
    """make(), cached for the contents of `t` and `tag`.

    The key is the tensor that owns the memory (t itself, or the tensor t is a view of: every
    layer's reshape of one task-id tensor shares it), held weakly, plus t's data pointer, shape,
    strides and in-place version, so any change of contents or layout rebuilds. On a GPU every
    small op is a kernel launch and every host copy a sync: the launchers build index tables,
    host copies of offsets and id-range checks once per masks or batch, not once per call."""
    owner = t if t._base is None else t._base
    key = (id(owner), t.data_ptr(), tuple(t.shape), tuple(t.stride()), tag)
    hit = _MEMO.get(key)
    if hit is not None and hit[0]() is owner and hit[1] == t._version:
        return hit[2]
    value = make()
    if len(_MEMO) >= 256:
        _MEMO.clear()
    _MEMO[key] = (weakref.ref(owner), t._version, value)
    return value
