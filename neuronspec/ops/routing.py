"""`auto`: per call, the path measured fastest for the call's regime (docs/design.md §3).

Computing only the active neurons saves FLOPs in proportion to 1 − p (p = kept fraction), but
gathers weights and pays per-call work; the dense mask-multiply (`maskmul` backend, the original
method's cost) never loses more than one elementwise select to the dense FFN. `auto` takes the
gathering path only in regimes where it was measured faster than dense, so specializing is
never slower than the original method:

* CUDA — H200, bf16, N = 8192 (benchmarks/results/gpu-h200/run4-homogeneous-via-cublas):
  gather + cuBLAS beat dense for homogeneous batches on the llm FFN (d·f = 4096·14336) at
  p = 0.25 / 0.5 (2.21× / 1.33× wall clock); it lost on base and big FFNs (host-bound, 0.36–0.42×)
  and for every mixed batch (grouped kernels 0.24–0.72×). Everything else goes to `maskmul`.
* CPU — see CPU_MAX_KEPT below (benchmarks/bench_masked_ffn.py and bench_train_step.py).
"""
from __future__ import annotations

import torch

CUDA_MIN_DF = 4096 * 14336  # smallest d·f measured faster with gathering on the GPU
CUDA_MIN_TOKENS = 8192  # the batch size it was measured at
CUDA_MAX_KEPT = 0.5
CPU_MAX_KEPT = 0.8  # see _cpu_sparse
CPU_MIN_TOKENS = 64


def auto_backend(tables, task: int, x: torch.Tensor) -> str:
    """'torch' (gather + GEMM over the active neurons) or 'maskmul' (dense mask-multiply) for a
    call on x [N, d] with the masks' `tables` and `task` (-1: mixed batch)."""
    mixed = task < 0
    kept = tables.kept(None if mixed else task)
    gather = prefer_gather(x.device.type, mixed, kept, x.shape[1], tables.num_neurons, x.shape[0])
    return "torch" if gather else "maskmul"


def prefer_gather(device_type: str, mixed: bool, kept: float, d: int, f: int, n: int) -> bool:
    """Whether gathering the active neurons was measured faster than the dense mask-multiply
    in this regime (kept: the task's kept fraction, the largest one for a mixed batch)."""
    if device_type == "cuda":
        return not mixed and kept <= CUDA_MAX_KEPT and d * f >= CUDA_MIN_DF and n >= CUDA_MIN_TOKENS
    return kept <= CPU_MAX_KEPT and n >= CPU_MIN_TOKENS
