"""Checkpoints: one ``torch.save`` dict per file, written atomically.

A training checkpoint holds everything needed to continue exactly where a run stopped::

    {"format": 1, "step": int, "config": dict (TrainConfig), "model_config": dict,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict,
     "sampler": state_dict, "rng": {...}, "masks": {layer: TaskMasks state} | None,
     "data": {"prep": str, "directions": ["en-de", ...]}, "metrics": {...}}

Only plain containers, numbers, strings and tensors are stored, so files load with
``torch.load(weights_only=True)`` (no arbitrary pickles are executed).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from neuronspec.atomic import atomic_file
from neuronspec.ops import TaskMasks

from .model import ModelConfig, Transformer

FORMAT = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + os.replace)."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = Path(path)
    with atomic_file(path, fsync=True) as f:
        torch.save({"format": FORMAT, **state}, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (safe ``weights_only`` loading)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint: no such file {str(path)!r}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {str(path)!r} is not a neuronspec checkpoint (format {FORMAT})")
    return state


# ---------------------------------------------------------------------------- models and masks
def masks_state(masks: Mapping[str, Any]) -> dict[str, dict]:
    """{layer: TaskMasks} → {layer: plain state dict} (what checkpoints store)."""
    return {name: m.state_dict() for name, m in masks.items()}


def masks_from_state(state: Mapping[str, dict] | None) -> dict[str, TaskMasks]:
    """Inverse of masks_state (None → {})."""
    return {name: TaskMasks.from_state_dict(s) for name, s in (state or {}).items()}


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Transformer, dict]:
    """Model (with its masks, if any) from a checkpoint, in eval mode; returns (model, checkpoint)."""
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
