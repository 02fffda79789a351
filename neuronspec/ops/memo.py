"""Per-tensor memo for tables derived from masks or task ids (built once, not every call)."""
from __future__ import annotations

import weakref

import torch

_MEMO: dict[tuple, tuple] = {}


def memo(t: torch.Tensor, tag: tuple, make):
    """make(), cached for this very tensor object `t` (weakly referenced, same in-place
    version) and `tag`. On a GPU every small op is a kernel launch and every host copy a sync,
    so the launchers build their index tables and host copies of offsets once per masks/batch."""
    key = (id(t), tag)
    hit = _MEMO.get(key)
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        return hit[2]
    value = make()
    if len(_MEMO) >= 256:
        _MEMO.clear()
    _MEMO[key] = (weakref.ref(t), t._version, value)
    return value
