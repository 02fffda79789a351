// Host API of neuronspec._cuda (no CUDA or torch types: pointers travel as integers).
//
// Conventions shared by every launcher:
//   dtype 1 fp16, 2 bf16 (fp32 is not supported: the GEMMs are CUTLASS tensor-core kernels);
//   act 0 relu, 1 gelu; device = CUDA ordinal (made current if it is not); stream = cudaStream_t.
//   Matrices are row-major with a leading dimension (elements); every pointer of a GEMM operand
//   is 16-byte aligned and every leading dimension and GEMM extent along a contiguous dimension
//   is a multiple of 8 (the callers pad: neuronspec/ops/cuda_backend.py).
//   A pointer argument 0 means "absent" where documented.
// Every launcher throws std::runtime_error (Python RuntimeError) naming the kernel on failure,
// "neuronspec._cuda: no CUDA device: ..." when there is no device, and std::invalid_argument
// (Python ValueError) naming the argument for a bad code or size.
#pragma once
#include <cstdint>
#include <string>

namespace ns {
using ptr = std::uintptr_t;
using i64 = long long;

int device_count();            // throws when the runtime reports no usable device
std::string cutlass_version();  // "major.minor.patch" of the CUTLASS headers compiled in

// ---- grouped GEMMs (grouped_gemm.cu, gemm_*.cu) ----------------------------------------
// One launch computes P problems, p = 0..P-1. Problem p owns the rows r ∈ [s_p, e_p) of the
// row-grouped token buffers (starts int32 [P+1]: s_p = starts[p], e_p = starts[p+1]; starts 0:
// s = 0, e = n) and the rows koff[p] .. koff[p] + kw[p] of the per-task weight tables (int32
// [P] each, kw[p] a multiple of 8). m_p = e_p - s_p. Per op (T = dtype, fp32 accumulation):
//   op 0 "nt":  D[s+i, j] = Σ_k A[s+i, k] B[koff+j, k]     (m_p x kw[p], K = kdim), D T
//               fc1 (A = [X | 1], B = [W1 | b1] table) and dH (A = dY, B = W2ᵀ table)
//   op 1 "nn":  D[s+i, c] = Σ_k A[s+i, k] B[koff+k, c]     (m_p x ncols, K = kw[p]), D T
//               fc2 (A = H packed, B = W2ᵀ table) and dX (A = dZ packed, B = W1 table)
//   op 2 "tn":  D[koff+j, c] = Σ_i A[s+i, j] B[s+i, c]     (kw[p] x ncols, K = m_p), D fp32
//               dW1 | db1 (A = dZ, B = [X | 1]) and dW2ᵀ (A = H, B = dY) of the task's table rows
// kernel 0: the sm80 CUTLASS 2.x kernels (any sm_80+ device); 1: the sm_90a CUTLASS 3 kernels
// (only when has_sm90() and the device is sm_90), which skip problems with K = 0: the caller
// zero-fills D of ops nn and tn for them. workspace: device memory of
// workspace_bytes(P) bytes; a setup kernel writes problem sizes, pointers and strides there
// from the device-side bounds (no host copy, no sync).
i64 workspace_bytes(int num_problems);
bool has_sm90();  // the module holds the sm_90a kernels (built for architecture 90 or 90a)
void grouped_gemm(int kernel, int op, int dtype, int device, ptr stream, ptr workspace, int num_problems, ptr starts,
                  int n, ptr koff, ptr kw, int kdim, int ncols, ptr a, i64 lda, ptr b, i64 ldb, ptr d, i64 ldd);

// ---- elementwise kernels (elementwise.cu) ----------------------------------------------
// dst[i, j] = src[idx[i], j] for j < src_cols (idx 0: row i; idx[i] < 0: a zero row);
// dst[i, extra_col] = extra[idx[i]] (extra 0: 1; a zero row: 0); every other j < ld_dst: 0
// (int64 idx; extra_col -1: none). Builds [X | 1 | 0] token buffers and [W1 | b1 | 0] tables.
void gather_rows(int dtype, int device, ptr stream, ptr src, i64 ld_src, int src_cols, ptr idx, i64 n_rows,
                 ptr dst, i64 ld_dst, int extra_col, ptr extra);
// dst[rows[r], c] = src[r, c] + bias[p(r), c] for r < n_rows, c < n_cols (rows 0: r; bias fp32
// [P, ld_bias] or 0; p(r) = row_problem[r] (int64) or 0): un-grouping with fc2's per-task bias.
void scatter_rows(int dtype, int device, ptr stream, ptr src, i64 ld_src, i64 n_rows, int n_cols, ptr bias,
                  i64 ld_bias, ptr row_problem, ptr rows, ptr dst, i64 ld_dst);
// h[e] = act(z[e]) for e < numel.
void act_forward(int dtype, int act, int device, ptr stream, ptr z, ptr h, i64 numel);
// g[e] <- g[e] * act'(z[e]) (dZ from dH, in place) and h[e] = act(z[e]) for e < numel.
void act_backward(int dtype, int act, int device, ptr stream, ptr z, ptr g, ptr h, i64 numel);
// For grouped rows r < n_rows and columns c < n_cols of z [n_rows, ldz]: token = rows[r] (rows
// 0: r), task = row_task[r] (row_task 0: `task`); h[token, c] = act(z[r, c]) (h 0: not written)
// and counts[task, c] += #{r : z[r, c] > 0 and valid[token]} (int64 counts, row stride ldc;
// valid 0: all valid; u8).
void count_act(int dtype, int act, int device, ptr stream, ptr z, i64 ldz, i64 n_rows, int n_cols, ptr rows,
               ptr row_task, int task, ptr valid, ptr h, i64 ldh, ptr counts, i64 ldc);
}  // namespace ns
