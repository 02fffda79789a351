// sm_90a grouped GEMM "nn" (fc2, dX; ops.h), CUTLASS 3 (sm90_gemm.cuh). Own translation unit so
// the instantiations compile in parallel; built only for sm_90a.
#include "sm90_gemm.cuh"

namespace ns {
namespace {
using Fp16 = Sm90Grouped<cutlass::half_t, cutlass::layout::RowMajor, cutlass::layout::RowMajor, cutlass::half_t>;
using Bf16 = Sm90Grouped<cutlass::bfloat16_t, cutlass::layout::RowMajor, cutlass::layout::RowMajor, cutlass::bfloat16_t>;
}  // namespace

void sm90_nn(int dtype, int device, cudaStream_t stream, char* ws, int num_problems) {
  if (dtype == F16)
    launch_sm90<Fp16>("grouped_gemm(sm90 nn, fp16)", device, stream, ws, num_problems);
  else
    launch_sm90<Bf16>("grouped_gemm(sm90 nn, bf16)", device, stream, ws, num_problems);
}

}  // namespace ns
