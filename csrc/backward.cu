// Weight-gradient family of the masked FFN backward (reductions over tokens):
//   wgrad:  out[A[j], c] += Σ_i P[i, j] · Q[q_row(i), c]   dW1 (P = dZ, Q = X), dW2ᵀ (P = H, Q = dY)
//   colsum: out[A[j]]    += Σ_i P[i, j]                     db1 of the active neurons
// i runs over one work item's rows (a chunk of one task's tokens), P is packed [N, ldp] (row i
// holds the task's |A_t| values). Partial sums of chunks and of tasks that share a neuron are
// combined with fp32 atomic adds into a zero-initialised fp32 buffer.
#include "common.cuh"
#include "ops.h"

namespace ns {
namespace {

struct TnParams {
  const int* work;
  const void* p;
  i64 ldp;
  const void* q;
  i64 ldq;
  const i64* q_rows;  // nullptr: identity
  const int* idx;
  const int* off;
  int n_cols;
  float* out;
  i64 ldo;
};

template <typename T>
__global__ void __launch_bounds__(NTHREADS) wgrad_kernel(TnParams p) {
  const Work wk = load_work(p.work, blockIdx.x);
  const int cbeg = p.off[wk.task];
  const int ncol = p.off[wk.task + 1] - cbeg;  // active neurons of the task = rows of the output tile
  const int m0 = blockIdx.y * BM, n0 = blockIdx.z * BN;
  if (m0 >= ncol) return;
  const int K = wk.r1 - wk.r0;  // tokens of this chunk

  __shared__ Smem<T> s;
  __shared__ i64 q_row[BK];
  const T* P = static_cast<const T*>(p.p);
  const T* Q = static_cast<const T*>(p.q);

  TileCore<T, false, false> core;
  core.init();
  for (int k0 = 0; k0 < K; k0 += BK) {
    for (int kk = threadIdx.x; kk < BK; kk += NTHREADS) {
      const int g = wk.r0 + k0 + kk;
      q_row[kk] = k0 + kk < K ? (p.q_rows ? p.q_rows[g] : (i64)g) : -1;
    }
    for (int e = threadIdx.x; e < BK * BM; e += NTHREADS) {
      const int kk = e / BM, m = e % BM, k = k0 + kk, j = m0 + m;
      s.a[kk * LDA_M + m] = (k < K && j < ncol) ? P[(i64)(wk.r0 + k) * p.ldp + j] : from_f<T>(0.f);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < BK * BN; e += NTHREADS) {
      const int kk = e / BN, n = e % BN, c = n0 + n;
      const i64 r = q_row[kk];
      s.b[kk * LDB_N + n] = (r >= 0 && c < p.n_cols) ? Q[r * p.ldq + c] : from_f<T>(0.f);
    }
    __syncthreads();
    core.mma(s.a, s.b);
    __syncthreads();
  }
  core.store(s.c);
  __syncthreads();

  for (int e = threadIdx.x; e < BM * BN; e += NTHREADS) {
    const int m = e / BN, n = e % BN, j = m0 + m, c = n0 + n;
    if (j >= ncol || c >= p.n_cols) continue;
    atomicAdd(p.out + (i64)p.idx[cbeg + j] * p.ldo + c, s.c[m * LDC + n]);
  }
}

constexpr int COLSUM_THREADS = 256;

template <typename T>
__global__ void __launch_bounds__(COLSUM_THREADS) colsum_kernel(const int* work, const T* P, i64 ldp,
                                                                const int* idx, const int* off, float* out) {
  const Work wk = load_work(work, blockIdx.x);
  const int cbeg = off[wk.task];
  const int ncol = off[wk.task + 1] - cbeg;
  const int j = blockIdx.y * COLSUM_THREADS + threadIdx.x;
  if (j >= ncol) return;
  float acc = 0.f;
  for (int i = wk.r0; i < wk.r1; ++i) acc += to_f<T>(P[(i64)i * ldp + j]);
  atomicAdd(out + idx[cbeg + j], acc);
}

}  // namespace

void gathered_wgrad(int dtype, int device, ptr stream, ptr work, int num_work, int max_cols, ptr p_,
                    i64 ldp, ptr q, i64 ldq, ptr q_rows, ptr idx, ptr off, int n_cols, ptr out_f32,
                    i64 ldo) {
  prepare_device(device);
  if (num_work <= 0 || max_cols <= 0 || n_cols <= 0) return;
  TnParams p{};
  p.work = as_ptr<const int>(work);
  p.p = as_ptr<const void>(p_), p.ldp = ldp, p.q = as_ptr<const void>(q), p.ldq = ldq;
  p.q_rows = as_ptr<const i64>(q_rows), p.idx = as_ptr<const int>(idx), p.off = as_ptr<const int>(off);
  p.n_cols = n_cols, p.out = as_ptr<float>(out_f32), p.ldo = ldo;
  const dim3 grid(num_work, ceil_div(max_cols, BM), ceil_div(n_cols, BN));
  if (grid.z > 65535u) throw std::invalid_argument("gathered_wgrad: n_cols too large for the grid");
  cudaStream_t st = as_stream(stream);
  if (dtype == F32) wgrad_kernel<float><<<grid, NTHREADS, 0, st>>>(p);
  else if (dtype == F16) wgrad_kernel<__half><<<grid, NTHREADS, 0, st>>>(p);
  else if (dtype == BF16) wgrad_kernel<__nv_bfloat16><<<grid, NTHREADS, 0, st>>>(p);
  else throw std::invalid_argument("gathered_wgrad: dtype code must be 0, 1 or 2, got " + std::to_string(dtype));
  check_launch("gathered_wgrad");
}

void gathered_colsum(int dtype, int device, ptr stream, ptr work, int num_work, int max_cols, ptr p,
                     i64 ldp, ptr idx, ptr off, ptr out_f32) {
  prepare_device(device);
  if (num_work <= 0 || max_cols <= 0) return;
  const dim3 grid(num_work, ceil_div(max_cols, COLSUM_THREADS));
  cudaStream_t st = as_stream(stream);
  const int* w = as_ptr<const int>(work);
  const int* ix = as_ptr<const int>(idx);
  const int* of = as_ptr<const int>(off);
  float* o = as_ptr<float>(out_f32);
  if (dtype == F32) colsum_kernel<float><<<grid, COLSUM_THREADS, 0, st>>>(w, as_ptr<const float>(p), ldp, ix, of, o);
  else if (dtype == F16) colsum_kernel<__half><<<grid, COLSUM_THREADS, 0, st>>>(w, as_ptr<const __half>(p), ldp, ix, of, o);
  else if (dtype == BF16)
    colsum_kernel<__nv_bfloat16><<<grid, COLSUM_THREADS, 0, st>>>(w, as_ptr<const __nv_bfloat16>(p), ldp, ix, of, o);
  else throw std::invalid_argument("gathered_colsum: dtype code must be 0, 1 or 2, got " + std::to_string(dtype));
  check_launch("gathered_colsum");
}

}  // namespace ns
