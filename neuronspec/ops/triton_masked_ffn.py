"""Triton kernels of the masked FFN (docs/design.md §2), grouped over tasks, no gathered weight copies.

Tokens are processed in task-sorted order: sorted row r is original token perm[r] (or r when
HAS_PERM is False); task t owns sorted rows tok_start[t]:tok_start[t+1] and active neurons
indices[offsets[t]:offsets[t+1]] (k_t of them). "Packed" [N, f] buffers hold, in sorted row r,
its task's k_t values in columns 0..k_t-1 (column j ↔ neuron indices[offsets[t] + j]).

gather_n_kernel    P[r, j] = Σ_k A[perm[r], k] · B[idx_t[j], k]           (fc1 / dH = dY W2[:, A])
    MODE 0 (forward):  Z = P + b1[idx] → z_ptr, H = act(Z) → out_ptr
    MODE 1 (backward): dZ = P ⊙ act'(Z) → out_ptr, H = act(Z) → h_ptr, db1[idx] += Σ_r dZ
gather_k_kernel    OUT[perm[r], n] = Σ_j P[r, j] · B[idx_t[j], n] (+ bias[t, n])  (fc2 / dX)
scatter_rows_kernel OUT[idx_t[j], n] += Σ_{r of t} P[r, j] · A[perm[r], n]       (dW1 / dW2ᵀ)

B is always a row-major [f, K] matrix, so the index gather reads whole contiguous rows
(W1 itself, or Wᵀ2 = a transposed copy of W2 made once per call by the launcher).
Grids: gather_n (cdiv(N, BM) + T, cdiv(f, BN)); gather_k (cdiv(N, BM) + T, cdiv(n_out, BN));
scatter_rows (T, cdiv(f, BM), cdiv(n_out, BN)). Programs past k_t or the last tile exit early.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import act, act_grad, find_tile, gathered_matmul, mma, token_rows


@triton.jit
def gather_n_kernel(
    a_ptr, perm_ptr, b_ptr, idx_ptr, offsets_ptr, tok_start_ptr, T,
    bias_ptr, z_ptr, out_ptr, h_ptr, db_ptr, K, F,
    MODE: tl.constexpr, ACT: tl.constexpr, HAS_PERM: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    task, r0, r1 = find_tile(tl.program_id(0), tok_start_ptr, T, BLOCK_M)
    if task < 0:
        return
    c0 = tl.load(offsets_ptr + task)
    k_t = tl.load(offsets_ptr + task + 1) - c0
    pid_n = tl.program_id(1)
    if pid_n * BLOCK_N >= k_t:
        return
    rows = r0 + tl.arange(0, BLOCK_M)
    row_ok = rows < r1
    src = token_rows(rows, row_ok, perm_ptr, HAS_PERM)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < k_t
    nid = tl.load(idx_ptr + c0 + cols, mask=col_ok, other=0).to(tl.int64)

    acc = gathered_matmul(a_ptr, src, row_ok, b_ptr, nid, col_ok, K, tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC),
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
def gather_k_kernel(
    p_ptr, perm_ptr, b_ptr, idx_ptr, offsets_ptr, tok_start_ptr, T,
    bias_ptr, bias_stride, out_ptr, NOUT, F,
    HAS_BIAS: tl.constexpr, HAS_PERM: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    task, r0, r1 = find_tile(tl.program_id(0), tok_start_ptr, T, BLOCK_M)
    if task < 0:
        return
    c0 = tl.load(offsets_ptr + task)
    k_t = tl.load(offsets_ptr + task + 1) - c0
    rows = r0 + tl.arange(0, BLOCK_M)
    row_ok = rows < r1
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < NOUT

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for j0 in range(0, k_t, BLOCK_K):
        js = j0 + tl.arange(0, BLOCK_K)
        j_ok = js < k_t
        nid = tl.load(idx_ptr + c0 + js, mask=j_ok, other=0).to(tl.int64)
        p = tl.load(p_ptr + rows.to(tl.int64)[:, None] * F + js[None, :],
                    mask=row_ok[:, None] & j_ok[None, :], other=0.0)
        b = tl.load(b_ptr + nid[:, None] * NOUT + cols[None, :], mask=j_ok[:, None] & col_ok[None, :], other=0.0)
        acc = mma(p, b, acc, UPCAST, PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + task * bias_stride + cols, mask=col_ok, other=0.0).to(ACC)[None, :]

    dst = token_rows(rows, row_ok, perm_ptr, HAS_PERM)
    tl.store(out_ptr + dst[:, None] * NOUT + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def scatter_rows_kernel(
    p_ptr, perm_ptr, a_ptr, idx_ptr, offsets_ptr, tok_start_ptr, out_ptr, NOUT, F,
    ATOMIC: tl.constexpr, HAS_PERM: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    task = tl.program_id(0)
    s = tl.load(tok_start_ptr + task)
    e = tl.load(tok_start_ptr + task + 1)
    c0 = tl.load(offsets_ptr + task)
    k_t = tl.load(offsets_ptr + task + 1) - c0
    pid_j = tl.program_id(1)
    if (e <= s) | (pid_j * BLOCK_M >= k_t):
        return
    js = pid_j * BLOCK_M + tl.arange(0, BLOCK_M)
    j_ok = js < k_t
    nid = tl.load(idx_ptr + c0 + js, mask=j_ok, other=0).to(tl.int64)
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < NOUT

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for r0 in range(s, e, BLOCK_K):
        rs = r0 + tl.arange(0, BLOCK_K)
        r_ok = rs < e
        src = token_rows(rs, r_ok, perm_ptr, HAS_PERM)
        p = tl.load(p_ptr + rs.to(tl.int64)[:, None] * F + js[None, :], mask=r_ok[:, None] & j_ok[None, :], other=0.0)
        a = tl.load(a_ptr + src[:, None] * NOUT + cols[None, :], mask=r_ok[:, None] & col_ok[None, :], other=0.0)
        acc = mma(tl.trans(p), a, acc, UPCAST, PRECISION)

    dst = out_ptr + nid[:, None] * NOUT + cols[None, :]
    ok = j_ok[:, None] & col_ok[None, :]
    if ATOMIC:
        tl.atomic_add(dst, acc, mask=ok, sem="relaxed")
    else:
        tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=ok)
