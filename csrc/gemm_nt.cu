// Grouped GEMM "nt" (ops.h): D = A Bᵀ (fc1, dH): A [m, K] row-major, B's rows = the task's table rows (column-major K x n).
// Its own translation unit so the CUTLASS instantiations compile in parallel.
#include "grouped_gemm.cuh"

namespace ns {
namespace {
using Fp16 = GroupedKernel<cutlass::half_t, cutlass::layout::RowMajor, cutlass::layout::ColumnMajor, cutlass::half_t>;
using Bf16 = GroupedKernel<cutlass::bfloat16_t, cutlass::layout::RowMajor, cutlass::layout::ColumnMajor, cutlass::bfloat16_t>;
}  // namespace

void launch_nt(int dtype, int device, cudaStream_t stream, char* ws, int num_problems) {
  if (dtype == F16)
    launch_grouped<Fp16>("grouped_gemm(nt, fp16)", device, stream, ws, num_problems);
  else
    launch_grouped<Bf16>("grouped_gemm(nt, bf16)", device, stream, ws, num_problems);
}

}  // namespace ns
