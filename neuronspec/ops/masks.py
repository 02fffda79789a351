"""`TaskMasks`: per-task sets of active FFN neurons for one layer, CSR-packed.

    indices  int32 [sum_t |A_t|]   sorted, unique neuron ids of every task, concatenated
    offsets  int32 [T + 1]         task t owns indices[offsets[t]:offsets[t+1]]
    names    list[str] (len T)     e.g. "en-de"
    num_neurons                    f (d_ff of the layer)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..files import CHECKSUM, load_file, save_file


@dataclass
class TaskMasks:
    indices: torch.Tensor
    offsets: torch.Tensor
    num_neurons: int
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [f"task{t}" for t in range(self.offsets.numel() - 1)]
        self.validate()

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dense(cls, masks: torch.Tensor, names: Sequence[str] | None = None) -> "TaskMasks":
        """From a boolean (or 0/1) tensor [T, f]."""
        if not isinstance(masks, torch.Tensor) or masks.dim() != 2:
            raise ValueError(f"masks: expected a 2-D tensor [T, f], got {_describe(masks)}")
        m = masks.detach().cpu()
        if m.dtype != torch.bool:
            if not torch.all((m == 0) | (m == 1)):
                raise ValueError("masks: a non-boolean mask must contain only 0 and 1")
            m = m.bool()
        counts = m.sum(1)
        offsets = torch.zeros(m.shape[0] + 1, dtype=torch.int32)
        offsets[1:] = torch.cumsum(counts, 0).to(torch.int32)
        indices = m.nonzero()[:, 1].to(torch.int32)  # row-major: grouped by task, sorted
        return cls(indices, offsets, m.shape[1], list(names) if names is not None else [])

    @classmethod
    def from_indices(
        cls, sets: Sequence[Iterable[int]], num_neurons: int, names: Sequence[str] | None = None
    ) -> "TaskMasks":
        """From one iterable of neuron ids per task (sorted or not; duplicates are an error)."""
        lists = [sorted(int(i) for i in s) for s in sets]
        offsets = torch.zeros(len(lists) + 1, dtype=torch.int32)
        offsets[1:] = torch.cumsum(torch.tensor([len(s) for s in lists], dtype=torch.int64), 0).to(torch.int32)
        flat = [i for s in lists for i in s]
        indices = torch.tensor(flat, dtype=torch.int32) if flat else torch.zeros(0, dtype=torch.int32)
        return cls(indices, offsets, num_neurons, list(names) if names is not None else [])

    @classmethod
    def full(cls, num_tasks: int, num_neurons: int, names: Sequence[str] | None = None) -> "TaskMasks":
        return cls.from_dense(torch.ones(num_tasks, num_neurons, dtype=torch.bool), names)

    # ---- views --------------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return self.offsets.numel() - 1

    def __len__(self) -> int:
        return self.num_tasks

    def active(self, task: int | str) -> torch.Tensor:
        """Sorted int32 ids of task's active neurons."""
        t = self.names.index(task) if isinstance(task, str) else int(task)
        return self.indices[int(self.offsets[t]) : int(self.offsets[t + 1])]

    def sizes(self) -> torch.Tensor:
        """|A_t| for every task, int64 [T]."""
        return (self.offsets[1:] - self.offsets[:-1]).long()

    def fractions(self) -> torch.Tensor:
        """|A_t| / f for every task, float [T]."""
        return self.sizes().double() / max(self.num_neurons, 1)

    def to_dense(self) -> torch.Tensor:
        """Boolean [T, f] (on the device of `indices`)."""
        dense = torch.zeros(self.num_tasks, self.num_neurons, dtype=torch.bool, device=self.indices.device)
        rows = torch.repeat_interleave(
            torch.arange(self.num_tasks, device=self.indices.device), self.sizes().to(self.indices.device)
        )
        dense[rows, self.indices.long()] = True
        return dense

    def to(self, device: torch.device | str) -> "TaskMasks":
        return TaskMasks(self.indices.to(device), self.offsets.to(device), self.num_neurons, list(self.names))

    @property
    def device(self) -> torch.device:
        return self.indices.device

    # ---- checks and files ---------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError/TypeError unless the CSR structure is well formed."""
        for name, t in (("indices", self.indices), ("offsets", self.offsets)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"TaskMasks.{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.dtype != torch.int32 or t.dim() != 1:
                raise TypeError(f"TaskMasks.{name}: expected a 1-D int32 tensor, got {_describe(t)}")
        if not isinstance(self.num_neurons, int) or self.num_neurons <= 0:
            raise ValueError(f"TaskMasks.num_neurons: expected a positive int, got {self.num_neurons!r}")
        off = self.offsets.cpu().long()
        if off.numel() < 2:
            raise ValueError("TaskMasks.offsets: need at least 2 entries (one task)")
        if off[0] != 0 or off[-1] != self.indices.numel() or torch.any(off[1:] < off[:-1]):
            raise ValueError(
                "TaskMasks.offsets: must start at 0, be non-decreasing and end at len(indices) "
                f"= {self.indices.numel()}, got {off.tolist()[:8]}{'...' if off.numel() > 8 else ''}"
            )
        if len(self.names) != off.numel() - 1:
            raise ValueError(f"TaskMasks.names: {len(self.names)} names for {off.numel() - 1} tasks")
        idx = self.indices.cpu().long()
        if idx.numel():
            if idx.min() < 0 or idx.max() >= self.num_neurons:
                raise ValueError(
                    f"TaskMasks.indices: neuron ids must lie in [0, {self.num_neurons}), "
                    f"got range [{int(idx.min())}, {int(idx.max())}]"
                )
            step = idx[1:] - idx[:-1]
            starts = torch.zeros(idx.numel(), dtype=torch.bool)
            starts[off[1:-1][off[1:-1] < idx.numel()]] = True
            bad = (step <= 0) & ~starts[1:]
            if torch.any(bad):
                pos = int(bad.nonzero()[0]) + 1
                task = int(torch.searchsorted(off, torch.tensor(pos), right=True)) - 1
                raise ValueError(
                    f"TaskMasks.indices: task {task} ({self.names[task]}) has unsorted or duplicate "
                    f"neuron ids at position {pos} ({int(idx[pos - 1])} then {int(idx[pos])})"
                )

    def state_dict(self) -> dict:
        return {"indices": self.indices.cpu(), "offsets": self.offsets.cpu(),
                "num_neurons": self.num_neurons, "names": list(self.names)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "TaskMasks":
        return cls(state["indices"], state["offsets"], int(state["num_neurons"]), list(state["names"]))

    def save(self, path: str | os.PathLike) -> Path:
        """One layer's masks, atomically with a checksum (neuronspec.files)."""
        return save_file(self.state_dict(), path, "masks")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TaskMasks":
        return cls.from_state_dict({k: v for k, v in load_file(path, "masks").items() if k != CHECKSUM})

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TaskMasks) and self.num_neurons == other.num_neurons
                and self.names == other.names and torch.equal(self.offsets.cpu(), other.offsets.cpu())
                and torch.equal(self.indices.cpu(), other.indices.cpu()))

    def __repr__(self) -> str:
        frac = self.fractions()
        return (f"TaskMasks(tasks={self.num_tasks}, neurons={self.num_neurons}, "
                f"kept={float(frac.mean()) if frac.numel() else 0:.3f} on average)")


MASKS_FORMAT, MASKS_VERSION = "neuronspec-masks", 1


def save_layer_masks(masks: dict[str, TaskMasks], path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Save {layer name: TaskMasks} (a whole model's masks, a few MB) atomically, with format,
    version and checksum (neuronspec.files)."""
    return save_file({"format": MASKS_FORMAT, "version": MASKS_VERSION,
                      "layers": {k: m.state_dict() for k, m in masks.items()}, "meta": meta or {}}, path, "masks")


def load_layer_masks(path: str | os.PathLike) -> tuple[dict[str, TaskMasks], dict]:
    """Inverse of `save_layer_masks`: ({layer name: TaskMasks}, meta); ValueError naming the
    file for an empty, damaged, foreign or malformed one."""
    state = load_file(path, "masks")
    if not isinstance(state.get("layers"), dict) or state.get("format", MASKS_FORMAT) != MASKS_FORMAT:
        raise ValueError(f"masks: {os.fspath(path)!r} is not a neuronspec masks file (no 'layers' entry)")
    try:
        return ({k: TaskMasks.from_state_dict(v) for k, v in state["layers"].items()},
                dict(state.get("meta") or {}))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"masks: {os.fspath(path)!r} holds a malformed layer ({e})") from None


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__
