// Host API of neuronspec._cuda (no CUDA or torch types: pointers travel as integers).
//
// Conventions shared by every launcher:
//   dtype 0 fp32, 1 fp16, 2 bf16; act 0 relu, 1 gelu; device = CUDA ordinal; stream = cudaStream_t.
//   work: int32 [num_work, 3] rows (task, r0, r1): a task's tokens r0..r1 (positions in the
//     task-grouped token order), at most 64 rows per item for the row-tiled launchers
//     (fc1 family, fc2) and any number for the reduction launchers (wgrad, colsum).
//   idx/off: a task's active neurons are idx[off[t] .. off[t+1]) (int32 CSR); the "packed"
//     [N, ldo] buffers hold, in row i (grouped position), that token's task's |A_t| values
//     in columns 0..|A_t|).
//   *_rows: int64 [N] map grouped position -> original token row (0 = identity).
//   A pointer argument 0 means "absent" where documented.
// Every launcher throws std::runtime_error (Python RuntimeError) naming the kernel on failure
// and "neuronspec._cuda: no CUDA device: ..." when there is no device.
#pragma once
#include <cstdint>

namespace ns {
using ptr = std::uintptr_t;
using i64 = long long;

int device_count();  // throws when the runtime reports no usable device

// Z = X[rows] W1[A]ᵀ + b1[A] (packed z_out), H = act(Z) (packed h_out). K = d; max_cols = f.
void gathered_fc1(int dtype, int act, int device, ptr stream, ptr work, int num_work, int max_cols,
                  ptr x, i64 ldx, ptr x_rows, ptr w1, i64 ldw, ptr idx, ptr off, int K, ptr bias_f32,
                  ptr z_out, ptr h_out, i64 ldo);

// Dense Z = X[rows] W1ᵀ + b1 over all n_cols neurons; h_out[rows[i]] = act(Z) (h_out 0: not
// written); counts[task, n] += #{i : Z[i, n] > 0 and valid[rows[i]]} (valid 0: all valid).
void fc1_count(int dtype, int act, int device, ptr stream, ptr work, int num_work, int n_cols,
               ptr x, i64 ldx, ptr x_rows, ptr w1, i64 ldw, int K, ptr bias_f32, ptr h_out, i64 ldo,
               ptr counts_i64, i64 ldc, ptr valid_u8);

// dZ = (dY[rows] W2ᵀ[A]ᵀ) ⊙ act'(Z) (packed dz_out) and H = act(Z) (packed h_out) from the
// packed Z saved by the forward. w2t = W2ᵀ [f, d_out] contiguous; K = d_out.
void gathered_dz(int dtype, int act, int device, ptr stream, ptr work, int num_work, int max_cols,
                 ptr dy, i64 lddy, ptr dy_rows, ptr w2t, i64 ldw, ptr idx, ptr off, int K, ptr z_in,
                 ptr dz_out, ptr h_out, i64 ldo);

// out[out_rows[i], c] = Σ_j P[i, j] W[A[j], c] + bias[task * bias_stride + c] for c < n_cols:
// fc2 (P = H, W = W2ᵀ, bias = b2 + c_t) and dX (P = dZ, W = W1, bias 0).
void gathered_fc2(int dtype, int device, ptr stream, ptr work, int num_work, ptr p, i64 ldp, ptr w,
                  i64 ldw, ptr idx, ptr off, int n_cols, ptr bias_f32, i64 bias_stride, ptr out,
                  i64 ldo, ptr out_rows);

// out_f32[A[j], c] += Σ_i P[i, j] Q[q_rows[i], c] over each work item's rows (atomic adds):
// dW1 (P = dZ, Q = X) and dW2ᵀ (P = H, Q = dY). max_cols = f.
void gathered_wgrad(int dtype, int device, ptr stream, ptr work, int num_work, int max_cols, ptr p,
                    i64 ldp, ptr q, i64 ldq, ptr q_rows, ptr idx, ptr off, int n_cols, ptr out_f32,
                    i64 ldo);

// out_f32[A[j]] += Σ_i P[i, j] over each work item's rows (atomic adds): db1 of active neurons.
void gathered_colsum(int dtype, int device, ptr stream, ptr work, int num_work, int max_cols, ptr p,
                     i64 ldp, ptr idx, ptr off, ptr out_f32);
}  // namespace ns
