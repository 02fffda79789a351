"""Triton helpers shared by the masked-FFN and counting kernels.

- `act` / `act_grad`: relu (ACT=0) or exact erf GELU (ACT=1) and their derivatives, in the
  accumulator precision (relu'(0) = 0, like autograd).
- `find_tile`: maps a program id to (task, first row, end row) of one BLOCK_M tile of the
  task-sorted tokens; tasks own the rows tok_start[t]:tok_start[t+1]. Launch grids use the
  upper bound cdiv(N, BLOCK_M) + T tiles; programs past the last tile get task = -1.
- `swizzle`: program id → (tile row, tile column) in GROUP_M-row bands, so programs running
  together share operand tiles in L2 (Triton's matmul tutorial ordering).
- `mma`: tl.dot with fp32/fp64 accumulation. Under the interpreter the operands are upcast
  first (its dot multiplies bf16 as raw uint16), which is what the GPU tensor core computes.
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def _probe():
    pass


# triton.jit reads TRITON_INTERPRET when a kernel is defined, i.e. when this module is imported.
INTERPRETED = isinstance(_probe, InterpretedFunction)


@triton.jit
def act(z, ACT: tl.constexpr):
    if ACT == 0:
        return tl.where(z > 0, z, 0.0)
    else:
        return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))


@triton.jit
def act_grad(z, ACT: tl.constexpr):
    if ACT == 0:
        return tl.where(z > 0, 1.0, 0.0).to(z.dtype)
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        return cdf + z * tl.exp(-0.5 * z * z) * 0.3989422804014327


@triton.jit
def find_tile(pid, tok_start_ptr, T, BLOCK_M: tl.constexpr):
    """→ (task or -1, row_begin, row_end) of the pid-th (task, BLOCK_M rows) tile."""
    task = pid * 0 - 1
    row0 = pid * 0
    row1 = pid * 0
    seen = pid * 0
    for t in range(T):
        s = tl.load(tok_start_ptr + t)
        e = tl.load(tok_start_ptr + t + 1)
        n_tiles = (e - s + BLOCK_M - 1) // BLOCK_M
        hit = (pid >= seen) & (pid < seen + n_tiles)
        task = tl.where(hit, t, task)
        row0 = tl.where(hit, s + (pid - seen) * BLOCK_M, row0)
        row1 = tl.where(hit, e, row1)
        seen += n_tiles
    return task, row0, row1


@triton.jit
def swizzle(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of a 1-D program id over num_m × num_n tiles, GROUP_M tile rows at a time."""
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_m, (pid % per_group) // group_m


@triton.jit
def mma(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b (a [M, K], b [K, N], acc fp32 or fp64 [M, N])."""
    if UPCAST:
        return tl.dot(a.to(acc.dtype), b.to(acc.dtype), acc)
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def token_rows(rows, row_ok, perm_ptr, HAS_PERM: tl.constexpr):
    """Row of the caller's (unsorted) token order for each task-sorted row (int64)."""
    if HAS_PERM:
        src = tl.load(perm_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    else:
        src = rows.to(tl.int64)
    return src


@triton.jit
def gathered_matmul(a_ptr, src, row_ok, b_ptr, b_rows, b_ok, K, acc,
                    UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + A[src, :K] @ B[b_rows, :K]ᵀ: fc1 with the weight rows picked by index inside the
    tile loads (A and B row-major with row length K; masked rows/columns read as 0)."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(a_ptr + src[:, None] * K + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr + b_rows[None, :] * K + ks[:, None], mask=b_ok[None, :] & k_ok[:, None], other=0.0)
        acc = mma(a, b, acc, UPCAST, PRECISION)
    return acc
