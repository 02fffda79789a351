"""Checkpoints, counts and masks files: one ``torch.save`` dict per file, written atomically
with a checksum, loaded safely (``save_file`` / ``load_file``).

A training checkpoint holds everything needed to continue exactly where a run stopped::

    {"format": 1, "step": int, "config": dict (TrainConfig), "model_config": dict,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict,
     "sampler": state_dict, "rng": {...}, "masks": {layer: TaskMasks state} | None,
     "data": {"prep": str, "directions": ["en-de", ...]}, "metrics": {...}}

Only plain containers, numbers, strings and tensors are stored, so files load with
``torch.load(weights_only=True)`` (no arbitrary pickles are executed). Every file written here
also holds ``"sha256"``: the digest of its contents (tensor bytes, dtypes and shapes, every
other value's repr, in order), checked on load; files written before it load with a debug log.
An empty, truncated, foreign, random or damaged file is a ValueError naming the file and what
is wrong; a failed write (disk full, unwritable folder) an OSError naming the path, with the
previous file kept.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from neuronspec.atomic import atomic_file
from neuronspec.ops import TaskMasks

from .model import ModelConfig, Transformer

log = logging.getLogger(__name__)

FORMAT = 1
CHECKSUM = "sha256"
MASKS_FORMAT, MASKS_VERSION = "neuronspec-masks", 1
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container


# ---------------------------------------------------------------------------- any file
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


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + os.replace)."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    return save_file({"format": FORMAT, **state}, path, "checkpoint", fsync=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (safe ``weights_only`` loading)."""
    state = load_file(path, "checkpoint", map_location)
    if state.get("format") != FORMAT or "model" not in state:
        raise ValueError(f"checkpoint: {os.fspath(path)!r} is not a neuronspec checkpoint (format {FORMAT})")
    return state


# ---------------------------------------------------------------------------- models and masks
def masks_state(masks: Mapping[str, Any]) -> dict[str, dict]:
    """{layer: TaskMasks} → {layer: plain state dict} (what checkpoints store)."""
    return {name: m.state_dict() for name, m in masks.items()}


def masks_from_state(state: Mapping[str, dict] | None) -> dict[str, TaskMasks]:
    """Inverse of masks_state (None → {})."""
    return {name: TaskMasks.from_state_dict(s) for name, s in (state or {}).items()}


def save_masks(masks: Mapping[str, TaskMasks], path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Masks file (``neuronspec.ops.save_layer_masks``' layout, plus format, version and checksum)."""
    return save_file({"format": MASKS_FORMAT, "version": MASKS_VERSION, "layers": masks_state(masks),
                      "meta": meta or {}}, path, "masks")


def load_masks(path: str | os.PathLike) -> tuple[dict[str, TaskMasks], dict]:
    """Inverse of :func:`save_masks` (also reads files of ``save_layer_masks``): (masks, meta)."""
    state = load_file(path, "masks")
    if not isinstance(state.get("layers"), dict) or state.get("format", MASKS_FORMAT) != MASKS_FORMAT:
        raise ValueError(f"masks: {os.fspath(path)!r} is not a neuronspec masks file (no 'layers' entry)")
    try:
        return masks_from_state(state["layers"]), dict(state.get("meta") or {})
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"masks: {os.fspath(path)!r} holds a malformed layer ({e})") from None


def resolve_device(name: str | torch.device | None) -> torch.device:
    """torch.device of `name` (None or "auto": cuda when available, else cpu); ValueError
    naming the device option for an unknown or unavailable device."""
    if isinstance(name, torch.device):
        dev = name
    else:
        if name in (None, "auto"):
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError):
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device: {name!r} is not supported (cpu, cuda or cuda:N)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {str(name)!r} requested but CUDA is not available (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {str(name)!r} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    return dev


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Transformer, dict]:
    """Model (with its masks, if any) from a checkpoint, in eval mode; returns (model, checkpoint)."""
    device = resolve_device(device)
    ckpt = load_checkpoint(path)
    model = Transformer(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    if ckpt.get("masks"):
        model.set_masks(masks_from_state(ckpt["masks"]))
    return model, ckpt


# ---------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(_to_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x
