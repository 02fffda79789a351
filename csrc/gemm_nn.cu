// Grouped GEMM "nn" (ops.h): D = A B (fc2, dX): A packed [m, K] row-major, B the task's table rows [K, n] row-major.
// Its own translation unit so the CUTLASS instantiations compile in parallel.
#include "grouped_gemm.cuh"

namespace ns {
namespace {
using Fp16 = GroupedKernel<cutlass::half_t, cutlass::layout::RowMajor, cutlass::layout::RowMajor, cutlass::half_t>;
using Bf16 = GroupedKernel<cutlass::bfloat16_t, cutlass::layout::RowMajor, cutlass::layout::RowMajor, cutlass::bfloat16_t>;
}  // namespace

void launch_nn(int dtype, int device, cudaStream_t stream, char* ws, int num_problems) {
  if (dtype == F16)
    launch_grouped<Fp16>("grouped_gemm(nn, fp16)", device, stream, ws, num_problems);
  else
    launch_grouped<Bf16>("grouped_gemm(nn, bf16)", device, stream, ws, num_problems);
}

}  // namespace ns
