// fc2 family: out[out_row(i), c] = Σ_j P[i, j] · W[A[j], c] + bias_t[c], the reduction running
// over the task's active neurons only: P is a packed [N, ldp] buffer (H or dZ, row i holds the
// task's |A_t| values), W's rows are gathered by the active list inside the K-slab loads
// (W = W2ᵀ [f, d_out] for the forward fc2, W = W1 [f, d] for dX).
#include "common.cuh"
#include "ops.h"

namespace ns {
namespace {

struct NnParams {
  const int* work;
  const void* p;
  i64 ldp;
  const void* w;
  i64 ldw;
  const int* idx;
  const int* off;
  int n_cols;
  const float* bias;  // [T, bias_stride] or nullptr
  i64 bias_stride;
  void* out;
  i64 ldo;
  const i64* out_rows;  // nullptr: identity
};

template <typename T>
__global__ void __launch_bounds__(NTHREADS) fc2_kernel(NnParams p) {
  const Work wk = load_work(p.work, blockIdx.x);
  const int kbeg = p.off[wk.task];
  const int K = p.off[wk.task + 1] - kbeg;  // the task's active neurons (may be 0)
  const int n0 = blockIdx.y * BN;
  const int mrows = min(wk.r1 - wk.r0, BM);  // work items hold <= BM rows

  __shared__ Smem<T> s;
  const T* P = static_cast<const T*>(p.p);
  const T* W = static_cast<const T*>(p.w);

  TileCore<T, true, false> core;
  core.init();
  for (int k0 = 0; k0 < K; k0 += BK) {
    for (int e = threadIdx.x; e < BM * BK; e += NTHREADS) {
      const int m = e / BK, kk = e % BK, k = k0 + kk;
      s.a[m * LDA_K + kk] = (m < mrows && k < K) ? P[(i64)(wk.r0 + m) * p.ldp + k] : from_f<T>(0.f);
    }
    for (int e = threadIdx.x; e < BK * BN; e += NTHREADS) {
      const int kk = e / BN, n = e % BN, k = k0 + kk, c = n0 + n;
      s.b[kk * LDB_N + n] = (k < K && c < p.n_cols) ? W[(i64)p.idx[kbeg + k] * p.ldw + c] : from_f<T>(0.f);
    }
    __syncthreads();
    core.mma(s.a, s.b);
    __syncthreads();
  }
  core.store(s.c);
  __syncthreads();

  T* out = static_cast<T*>(p.out);
  for (int e = threadIdx.x; e < BM * BN; e += NTHREADS) {
    const int m = e / BN, n = e % BN, c = n0 + n;
    if (m >= mrows || c >= p.n_cols) continue;
    const int g = wk.r0 + m;
    const i64 row = p.out_rows ? p.out_rows[g] : (i64)g;
    const float bias = p.bias ? p.bias[(i64)wk.task * p.bias_stride + c] : 0.f;
    out[row * p.ldo + c] = from_f<T>(s.c[m * LDC + n] + bias);
  }
}

}  // namespace

void gathered_fc2(int dtype, int device, ptr stream, ptr work, int num_work, ptr p_, i64 ldp, ptr w,
                  i64 ldw, ptr idx, ptr off, int n_cols, ptr bias_f32, i64 bias_stride, ptr out,
                  i64 ldo, ptr out_rows) {
  prepare_device(device);
  if (num_work <= 0 || n_cols <= 0) return;
  NnParams p{};
  p.work = as_ptr<const int>(work);
  p.p = as_ptr<const void>(p_), p.ldp = ldp, p.w = as_ptr<const void>(w), p.ldw = ldw;
  p.idx = as_ptr<const int>(idx), p.off = as_ptr<const int>(off), p.n_cols = n_cols;
  p.bias = as_ptr<const float>(bias_f32), p.bias_stride = bias_stride;
  p.out = as_ptr<void>(out), p.ldo = ldo, p.out_rows = as_ptr<const i64>(out_rows);
  const dim3 grid(num_work, ceil_div(n_cols, BN));
  cudaStream_t st = as_stream(stream);
  if (dtype == F32) fc2_kernel<float><<<grid, NTHREADS, 0, st>>>(p);
  else if (dtype == F16) fc2_kernel<__half><<<grid, NTHREADS, 0, st>>>(p);
  else if (dtype == BF16) fc2_kernel<__nv_bfloat16><<<grid, NTHREADS, 0, st>>>(p);
  else throw std::invalid_argument("gathered_fc2: dtype code must be 0, 1 or 2, got " + std::to_string(dtype));
  check_launch("gathered_fc2");
}

}  // namespace ns
