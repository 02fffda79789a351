// Grouped GEMM "tn" (ops.h): D = Aᵀ B (dW1, dW2ᵀ): A packed [K tokens, m] read column-major, B tokens [K, n], D fp32.
// Its own translation unit so the CUTLASS instantiations compile in parallel.
#include "grouped_gemm.cuh"

namespace ns {
namespace {
using Fp16 = GroupedKernel<cutlass::half_t, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor, float>;
using Bf16 = GroupedKernel<cutlass::bfloat16_t, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor, float>;
}  // namespace

void launch_tn(int dtype, int device, cudaStream_t stream, char* ws, int num_problems) {
  if (dtype == F16)
    launch_grouped<Fp16>("grouped_gemm(tn, fp16)", device, stream, ws, num_problems);
  else
    launch_grouped<Bf16>("grouped_gemm(tn, bf16)", device, stream, ws, num_problems);
}

}  // namespace ns
