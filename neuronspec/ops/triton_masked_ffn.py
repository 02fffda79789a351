"""Triton kernels of the masked FFN (docs/design.md §2), grouped over tasks.

Tokens are processed in task-sorted order: sorted row r is original token perm[r] (or r when
HAS_PERM is False); task t owns sorted rows tok_start[t]:tok_start[t+1] and active neurons
indices[offsets[t]:offsets[t+1]] (k_t of them). "Packed" [N, F] buffers hold, in sorted row r,
its task's k_t values in columns 0..k_t-1 (column j ↔ neuron indices[offsets[t] + j]).
"Packed" weights [Σ k_t, K] hold row B[indices[c]] in row c (gathered once per call).

gather_n_kernel    P[r, j] = Σ_k A[perm[r], k] · B[row_t(j), k]            (fc1 / dH = dY W2[:, A])
    row_t(j) = indices[offsets[t] + j] (B = W1 itself) or offsets[t] + j (B_PACKED)
    MODE 0 (forward):  Z = P + b1[idx] → z_ptr, H = act(Z) → out_ptr
    MODE 1 (backward): dZ = P ⊙ act'(Z) → out_ptr, H = act(Z) → h_ptr, db1[idx] += Σ_r dZ
gather_k_kernel    OUT[perm[r], n] = Σ_j P[r, j] · Bp[offsets[t] + j, n] (+ bias[t, n])  (fc2 / dX)
scatter_rows_kernel OUT[idx_t[j], n] += Σ_{r of t} P[r, j] · A[r, n]   (dW1 / dW2ᵀ; A task-sorted)

Pipelining (docs/design.md §3): no index is loaded inside a K loop — gather_n gathers its B
rows by an index read once per tile, gather_k reads packed weights, scatter_rows reads
task-sorted A — and no K-loop load is masked along its contiguous dimension by a value read
from memory (gather_k runs its full BLOCK_K steps unmasked and one masked tail step), so
Triton emits cp.async multi-stage copies overlapped with async wgmma on sm_90
(tests/_triton_sm90.py checks this on the compiled kernels).
Grids are 1-D with GROUP_M tile swizzling (triton_common.swizzle): gather_n / gather_k over
(cdiv(N, BM) + T token tiles) × (column blocks); scatter_rows over (T, cdiv(F, BM), cdiv(n_out, BN)).
Programs past k_t or the last tile exit early.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import act, act_grad, find_tile, gathered_matmul, mma, swizzle, token_rows


@triton.jit
def gather_n_kernel(
    a_ptr, perm_ptr, b_ptr, idx_ptr, offsets_ptr, tok_start_ptr, T, N,
    bias_ptr, z_ptr, out_ptr, h_ptr, db_ptr, K, F,
    MODE: tl.constexpr, ACT: tl.constexpr, HAS_PERM: tl.constexpr, B_PACKED: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = swizzle(tl.program_id(0), tl.cdiv(N, BLOCK_M) + T, tl.cdiv(F, BLOCK_N), GROUP_M)
    task, r0, r1 = find_tile(pid_m, tok_start_ptr, T, BLOCK_M)
    if task < 0:
        return
    c0 = tl.load(offsets_ptr + task)
    k_t = tl.load(offsets_ptr + task + 1) - c0
    if pid_n * BLOCK_N >= k_t:
        return
    rows = r0 + tl.arange(0, BLOCK_M)
    row_ok = rows < r1
    src = token_rows(rows, row_ok, perm_ptr, HAS_PERM)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < k_t
    nid = tl.load(idx_ptr + c0 + cols, mask=col_ok, other=0).to(tl.int64)
    b_rows = (c0 + cols).to(tl.int64) if B_PACKED else nid

    acc = gathered_matmul(a_ptr, src, row_ok, b_ptr, b_rows, col_ok, K, tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC),
                          UPCAST, PRECISION, BLOCK_K)

    ok = row_ok[:, None] & col_ok[None, :]
    packed = rows.to(tl.int64)[:, None] * F + cols[None, :]
    if MODE == 0:
        z = acc + tl.load(bias_ptr + nid, mask=col_ok, other=0.0).to(ACC)[None, :]
        tl.store(z_ptr + packed, z.to(z_ptr.dtype.element_ty), mask=ok)
        tl.store(out_ptr + packed, act(z, ACT).to(out_ptr.dtype.element_ty), mask=ok)
    else:
        z = tl.load(z_ptr + packed, mask=ok, other=0.0).to(ACC)
        dz = tl.where(ok, acc * act_grad(z, ACT), 0.0)
        tl.store(out_ptr + packed, dz.to(out_ptr.dtype.element_ty), mask=ok)
        tl.store(h_ptr + packed, act(z, ACT).to(h_ptr.dtype.element_ty), mask=ok)
        tl.atomic_add(db_ptr + nid, tl.sum(dz, axis=0), mask=col_ok, sem="relaxed")


@triton.jit
def _packed_step(acc, p_ptr, p_rows, row_ok, b_ptr, c0, j0, k_t, cols, col_ok, NOUT, F,
                 MASKED: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + P[p_rows, j0:j0+BK] @ Bp[c0+j0 : c0+j0+BK, cols]; MASKED bounds j by k_t (the
    tail step), else the step is a full one and only rows/columns are masked."""
    js = j0 + tl.arange(0, BLOCK_K)
    p_ptrs = p_ptr + p_rows[:, None] * F + js[None, :]
    b_ptrs = b_ptr + (c0 + js).to(tl.int64)[:, None] * NOUT + cols[None, :]
    if MASKED:
        j_ok = js < k_t
        p = tl.load(p_ptrs, mask=row_ok[:, None] & j_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=j_ok[:, None] & col_ok[None, :], other=0.0)
    else:
        p = tl.load(p_ptrs, mask=row_ok[:, None], other=0.0)
        b = tl.load(b_ptrs, mask=col_ok[None, :], other=0.0)
    return mma(p, b, acc, UPCAST, PRECISION)


@triton.jit
def gather_k_kernel(
    p_ptr, perm_ptr, b_ptr, offsets_ptr, tok_start_ptr, T, N,
    bias_ptr, bias_stride, out_ptr, NOUT, F,
    HAS_BIAS: tl.constexpr, HAS_PERM: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = swizzle(tl.program_id(0), tl.cdiv(N, BLOCK_M) + T, tl.cdiv(NOUT, BLOCK_N), GROUP_M)
    task, r0, r1 = find_tile(pid_m, tok_start_ptr, T, BLOCK_M)
    if task < 0:
        return
    c0 = tl.load(offsets_ptr + task)
    k_t = tl.load(offsets_ptr + task + 1) - c0
    rows = r0 + tl.arange(0, BLOCK_M)
    row_ok = rows < r1
    p_rows = rows.to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < NOUT

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    k_full = (k_t // BLOCK_K) * BLOCK_K
    for j0 in range(0, k_full, BLOCK_K):
        acc = _packed_step(acc, p_ptr, p_rows, row_ok, b_ptr, c0, j0, k_t, cols, col_ok, NOUT, F,
                           False, UPCAST, PRECISION, BLOCK_K)
    if k_full < k_t:
        acc = _packed_step(acc, p_ptr, p_rows, row_ok, b_ptr, c0, k_full, k_t, cols, col_ok, NOUT, F,
                           True, UPCAST, PRECISION, BLOCK_K)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + task * bias_stride + cols, mask=col_ok, other=0.0).to(ACC)[None, :]

    dst = token_rows(rows, row_ok, perm_ptr, HAS_PERM)
    tl.store(out_ptr + dst[:, None] * NOUT + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def scatter_rows_kernel(
    p_ptr, a_ptr, idx_ptr, offsets_ptr, tok_start_ptr, out_ptr, NOUT, F,
    ATOMIC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    task = tl.program_id(1)
    pid_j, pid_n = swizzle(tl.program_id(0), tl.cdiv(F, BLOCK_M), tl.cdiv(NOUT, BLOCK_N), GROUP_M)
    s = tl.load(tok_start_ptr + task)
    e = tl.load(tok_start_ptr + task + 1)
    c0 = tl.load(offsets_ptr + task)
    k_t = tl.load(offsets_ptr + task + 1) - c0
    if (e <= s) | (pid_j * BLOCK_M >= k_t):
        return
    js = pid_j * BLOCK_M + tl.arange(0, BLOCK_M)
    j_ok = js < k_t
    nid = tl.load(idx_ptr + c0 + js, mask=j_ok, other=0).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < NOUT
    # columns k_t <= j < F of P are read but never stored: a row j of the product depends on
    # column j of P only, and bounding loads by F (not by the loaded k_t) keeps them vectorized
    in_row = js < F

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for r0 in range(s, e, BLOCK_K):
        rs = r0 + tl.arange(0, BLOCK_K)
        r_ok = rs < e
        p = tl.load(p_ptr + rs.to(tl.int64)[:, None] * F + js[None, :], mask=r_ok[:, None] & in_row[None, :],
                    other=0.0)
        a = tl.load(a_ptr + rs.to(tl.int64)[:, None] * NOUT + cols[None, :], mask=r_ok[:, None] & col_ok[None, :],
                    other=0.0)
        acc = mma(tl.trans(p), a, acc, UPCAST, PRECISION)

    dst = out_ptr + nid[:, None] * NOUT + cols[None, :]
    ok = j_ok[:, None] & col_ok[None, :]
    if ATOMIC:
        tl.atomic_add(dst, acc, mask=ok, sem="relaxed")
    else:
        tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=ok)
