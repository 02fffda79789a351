"""Host-sync audit for tests: aten ops that read device values on the host, boolean indexing,
repeat_interleave without output_size, host reads of tensors from neuronspec's own code, and
a count of kernel-launching ops."""
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import neuronspec

PACKAGE_DIR = os.path.dirname(neuronspec.__file__)

# aten ops that read device values on the host (a sync on a GPU)
SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::unique", "aten::_unique", "aten::_unique2",
           "aten::unique_dim", "aten::unique_consecutive", "aten::bincount", "aten::masked_select",
           "aten::item", "aten::equal", "aten::is_nonzero"}
NO_KERNEL = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty", "aten::detach",
             "aten::lift_fresh", "aten::_assert_async"}  # allocation / bookkeeping, or device-side only
HOST_READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__")


class SyncAudit(TorchDispatchMode):
    """Records aten ops that sync, boolean indexing, repeat_interleave without output_size,
    and counts kernel-launching ops (views and allocations excluded)."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []
        self.launches: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in SYNCING:
            self.syncs.append(name)
        if name in ("aten::index", "aten::index_put", "aten::index_put_"):
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()) if i is not None):
                self.syncs.append(f"{name} with a boolean mask")
        if name == "aten::repeat_interleave" and kwargs.get("output_size") is None:
            self.syncs.append("repeat_interleave without output_size")
        if not func.is_view and name not in NO_KERNEL:
            self.launches.append(name)
        return func(*args, **kwargs)


class HostReads:
    """Patches Tensor methods that read values on the host without the dispatcher (tolist,
    item, bool(), int(), ...) and records calls made from neuronspec's own code."""

    def __init__(self):
        self.calls: list[str] = []

    def __enter__(self):
        self.saved = {m: getattr(torch.Tensor, m) for m in HOST_READS}
        for m, fn in self.saved.items():
            setattr(torch.Tensor, m, self._wrap(m, fn))
        return self

    def _wrap(self, method, fn):
        def wrapper(t, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE_DIR):
                self.calls.append(f"Tensor.{method} from {os.path.relpath(caller, PACKAGE_DIR)}")
            return fn(t, *a, **k)
        return wrapper

    def __exit__(self, *exc):
        for m, fn in self.saved.items():
            setattr(torch.Tensor, m, fn)
