// Shared helpers of the neuronspec CUDA kernels: dtype conversion, activations, launch checks,
// and the one block-tile GEMM core every kernel uses.
//
// Tile core: a block of 128 threads (4 warps, 2 x 2) computes a BM x BN = 64 x 64 fp32 tile
// C = A B over K in slabs of BK = 32. Each kernel fills the shared-memory slabs itself (that is
// where the gathers happen; every load is bounds-checked and zero-filled), then calls
// `tile_mma` once per slab and `tile_store` once at the end, which leaves C in smem.c (fp32)
// for the kernel's epilogue. 16-bit types use tensor cores (WMMA 16x16x16, fp32 accumulate);
// fp32 uses plain FMAs (each thread owns an 8 x 4 sub-tile).
//
// Slab layouts (element (m, k) of A, (k, n) of B):
//   A k-major: a[m * LDA_K + k]  (rows of A are contiguous in memory: X, packed H / dZ)
//   A m-major: a[k * LDA_M + m]  (A = Pᵀ for the weight gradients)
//   B k-major: b[n * LDB_K + k]  (gathered weight rows for fc1-like GEMMs)
//   B n-major: b[k * LDB_N + n]  (gathered weight rows along K for fc2-like GEMMs, tokens)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace ns {

constexpr int BM = 64, BN = 64, BK = 32, NTHREADS = 128;
constexpr int PAD = 8;  // keeps WMMA leading dimensions multiples of 8 and spreads banks
constexpr int LDA_K = BK + PAD, LDA_M = BM + PAD, LDB_K = BK + PAD, LDB_N = BN + PAD, LDC = BN + 4;
constexpr int A_ELEMS = (BM * LDA_K > BK * LDA_M) ? BM * LDA_K : BK * LDA_M;
constexpr int B_ELEMS = (BN * LDB_K > BK * LDB_N) ? BN * LDB_K : BK * LDB_N;

enum DType : int { F32 = 0, F16 = 1, BF16 = 2 };
enum Act : int { RELU = 0, GELU = 1 };

// ---- element conversion ----------------------------------------------------------------
template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ---- activations (exact erf GELU, like torch.nn.GELU()) ---------------------------------
template <int ACT> __device__ __forceinline__ float act_fn(float z) {
  if constexpr (ACT == RELU) {
    return z > 0.f ? z : 0.f;
  } else {
    return 0.5f * z * (1.f + erff(z * 0.70710678118654752f));
  }
}

template <int ACT> __device__ __forceinline__ float act_grad_fn(float z) {
  if constexpr (ACT == RELU) {
    return z > 0.f ? 1.f : 0.f;  // relu'(0) = 0, as autograd
  } else {
    const float cdf = 0.5f * (1.f + erff(z * 0.70710678118654752f));
    const float pdf = expf(-0.5f * z * z) * 0.39894228040143268f;
    return cdf + z * pdf;
  }
}

// ---- shared memory of one block ---------------------------------------------------------
template <typename T> struct alignas(128) Smem {
  T a[A_ELEMS];
  T b[B_ELEMS];
  float c[BM * LDC];
};

// ---- tile core -------------------------------------------------------------------------
template <typename T, bool A_KMAJOR, bool B_KMAJOR> struct TileCore {
  static constexpr bool kTensorCores = !std::is_same<T, float>::value;
  using MT = typename std::conditional<kTensorCores, T, __half>::type;  // fragments unused for fp32
  using WmmaA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, MT,
      typename std::conditional<A_KMAJOR, nvcuda::wmma::row_major, nvcuda::wmma::col_major>::type>;
  using WmmaB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, MT,
      typename std::conditional<B_KMAJOR, nvcuda::wmma::col_major, nvcuda::wmma::row_major>::type>;
  using WmmaC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;

  // Tensor-core state: the warp's 32 x 32 sub-tile as 2 x 2 fragments.
  // FMA state: the thread's rows tr + 8 i (i < 8), columns tc + 16 j (j < 4).
  typename std::conditional<kTensorCores, WmmaC[2][2], float[8][4]>::type acc;

  __device__ __forceinline__ void init() {
    if constexpr (kTensorCores) {
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.f);
    } else {
      for (int i = 0; i < 8; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    }
  }

  // acc += A_slab B_slab (one BK slab, already in shared memory and synchronised).
  __device__ __forceinline__ void mma(const T* a, const T* b) {
    if constexpr (kTensorCores) {
      const int warp = threadIdx.x / 32, wm = (warp / 2) * 32, wn = (warp % 2) * 32;
      for (int kk = 0; kk < BK; kk += 16) {
        WmmaA fa[2];
        WmmaB fb[2];
        for (int i = 0; i < 2; ++i) {
          const int m = wm + 16 * i;
          if constexpr (A_KMAJOR) nvcuda::wmma::load_matrix_sync(fa[i], a + m * LDA_K + kk, LDA_K);
          else nvcuda::wmma::load_matrix_sync(fa[i], a + kk * LDA_M + m, LDA_M);
        }
        for (int j = 0; j < 2; ++j) {
          const int n = wn + 16 * j;
          if constexpr (B_KMAJOR) nvcuda::wmma::load_matrix_sync(fb[j], b + n * LDB_K + kk, LDB_K);
          else nvcuda::wmma::load_matrix_sync(fb[j], b + kk * LDB_N + n, LDB_N);
        }
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
    } else {
      const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
      for (int k = 0; k < BK; ++k) {
        float av[8], bv[4];
        for (int i = 0; i < 8; ++i) {
          const int m = tr + 8 * i;
          av[i] = to_f<T>(A_KMAJOR ? a[m * LDA_K + k] : a[k * LDA_M + m]);
        }
        for (int j = 0; j < 4; ++j) {
          const int n = tc + 16 * j;
          bv[j] = to_f<T>(B_KMAJOR ? b[n * LDB_K + k] : b[k * LDB_N + n]);
        }
        for (int i = 0; i < 8; ++i)
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
    }
  }

  // Writes the accumulated tile to c[m * LDC + n] (fp32). The caller synchronises after.
  __device__ __forceinline__ void store(float* c) {
    if constexpr (kTensorCores) {
      const int warp = threadIdx.x / 32, wm = (warp / 2) * 32, wn = (warp % 2) * 32;
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j)
          nvcuda::wmma::store_matrix_sync(c + (wm + 16 * i) * LDC + wn + 16 * j, acc[i][j], LDC,
                                          nvcuda::wmma::mem_row_major);
    } else {
      const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
      for (int i = 0; i < 8; ++i)
        for (int j = 0; j < 4; ++j) c[(tr + 8 * i) * LDC + tc + 16 * j] = acc[i][j];
    }
  }
};

// A work item (task, first row, end row) of a grouped launch; rows are positions in the
// task-grouped token order, end - first <= the kernel's row tile.
struct Work {
  int task, r0, r1;
};
__device__ __forceinline__ Work load_work(const int* work, int w) {
  return Work{work[3 * w], work[3 * w + 1], work[3 * w + 2]};
}

// ---- host side -------------------------------------------------------------------------
// Throws std::runtime_error (Python RuntimeError) "neuronspec._cuda: no CUDA device: ..."
// when the runtime finds no usable device, then makes `device` current.
void prepare_device(int device);
// Throws std::runtime_error naming `kernel` if its launch failed.
void check_launch(const char* kernel);
inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
template <typename P> inline P* as_ptr(std::uintptr_t p) { return reinterpret_cast<P*>(p); }
inline unsigned ceil_div(long long a, long long b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace ns
