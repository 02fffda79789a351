"""One plan per masked-FFN call: which tokens use which neurons (docs/design.md §3).

The op body builds a `Plan` once and hands it to the backend, which only launches work:

* `MaskTables` — everything derived from a `TaskMasks` alone (host copy of the offsets, dense
  active table, per-task index lists, padded per-task tables for grouped GEMMs). Masks change
  rarely, so these are built once per masks tensor (memo) with one host copy, then reused.
  Every table is built outside CUDA graph captures (a build inside one raises: memo.py);
  `prepare(dtype)` builds them all at once, as graphs.prepare_tables does before a capture.
* the token routing of the batch — for a mixed batch a stable sort of the ids and the group
  boundaries (`torch.sort` + `torch.searchsorted`: two launches, no host sync). The task-id
  range check is device-side (`torch._assert_async`), so a fresh ids tensor per call (as in
  training) costs no sync either.

Three kinds of call: homogeneous (`task >= 0`, a host int: shapes follow that task's neuron
count), UNIFORM (every token belongs to one task whose id is a device tensor: shapes follow the
widest task, so one CUDA graph serves every direction; backends without a uniform path run it
as a mixed call, `as_mixed`) and mixed (`task == -1`, one id per token).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property

import torch

from .memo import forbid_in_capture, memo

UNIFORM = -2  # `task` of a call whose tokens all belong to the task in task_ids[0] (a device value)
ALIGN = 8  # padded task width: a multiple of 8 columns keeps grouped_mm's 16-byte stride rule for fp16/bf16/fp32


class MaskTables:
    """Static tables of one layer's masks (indices int32 [Σ|A_t|], offsets int32 [T+1])."""

    def __init__(self, indices: torch.Tensor, offsets: torch.Tensor, num_neurons: int):
        # indices held weakly: the memo entry lives while the masks' indices do (memo.py)
        self._indices, self.offsets, self.num_neurons = weakref.ref(indices), offsets, num_neurons
        self.device, self.num_indices = indices.device, indices.numel()
        self.host_offsets: list[int] = offsets.tolist()  # the one host copy, once per masks
        self.sizes = [b - a for a, b in zip(self.host_offsets[:-1], self.host_offsets[1:])]
        self.num_tasks = len(self.sizes)
        self._inactive: dict[torch.dtype, torch.Tensor] = {}

    def prepare(self, *dtypes: torch.dtype) -> MaskTables:
        """Build every device table a call in these dtypes can use (none is built lazily afterwards)."""
        for dtype in dtypes:
            self.inactive(None, dtype)
        _ = self.indices_long, self.padded
        _task_range(self.num_tasks, self.device)
        return self

    @property
    def indices(self) -> torch.Tensor:
        """The masks' indices int32 [Σ|A_t|] (alive while a call uses them)."""
        return self._indices()

    @cached_property
    def indices_long(self) -> torch.Tensor:
        forbid_in_capture("MaskTables.indices_long")
        return self.indices.to(torch.long, copy=True)

    def active_idx(self, task: int) -> torch.Tensor:
        """Sorted int64 active neuron ids of `task` [k] (a view: no launch)."""
        return self.indices_long[self.host_offsets[task] : self.host_offsets[task + 1]]

    def is_full(self, task: int) -> bool:
        return self.sizes[task] == self.num_neurons

    def kept(self, task: int | None = None) -> float:
        """Kept fraction of `task`, or the largest over tasks (None)."""
        k = max(self.sizes) if task is None else self.sizes[task]
        return k / self.num_neurons

    @cached_property
    def active(self) -> torch.Tensor:
        """bool [T, f]: active[t, n] iff neuron n belongs to task t."""
        forbid_in_capture("MaskTables.active")
        owner = torch.repeat_interleave(torch.arange(self.num_tasks, device=self.device),
                                        torch.tensor(self.sizes, device=self.device), output_size=self.num_indices)
        table = torch.zeros(self.num_tasks, self.num_neurons, dtype=torch.bool, device=self.device)
        table[owner, self.indices_long] = True
        return table

    def inactive(self, task: int | None, dtype: torch.dtype) -> torch.Tensor:
        """0/1 `dtype` [f] (1 = inactive) of `task` (a row view), or [T, f] of every task (None);
        one table per dtype."""
        if dtype not in self._inactive:
            forbid_in_capture("MaskTables.inactive")
            self._inactive[dtype] = (~self.active).to(dtype)
        table = self._inactive[dtype]
        return table if task is None else table[task]

    @cached_property
    def padded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(idx long [T, K], valid bool [T, K], pad = ~valid): task t's active ids in its first
        |A_t| columns, padded with neuron 0 to K = the largest task rounded up to ALIGN."""
        forbid_in_capture("MaskTables.padded")
        col = torch.arange(self.width, device=self.device)
        sizes = torch.tensor(self.sizes, device=self.device)
        valid = col[None, :] < sizes[:, None]
        starts = torch.tensor(self.host_offsets[:-1], device=self.device)
        pos = (starts[:, None] + col[None, :]).clamp_max(max(self.num_indices - 1, 0))
        idx = self.indices_long[pos] if self.num_indices else torch.zeros_like(pos)
        return torch.where(valid, idx, 0), valid, ~valid

    def padded_row(self, task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx long [K], pad bool [K]) of the task in the device tensor `task` [1]: its row of
        `padded`, read without a host sync."""
        idx, _, pad = self.padded
        return idx.index_select(0, task).view(-1), pad.index_select(0, task).view(-1)

    @cached_property
    def width(self) -> int:
        """K: the largest task's neuron count rounded up to ALIGN (at least ALIGN)."""
        return max(-(-max(self.sizes) // ALIGN) * ALIGN, ALIGN)

    @cached_property
    def has_pads(self) -> bool:
        return any(k != self.width for k in self.sizes)


def mask_tables(indices: torch.Tensor, offsets: torch.Tensor, num_neurons: int) -> MaskTables:
    """The MaskTables of (indices, offsets), built once per masks (memo on the tensors)."""
    return memo(indices, ("tables", id(offsets), offsets.data_ptr(), offsets._version, num_neurons),
                lambda: MaskTables(indices, offsets, num_neurons))


@dataclass
class Routing:
    """Which task each token of a call belongs to. Homogeneous (`task >= 0`): all of them are
    `task`'s. Uniform (`task == UNIFORM`): all of them are task_ids[0]'s (`task_ids` int64 [1]).
    Mixed (`task == -1`): per-token `task_ids` int64 [N]; when sorted, `order` [N] sorts tokens
    by task (stable), `sorted_ids` = task_ids[order], and task t owns sorted rows
    starts[t]:starts[t+1] (`starts` int32 [T+1])."""

    n: int
    task: int
    task_ids: torch.Tensor
    order: torch.Tensor | None = None
    sorted_ids: torch.Tensor | None = None
    starts: torch.Tensor | None = None

    @property
    def mixed(self) -> bool:
        return self.task == -1

    @property
    def uniform(self) -> bool:
        return self.task == UNIFORM

    def ids(self) -> torch.Tensor:
        """int64 [N]: every token's task (a new tensor for a homogeneous batch; a uniform call
        reaches backends without a uniform path as mixed, `as_mixed`)."""
        if self.mixed:
            return self.task_ids
        return torch.full((self.n,), self.task, dtype=torch.long, device=self.task_ids.device)


@dataclass
class Plan(Routing):
    """A Routing plus the static tables of the layer's masks."""

    tables: MaskTables | None = None

    @property
    def indices(self) -> torch.Tensor:
        return self.tables.indices

    @property
    def offsets(self) -> torch.Tensor:
        return self.tables.offsets


def route(task_ids: torch.Tensor, task: int, num_tasks: int, n: int, sort: bool = True) -> Routing:
    """The routing of one call (`task_ids` int64 [N] when task == -1, [1] when UNIFORM, any
    values: they are range-checked here on the device). A batch without tokens counts as
    homogeneous (task 0 if its task is not known on the host)."""
    if task == UNIFORM:
        check_ids_range(task_ids[0], task_ids[0], num_tasks)
        return Routing(n, UNIFORM, task_ids) if n else Routing(0, 0, task_ids)
    if task >= 0 or n == 0:
        return Routing(n, max(task, 0), task_ids)
    if not sort:
        lo, hi = torch.aminmax(task_ids)
        check_ids_range(lo, hi, num_tasks)
        return Routing(n, -1, task_ids)
    sorted_ids, order = torch.sort(task_ids, stable=True)
    check_ids_range(sorted_ids[0], sorted_ids[-1], num_tasks)
    starts = torch.searchsorted(sorted_ids, _task_range(num_tasks, task_ids.device), out_int32=True)
    return Routing(n, -1, task_ids, order, sorted_ids, starts)


def make_plan(tables: MaskTables, task_ids: torch.Tensor, task: int, n: int, sort: bool = True) -> Plan:
    """The plan of one masked-FFN call: the masks' tables + the routing (sorted when mixed and
    `sort`: backends that group tokens by task need it, the mask-multiply does not)."""
    r = route(task_ids, task, tables.num_tasks, n, sort)
    return Plan(r.n, r.task, r.task_ids, r.order, r.sorted_ids, r.starts, tables)


def as_mixed(task_ids: torch.Tensor, task: int, n: int) -> tuple[torch.Tensor, int]:
    """A UNIFORM call's (ids, task) as a mixed call's, (int64 [N], -1), for code without a
    uniform path; other calls unchanged."""
    if task != UNIFORM:
        return task_ids, task
    return task_ids.expand(n).contiguous(), -1


_RANGES: dict[tuple, torch.Tensor] = {}


def _task_range(num_tasks: int, device: torch.device) -> torch.Tensor:
    """int64 0..T on `device` (cached), the group boundaries searched for in the sorted ids."""
    key = (num_tasks, torch.device(device))
    if key not in _RANGES:
        forbid_in_capture("the task range")
        _RANGES[key] = torch.arange(num_tasks + 1, device=device)
    return _RANGES[key]


def check_ids_range(lo: torch.Tensor, hi: torch.Tensor, num_tasks: int) -> None:
    """Device-side check that ids lie in [lo, hi] ⊆ [0, num_tasks) (0-dim tensors): no host
    sync. On CPU a bad id raises ValueError at once; on CUDA it is a device-side assert with
    the same message."""
    message = f"task_ids: ids must lie in [0, {num_tasks})"
    try:  # raises here only on CPU; on CUDA the assert runs in the stream
        torch._assert_async((lo >= 0) & (hi < num_tasks), message)
    except RuntimeError:  # the error path may read values: say which range was given
        raise ValueError(f"{message}, got range [{int(lo)}, {int(hi)}]") from None
