"""Files neuronspec writes (checkpoints, counts, masks): one ``torch.save`` dict each, written
atomically with a checksum and loaded safely (docs/design.md §5, §7).

Every file holds ``"sha256"``: the digest of its contents (tensor bytes, dtypes and shapes,
every other value's repr, in order), checked on load; files written before checksums load with
a debug log. Loading is ``torch.load(weights_only=True)``: no arbitrary pickle is executed. An
empty, truncated, foreign, random or damaged file is a ValueError naming the file and what is
wrong; a failed write (disk full, unwritable folder) an OSError naming the path, with the
previous file kept.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch

from neuronspec.atomic import atomic_file

log = logging.getLogger(__name__)

CHECKSUM = "sha256"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container


def digest(state: Mapping[str, Any]) -> str:
    """sha256 of a file's contents without its checksum entry (see the module docstring)."""
    h = hashlib.sha256()

    def feed(v):
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(v, Mapping):
            h.update(b"{")
            for k, x in v.items():
                h.update(repr(k).encode())
                feed(x)
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[")
            for x in v:
                feed(x)
            h.update(b"]")
        else:
            h.update(repr(v).encode())

    feed({k: v for k, v in state.items() if k != CHECKSUM})
    return h.hexdigest()


def save_file(state: Mapping[str, Any], path: str | os.PathLike, what: str = "file", fsync: bool = False) -> Path:
    """torch.save ``state`` plus its checksum to ``path`` atomically. A failed write (no space,
    no permission) raises OSError naming the path; the file already there is kept."""
    path = Path(path)
    state = {k: v for k, v in state.items() if k != CHECKSUM}
    state[CHECKSUM] = digest(state)
    try:
        with atomic_file(path, fsync=fsync) as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:
        cause = e if isinstance(e, OSError) else e.__context__  # torch reports a failed write as RuntimeError
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(e).splitlines()[0]
        kept = " (the previous file is kept)" if path.is_file() else ""
        raise OSError(getattr(cause, "errno", None), f"{what}: could not write {path}: {reason}{kept}") from None
    return path


def load_file(path: str | os.PathLike, what: str = "file", map_location: str | torch.device = "cpu") -> dict:
    """``torch.load(weights_only=True)`` of a dict written by :func:`save_file`, its checksum
    verified; ValueError naming the file and what is wrong otherwise."""
    name = os.fspath(path)
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{what}: {name} is a folder, expected a file")
    if not p.is_file():
        raise ValueError(f"{what}: no such file {name!r}")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ValueError(f"{what}: cannot read {name} ({e.strerror})") from None
    if not head:
        raise ValueError(f"{what}: {name} is empty (0 bytes)")
    if head != _ZIP_MAGIC:
        raise ValueError(f"{what}: {name} is not a torch file (random or foreign bytes)")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # its message advises weights_only=False: never repeated
        raise ValueError(f"{what}: {name} was not written by neuronspec: it holds Python objects other than "
                         "tensors and plain values (refused, not unpickled)") from None
    except (RuntimeError, EOFError, ValueError, KeyError, UnicodeDecodeError, OSError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        reason = reason.splitlines()[0].split(". This is an internal")[0]
        raise ValueError(f"{what}: {name} is truncated or damaged ({reason})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{what}: {name} was not written by neuronspec (holds a {type(state).__name__}, "
                         "expected a dict)")
    if CHECKSUM not in state:
        log.debug("%s: %s has no checksum (written before checksums): not verified", what, name)
    elif state[CHECKSUM] != digest(state):
        raise ValueError(f"{what}: {name} is damaged: its contents do not match the checksum stored in it")
    return state
