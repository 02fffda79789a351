// fc1 family: C[i, j] = Σ_k A[row(i), k] · B[col(j), k] with B's rows gathered by the task's
// active-neuron list inside the tile loads (an NT GEMM with an indirected row pointer), and
// three epilogues:
//   FWD   Z = C + b1 -> packed Z and H = act(Z)             (masked FFN forward, fc1)
//   COUNT Z = C + b1 -> H = act(Z) in token order, counts   (fused fc1 + act + count)
//   DZ    dZ = C ⊙ act'(Z_saved), H = act(Z_saved), packed  (masked FFN backward, dY W2[:, A])
#include "common.cuh"
#include "ops.h"

namespace ns {
namespace {

enum Mode : int { FWD = 0, COUNT = 1, DZ = 2 };

struct NtParams {
  const int* work;
  const void* a;
  i64 lda;
  const i64* a_rows;  // grouped position -> row of A (nullptr: identity)
  const void* b;
  i64 ldb;
  const int* idx;  // task's column j -> row of B is idx[off[t] + j]; nullptr: row j, n_dense columns
  const int* off;
  int n_dense;
  int K;
  const float* bias;   // FWD, COUNT: bias of B's row
  const void* z_in;    // DZ: packed Z
  void* z_out;         // FWD: packed Z; DZ: packed dZ
  void* h_out;         // FWD, DZ: packed act(Z); COUNT: token-order act(Z) or nullptr
  i64 ldo;
  unsigned long long* counts;  // COUNT: [T, ldc]
  i64 ldc;
  const unsigned char* valid;  // COUNT: per original row, nullptr = all valid
};

template <typename T, int ACT, int MODE>
__global__ void __launch_bounds__(NTHREADS) fc1_kernel(NtParams p) {
  const Work wk = load_work(p.work, blockIdx.x);
  const int cbeg = p.idx ? p.off[wk.task] : 0;
  const int ncol = p.idx ? p.off[wk.task + 1] - cbeg : p.n_dense;
  const int n0 = blockIdx.y * BN;
  if (n0 >= ncol) return;  // whole block: this task has fewer active neurons
  const int mrows = min(wk.r1 - wk.r0, BM);  // work items hold <= BM rows

  __shared__ Smem<T> s;
  __shared__ i64 a_row[BM], b_row[BN];  // source rows (-1 outside the problem)
  const T* A = static_cast<const T*>(p.a);
  const T* B = static_cast<const T*>(p.b);
  for (int i = threadIdx.x; i < BM; i += NTHREADS) {
    const int g = wk.r0 + i;
    a_row[i] = i < mrows ? (p.a_rows ? p.a_rows[g] : (i64)g) : -1;
  }
  for (int j = threadIdx.x; j < BN; j += NTHREADS) {
    const int col = n0 + j;
    b_row[j] = col < ncol ? (i64)(p.idx ? p.idx[cbeg + col] : col) : -1;
  }
  __syncthreads();

  TileCore<T, true, true> core;
  core.init();
  for (int k0 = 0; k0 < p.K; k0 += BK) {
    for (int e = threadIdx.x; e < BM * BK; e += NTHREADS) {
      const int m = e / BK, kk = e % BK, k = k0 + kk;
      const i64 r = a_row[m];
      s.a[m * LDA_K + kk] = (r >= 0 && k < p.K) ? A[r * p.lda + k] : from_f<T>(0.f);
    }
    for (int e = threadIdx.x; e < BN * BK; e += NTHREADS) {
      const int n = e / BK, kk = e % BK, k = k0 + kk;
      const i64 r = b_row[n];
      s.b[n * LDB_K + kk] = (r >= 0 && k < p.K) ? B[r * p.ldb + k] : from_f<T>(0.f);
    }
    __syncthreads();
    core.mma(s.a, s.b);
    __syncthreads();
  }
  core.store(s.c);
  __syncthreads();

  for (int e = threadIdx.x; e < BM * BN; e += NTHREADS) {
    const int m = e / BN, n = e % BN, col = n0 + n;
    if (m >= mrows || col >= ncol) continue;
    const float c = s.c[m * LDC + n];
    if constexpr (MODE == FWD) {
      const float z = c + p.bias[b_row[n]];
      const i64 o = (i64)(wk.r0 + m) * p.ldo + col;
      static_cast<T*>(p.z_out)[o] = from_f<T>(z);
      static_cast<T*>(p.h_out)[o] = from_f<T>(act_fn<ACT>(z));
    } else if constexpr (MODE == DZ) {
      const i64 o = (i64)(wk.r0 + m) * p.ldo + col;
      const float z = to_f<T>(static_cast<const T*>(p.z_in)[o]);
      static_cast<T*>(p.z_out)[o] = from_f<T>(c * act_grad_fn<ACT>(z));
      static_cast<T*>(p.h_out)[o] = from_f<T>(act_fn<ACT>(z));
    } else {
      if (p.h_out) {
        const float z = c + p.bias[b_row[n]];
        static_cast<T*>(p.h_out)[a_row[m] * p.ldo + col] = from_f<T>(act_fn<ACT>(z));
      }
    }
  }
  if constexpr (MODE == COUNT) {
    // One thread per column; a tile's rows all belong to task wk.task. The sign test is on Z
    // rounded to T, the value the other backends compare.
    if (threadIdx.x < BN) {
      const int n = threadIdx.x, col = n0 + n;
      if (col < ncol) {
        const float bias = p.bias[b_row[n]];
        unsigned long long cnt = 0;
        for (int m = 0; m < mrows; ++m) {
          const bool ok = p.valid == nullptr || p.valid[a_row[m]] != 0;
          cnt += (ok && to_f<T>(from_f<T>(s.c[m * LDC + n] + bias)) > 0.f) ? 1ull : 0ull;
        }
        if (cnt) atomicAdd(p.counts + (i64)wk.task * p.ldc + col, cnt);
      }
    }
  }
}

template <int MODE>
void launch(const char* name, int dtype, int act, int device, ptr stream, int num_work, int max_cols,
            const NtParams& p) {
  prepare_device(device);
  if (num_work <= 0 || max_cols <= 0) return;
  const dim3 grid(num_work, ceil_div(max_cols, BN));
  cudaStream_t st = as_stream(stream);
#define NS_FC1_CASE(T, A) fc1_kernel<T, A, MODE><<<grid, NTHREADS, 0, st>>>(p)
  if (dtype == F32) { if (act == RELU) NS_FC1_CASE(float, RELU); else NS_FC1_CASE(float, GELU); }
  else if (dtype == F16) { if (act == RELU) NS_FC1_CASE(__half, RELU); else NS_FC1_CASE(__half, GELU); }
  else if (dtype == BF16) { if (act == RELU) NS_FC1_CASE(__nv_bfloat16, RELU); else NS_FC1_CASE(__nv_bfloat16, GELU); }
  else throw std::invalid_argument(std::string(name) + ": dtype code must be 0, 1 or 2, got " + std::to_string(dtype));
#undef NS_FC1_CASE
  check_launch(name);
}

}  // namespace

void gathered_fc1(int dtype, int act, int device, ptr stream, ptr work, int num_work, int max_cols,
                  ptr x, i64 ldx, ptr x_rows, ptr w1, i64 ldw, ptr idx, ptr off, int K, ptr bias_f32,
                  ptr z_out, ptr h_out, i64 ldo) {
  NtParams p{};
  p.work = as_ptr<const int>(work);
  p.a = as_ptr<const void>(x), p.lda = ldx, p.a_rows = as_ptr<const i64>(x_rows);
  p.b = as_ptr<const void>(w1), p.ldb = ldw, p.idx = as_ptr<const int>(idx), p.off = as_ptr<const int>(off);
  p.K = K, p.bias = as_ptr<const float>(bias_f32);
  p.z_out = as_ptr<void>(z_out), p.h_out = as_ptr<void>(h_out), p.ldo = ldo;
  launch<FWD>("gathered_fc1", dtype, act, device, stream, num_work, max_cols, p);
}

void fc1_count(int dtype, int act, int device, ptr stream, ptr work, int num_work, int n_cols,
               ptr x, i64 ldx, ptr x_rows, ptr w1, i64 ldw, int K, ptr bias_f32, ptr h_out, i64 ldo,
               ptr counts_i64, i64 ldc, ptr valid_u8) {
  NtParams p{};
  p.work = as_ptr<const int>(work);
  p.a = as_ptr<const void>(x), p.lda = ldx, p.a_rows = as_ptr<const i64>(x_rows);
  p.b = as_ptr<const void>(w1), p.ldb = ldw, p.idx = nullptr, p.off = nullptr, p.n_dense = n_cols;
  p.K = K, p.bias = as_ptr<const float>(bias_f32);
  p.h_out = as_ptr<void>(h_out), p.ldo = ldo;
  p.counts = as_ptr<unsigned long long>(counts_i64), p.ldc = ldc, p.valid = as_ptr<const unsigned char>(valid_u8);
  launch<COUNT>("fc1_count", dtype, act, device, stream, num_work, n_cols, p);
}

void gathered_dz(int dtype, int act, int device, ptr stream, ptr work, int num_work, int max_cols,
                 ptr dy, i64 lddy, ptr dy_rows, ptr w2t, i64 ldw, ptr idx, ptr off, int K, ptr z_in,
                 ptr dz_out, ptr h_out, i64 ldo) {
  NtParams p{};
  p.work = as_ptr<const int>(work);
  p.a = as_ptr<const void>(dy), p.lda = lddy, p.a_rows = as_ptr<const i64>(dy_rows);
  p.b = as_ptr<const void>(w2t), p.ldb = ldw, p.idx = as_ptr<const int>(idx), p.off = as_ptr<const int>(off);
  p.K = K, p.z_in = as_ptr<const void>(z_in);
  p.z_out = as_ptr<void>(dz_out), p.h_out = as_ptr<void>(h_out), p.ldo = ldo;
  launch<DZ>("gathered_dz", dtype, act, device, stream, num_work, max_cols, p);
}

}  // namespace ns
