"""Triton kernel: activation + per-(task, neuron) activity count over Z = X W1ᵀ + b1 (docs/design.md §2).

fc1 itself runs in cuBLAS(Lt) with its bias epilogue (`torch.addmm`); this one pass then reads Z,
writes H = act(Z) over it in place (only when WRITE_OUTPUT) and counts

    counts[t, n] += #{valid tokens r of task t : Z[r, n] > 0}

The pass costs what the activation alone costs (one read and one write of [N, f]) plus one
relaxed atomic per (tile, neuron column): the ≤ 3 % counting target is the atomics' share.
Tokens are visited in task-sorted order (sorted row r = token perm[r]); each BLOCK_M tile lies
inside one task (triton_common.find_tile), so a tile reduces its (Z > 0) column counts first.
counts_ptr is an int32 [T, f] scratch buffer (the launcher adds it into the int64 counts).
Grid: (cdiv(N, BM) + T, cdiv(f, BN)).

The kernel changes its inputs (counts, and Z when WRITE_OUTPUT), so an autotuner that runs it
once per config and then again must zero the counts and restore Z before each run: AUTOTUNE
holds the arguments for `triton.autotune` (without restore_value, each rerun applied GELU again).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import act, find_tile, token_rows

AUTOTUNE = dict(key=["F", "WRITE_OUTPUT"], reset_to_zero=["counts_ptr"], restore_value=["z_ptr"])


@triton.jit
def act_count_kernel(
    z_ptr, perm_ptr, valid_ptr, tok_start_ptr, T, counts_ptr, F,
    ACT: tl.constexpr, HAS_PERM: tl.constexpr, HAS_VALID: tl.constexpr, WRITE_OUTPUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    task, r0, r1 = find_tile(tl.program_id(0), tok_start_ptr, T, BLOCK_M)
    if task < 0:
        return
    rows = r0 + tl.arange(0, BLOCK_M)
    row_ok = rows < r1
    src = token_rows(rows, row_ok, perm_ptr, HAS_PERM)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < F
    ok = row_ok[:, None] & col_ok[None, :]
    ptrs = z_ptr + src[:, None] * F + cols[None, :]
    z = tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)
    if WRITE_OUTPUT:
        tl.store(ptrs, act(z, ACT).to(z_ptr.dtype.element_ty), mask=ok)
    counted = row_ok
    if HAS_VALID:
        counted = counted & (tl.load(valid_ptr + src, mask=row_ok, other=0) != 0)
    pos = (z > 0) & counted[:, None]
    tile_counts = tl.sum(pos.to(tl.int32), axis=0)
    tl.atomic_add(counts_ptr + task * F + cols, tile_counts, mask=col_ok, sem="relaxed")
