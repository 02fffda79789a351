// Shared helpers of the neuronspec CUDA kernels: dtype codes, element conversion, activations
// (docs/design.md §2), device/launch checks. The GEMMs are CUTLASS's (grouped_gemm.cu); the
// small elementwise kernels (elementwise.cu) use these helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace ns {

using i64 = long long;

enum DType : int { F16 = 1, BF16 = 2 };  // 0 (fp32) is not supported: tensor-core GEMMs only
enum Act : int { RELU = 0, GELU = 1 };

// ---- element conversion ----------------------------------------------------------------
template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
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

// ---- host side -------------------------------------------------------------------------
// Makes `device` current (cudaSetDevice only when it is not already; the device count is read
// once per process). Throws std::runtime_error "neuronspec._cuda: no CUDA device: ..." when
// the runtime finds none, std::invalid_argument for an ordinal out of range.
void prepare_device(int device);
// The device's multiprocessor count and compute capability (10 * major + minor), read once per device.
int sm_count(int device);
int compute_capability(int device);
// Throws std::runtime_error naming `kernel` if its launch failed.
void check_launch(const char* kernel);
// Throws std::invalid_argument "<fn>: dtype code must be 1 (float16) or 2 (bfloat16), got ..."
void check_dtype(const char* fn, int dtype);
void check_act(const char* fn, int act);
inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
template <typename P> inline P* as_ptr(std::uintptr_t p) { return reinterpret_cast<P*>(p); }
inline unsigned ceil_div(long long a, long long b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace ns
