"""Which backend runs each call (docs/design.md §3): `auto`'s measured rule, and the checks of a
named backend against what its CAPS declare (ops/backends.py); the registry asks nothing else.

Computing only the active neurons saves FLOPs in proportion to 1 − p (p = kept fraction), but
gathers weights and pays per-call work; the dense mask-multiply (`maskmul` backend, the original
method's cost) never loses more than one elementwise select to the dense FFN. `auto` takes the
gathering path only in regimes where it was measured faster than dense, so specializing is
never slower than the original method:

* CUDA — H200, bf16, N = 8192 (benchmarks/results/gpu-h200/run4-homogeneous-via-cublas):
  gather + cuBLAS beat dense for homogeneous batches on the llm FFN (d·f = 4096·14336) at
  p = 0.25 / 0.5 (2.21× / 1.33× wall clock); it lost on base and big FFNs (host-bound, 0.36–0.42×)
  and for every mixed batch (grouped kernels 0.24–0.72×). Everything else goes to `maskmul`.
* CPU — see prefer_gather (measured with benchmarks/bench_plain_call.py and the trainer).
"""
from __future__ import annotations

import torch

from .backends import BACKENDS, caps, unavailable_reason

CUDA_MIN_DF = 4096 * 14336  # smallest d·f measured faster with gathering on the GPU
CUDA_MIN_TOKENS = 8192  # the batch size it was measured at
CUDA_MAX_KEPT = 0.5
CPU_MIN_SAVED_ROWS = 64  # mixed batches on CPU: see prefer_gather
AUTO = "auto"
GATHER, DENSE = ("torch",), ("maskmul",)  # auto's backends for each answer of prefer_gather, first first


def auto_candidates(tables, task: int, x: torch.Tensor) -> tuple[str, ...]:
    """GATHER (gather + GEMM over the active neurons) or DENSE (dense mask-multiply) for a call
    on x [N, d] with the masks' `tables` and `task` (-1: mixed batch; UNIFORM: one task known on
    the device only, computed at the widest task's width), by prefer_gather."""
    mixed = task == -1
    kept = tables.kept(task if task >= 0 else None)
    gather = prefer_gather(x.device.type, mixed, kept, x.shape[1], tables.num_neurons, x.shape[0], tables.num_tasks,
                           x.dtype)
    return GATHER if gather else DENSE


def prefer_gather(device_type: str, mixed: bool, kept: float, d: int, f: int, n: int, num_tasks: int,
                  dtype: torch.dtype = torch.float32) -> bool:
    """Whether gathering the active neurons was measured faster than the dense mask-multiply
    in this regime (kept: the task's kept fraction, the largest one for a mixed batch).

    CPU, fp32, 2 cores, fwd+bwd unless said (ratios to the dense FFN; gather / maskmul):
    homogeneous 800 tokens 256/1024, one thread: 0.98 / 0.96 at p = 0.9, 1.29 / 0.89 at
    p = 0.75 (2026-12-02, after the stale-weight fix: earlier figures had skipped the gathers);
    40 tokens decoding at p = 0.9: 0.96 / 0.76 (gathered weights reused across steps inside
    reuse_gathered_weights), so homogeneous batches always gather.
    Mixed batches pay a gather and full-width bias terms per task: 16 tasks, 50 tokens each:
    0.54 / 0.93 at p = 0.9, 0.89 / 0.91 at p = 0.5; 128 tokens each: 0.80 / 0.97 at p = 0.9,
    1.38 / 0.93 at p = 0.5; 8 tasks, 512 tokens each (512/2048): 3.40 / 1.00 at p = 0.25,
    1.80 / 1.00 at p = 0.5, 1.22 / 1.01 at p = 0.75, 0.91 / 1.00 at p = 0.9 (51 rows saved per
    task; benchmarks/results/cpu/issue20). They gather when the rows saved per task,
    (1 − p) · N / T, reach CPU_MIN_SAVED_ROWS.

    CPU in bf16/fp16 (autocast on CPUs with AVX512-BF16): never. oneDNN builds a GEMM primitive
    for every new (N, width) shape, ~5 ms each (800x256 @ 256x~900: 5.6 ms/call with a new shape
    each call, 0.44 ms cached; fp32 1.41 vs 1.40), and gathering makes one width per layer and
    direction while training batches change N every step, so the cache thrashes: the trainer at
    the demo's masks (p 0.89, 2 threads, 75 steps) took 22.4–22.6 s gathering, 14.0–14.9 s with
    maskmul, 13.2–14.1 s dense (2026-12-07, benchmarks/results/cpu/issue32-bf16-routing.md)."""
    if device_type == "cuda":
        return not mixed and kept <= CUDA_MAX_KEPT and d * f >= CUDA_MIN_DF and n >= CUDA_MIN_TOKENS
    if dtype in (torch.bfloat16, torch.float16):
        return False
    return not mixed or (1.0 - kept) * n / num_tasks >= CPU_MIN_SAVED_ROWS


# ---- which backend runs a call --------------------------------------------------------------
COUNTING = {"cuda": ("triton", "torch")}  # counting kernels per device type, preferred first
COUNTING_DEFAULT = ("torch",)


_USABLE: dict[tuple, str | None] = {}


def _usable(name: str, x: torch.Tensor, activation: str, gated: bool, named: bool = False) -> str | None:
    """None if backend `name` runs this call on x's device, else why not (its CAPS only when
    `named`: resolve_backend checked its availability). Cached per kind of call."""
    key = (name, BACKENDS.get(name), x.device, x.dtype, activation, gated, named)
    if key not in _USABLE:
        why = None if named else unavailable_reason(name, x.device)
        _USABLE[key] = why if why is not None else caps(name).refuses(x.device, x.dtype, activation, gated)
    return _USABLE[key]


def ffn_backend(backend: str, tables, task: int, x: torch.Tensor, activation: str, gated: bool) -> str:
    """The backend that runs a masked-FFN call: `auto` takes the first of auto_candidates'
    backends whose CAPS take the call, else of the other kind (gated calls skip maskmul);
    a named backend runs it or raises a ValueError saying what its CAPS do not declare."""
    if backend != AUTO:
        why = _usable(backend, x, activation, gated, named=True)
        if why is not None:
            raise ValueError(f"backend {backend!r} {why} (its CAPS); use backend='auto' or one of "
                             f"{[b for b in BACKENDS if _usable(b, x, activation, gated) is None]}")
        return backend
    first = auto_candidates(tables, task, x)
    for name in first + (DENSE if first == GATHER else GATHER):
        if _usable(name, x, activation, gated) is None:
            return name
    raise ValueError(f"backend 'auto': no backend runs a {'gated ' if gated else ''}{activation} FFN in {x.dtype} "
                     f"on {x.device}")


def counting_backend(backend: str, x: torch.Tensor, activation: str) -> str:
    """The backend that counts: a named one with CAPS.counting counts itself (or raises where
    its CAPS refuse the call); `auto` and backends without counting use the device's first
    counting kernels that take the call (triton on CUDA, else torch)."""
    if backend != AUTO and caps(backend).counting:
        return ffn_backend(backend, None, -1, x, activation, False)
    for name in COUNTING.get(x.device.type, COUNTING_DEFAULT):
        if _usable(name, x, activation, False) is None:
            return name
    raise ValueError(f"counting: no backend counts {activation} in {x.dtype} on {x.device}")
