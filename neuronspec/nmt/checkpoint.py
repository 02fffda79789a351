"""Training checkpoints and the model loader; files are written and read by
``neuronspec.files`` (atomic, checksummed, safe loading).

A training checkpoint holds everything needed to continue exactly where a run stopped::

    {"format": 1, "step": int, "config": dict (TrainConfig), "model_config": dict,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict,
     "sampler": state_dict, "rng": {...}, "masks": {layer: TaskMasks state} | None,
     "data": {"prep": str, "directions": ["en-de", ...], "tokenizer_sha256": str},
     "environment": {"backend": str, "threads": int}, "metrics": {...}}

Only plain containers, numbers, strings and tensors are stored, so files load with
``torch.load(weights_only=True)``; masks files are ``neuronspec.ops.save_layer_masks``'.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from neuronspec.files import load_file, save_file
from neuronspec.ops import TaskMasks, load_layer_masks

from .model import ModelConfig, Transformer

log = logging.getLogger(__name__)

FORMAT = 1


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


def load_model_masks(path: str | os.PathLike, layers: list[str]) -> dict[str, TaskMasks]:
    """A masks file that must cover every FFN layer in `layers` (masks are selected for a whole
    model; `specialize --where` restricts them afterwards). ValueError naming the file otherwise."""
    masks = load_layer_masks(path)[0]
    missing = [n for n in layers if n not in masks]
    if missing:
        raise ValueError(f"masks: {os.fspath(path)} has no masks for {len(missing)} of the model's {len(layers)} "
                         f"FFN layers ({', '.join(missing[:3])}...); select them from this model's counts")
    return masks


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


# ---------------------------------------------------------------------------- what a run depends on
def check_tokenizer(ckpt: Mapping[str, Any], data) -> None:
    """ValueError unless ``data`` (a PreparedData) has the tokenizer ``ckpt`` was trained with
    (its recorded sha256; checkpoints written before it was recorded are not checked)."""
    want = (ckpt.get("data") or {}).get("tokenizer_sha256")
    if want is not None and want != data.tokenizer_sha256:
        raise ValueError(f"data: {data.root} was prepared with another tokenizer than the checkpoint was trained with "
                         f"({data.tokenizer.path}: sha256 {data.tokenizer_sha256[:12]}..., the checkpoint's: "
                         f"{want[:12]}...): token ids would not match; use the run's prepared folder")


def run_environment() -> dict[str, Any]:
    """What a run's numbers depend on besides its config: the FFN backend choice
    ($NEURONSPEC_BACKEND) and torch's CPU threads (recorded in checkpoints)."""
    from neuronspec.ops.registry import ENV_VAR

    return {"backend": os.environ.get(ENV_VAR) or "auto", "threads": torch.get_num_threads()}


def warn_environment_change(saved: Mapping[str, Any] | None) -> list[str]:
    """Warn (and return the lines) for each setting of ``run_environment`` that differs from a
    checkpoint's: a resumed run is then not bit-for-bit the uninterrupted one."""
    if not saved:
        return []
    now = run_environment()
    names = {"backend": "NEURONSPEC_BACKEND", "threads": "torch threads (--threads)"}
    changed = [f"{names[k]} was {saved[k]!r}, now {now[k]!r}" for k in names if k in saved and saved[k] != now[k]]
    for line in changed:
        log.warning("resume: %s: the continued run is not bit-for-bit the uninterrupted one", line)
    return changed


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
