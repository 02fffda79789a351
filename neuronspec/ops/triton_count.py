"""Triton kernel: fused fc1 + bias + activation + per-(task, neuron) activity count (docs/design.md §2).

    Z = X W1ᵀ + b1;  H = act(Z) (stored only when WRITE_OUTPUT);
    counts[t, n] += #{valid tokens r of task t : Z[r, n] > 0}

Tokens are visited in task-sorted order (sorted row r = token perm[r]); each BLOCK_M tile lies
inside one task (see triton_common.find_tile), so a tile reduces its (Z > 0) column counts
first and issues one atomic per neuron column. counts_ptr is an int32 [T, f] scratch buffer
(the launcher adds it into the int64 counts). Grid: (cdiv(N, BM) + T, cdiv(f, BN)).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import act, find_tile, gathered_matmul, token_rows


@triton.jit
def fc1_act_count_kernel(
    x_ptr, perm_ptr, w_ptr, b_ptr, valid_ptr, tok_start_ptr, T, h_ptr, counts_ptr, K, F,
    ACT: tl.constexpr, HAS_PERM: tl.constexpr, HAS_VALID: tl.constexpr, WRITE_OUTPUT: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    task, r0, r1 = find_tile(tl.program_id(0), tok_start_ptr, T, BLOCK_M)
    if task < 0:
        return
    rows = r0 + tl.arange(0, BLOCK_M)
    row_ok = rows < r1
    src = token_rows(rows, row_ok, perm_ptr, HAS_PERM)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < F

    acc = gathered_matmul(x_ptr, src, row_ok, w_ptr, cols.to(tl.int64), col_ok, K,
                          tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC), UPCAST, PRECISION, BLOCK_K)
    z = acc + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]

    ok = row_ok[:, None] & col_ok[None, :]
    if WRITE_OUTPUT:
        tl.store(h_ptr + src[:, None] * F + cols[None, :], act(z, ACT).to(h_ptr.dtype.element_ty), mask=ok)
    counted = row_ok
    if HAS_VALID:
        counted = counted & (tl.load(valid_ptr + src, mask=row_ok, other=0) != 0)
    pos = (z > 0) & counted[:, None]
    tile_counts = tl.sum(pos.to(tl.int32), axis=0)
    tl.atomic_add(counts_ptr + task * F + cols, tile_counts, mask=col_ok)
