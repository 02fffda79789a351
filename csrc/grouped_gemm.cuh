// CUTLASS grouped GEMMs of the cuda backend (contract: ops.h, "grouped GEMMs").
//
// sm80 path: every GEMM of the masked FFN is one launch of CUTLASS 2.x `GemmGrouped` (kernel built by
// `DefaultGemmGrouped`, sm80 tensor-core mainloop: cp.async multistage pipeline, mma.sync
// 16x8x16, fp32 accumulation; the same SASS-compiled kernel runs on sm_90) with
// `GroupScheduleMode::kDeviceOnly`: the problem sizes, operand pointers and leading dimensions
// of all P problems are read from device memory, where `setup_kernel` (grouped_gemm.cu) writes
// them from the device-side group bounds, so a mixed batch needs no host sync. One tile
// configuration per op: 128x128x32 block tile, 64x64x32 warp tiles (4 warps), 4 stages, 8-element
// (16-byte) accesses, zero-fill for out-of-bounds cp.async.
#pragma once

#include <cutlass/cutlass.h>
#include <cutlass/device_kernel.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/gemm/gemm.h>
#include <cutlass/gemm/kernel/default_gemm_grouped.h>
#include <cutlass/numeric_types.h>

#include "common.cuh"
#include "ops.h"

namespace ns {

enum GemmOp : int { OP_NT = 0, OP_NN = 1, OP_TN = 2 };

// Where setup_kernel writes the per-problem arguments (offsets inside the workspace). The sm_90a
// kernels read the same arrays: problem shapes (3 ints), pointers, and the leading dimensions as
// their cute strides (one int64 each: the other modes are static; sm90_gemm.cuh asserts it).
struct WorkspaceLayout {
  i64 sizes, ptr_a, ptr_b, ptr_c, ptr_d, ld_a, ld_b, ld_c, ld_d, total;
  __host__ __device__ explicit WorkspaceLayout(int p) {
    sizes = 0;                              // cutlass::gemm::GemmCoord [P] (3 ints)
    ptr_a = ((12LL * p + 15) / 16) * 16;    // void* [P] each
    ptr_b = ptr_a + 8LL * p, ptr_c = ptr_b + 8LL * p, ptr_d = ptr_c + 8LL * p;
    ld_a = ptr_d + 8LL * p;                 // int64 [P] each
    ld_b = ld_a + 8LL * p, ld_c = ld_b + 8LL * p, ld_d = ld_c + 8LL * p;
    total = ld_d + 8LL * p;
  }
};

template <typename T, typename LayoutA, typename LayoutB, typename TOut>
using GroupedKernel = typename cutlass::gemm::kernel::DefaultGemmGrouped<
    T, LayoutA, cutlass::ComplexTransform::kNone, 8,
    T, LayoutB, cutlass::ComplexTransform::kNone, 8,
    TOut, cutlass::layout::RowMajor, float,
    cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
    cutlass::gemm::GemmShape<128, 128, 32>, cutlass::gemm::GemmShape<64, 64, 32>, cutlass::gemm::GemmShape<16, 8, 16>,
    cutlass::epilogue::thread::LinearCombination<TOut, 128 / cutlass::sizeof_bits<TOut>::value, float, float>,
    cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<1>, 4,
    cutlass::gemm::kernel::GroupScheduleMode::kDeviceOnly, cutlass::arch::OpMultiplyAdd,
    cutlass::gemm::SharedMemoryClearOption::kZfill>::GemmKernel;

// Launches kernel K over the P problems described in `ws` (written by setup_kernel earlier on
// the same stream), D = A B (beta = 0: C is never read). The grid is persistent: as many
// blocks as fit on the device at once (occupancy read once per device), each walking tiles.
template <typename K>
void launch_grouped(const char* name, int device, cudaStream_t stream, char* ws, int num_problems) {
  constexpr int kMaxDevices = 64;
  static int blocks_per_sm[kMaxDevices] = {};  // 0: not set up on that device yet
  const int smem = static_cast<int>(sizeof(typename K::SharedStorage));
  if (blocks_per_sm[device] == 0) {
    cudaError_t e = cudaSuccess;
    if (smem >= (48 << 10))
      e = cudaFuncSetAttribute(cutlass::Kernel<K>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    int blocks = 0;
    if (e == cudaSuccess)
      e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, cutlass::Kernel<K>, K::kThreadCount, smem);
    if (e != cudaSuccess || blocks <= 0) {
      cudaGetLastError();
      throw std::runtime_error(std::string("neuronspec._cuda: kernel ") + name + " cannot run on device " +
                               std::to_string(device) + ": " + cudaGetErrorString(e) + " (" +
                               std::to_string(smem) + " bytes of shared memory per block)");
    }
    blocks_per_sm[device] = blocks;
  }
  const int grid = blocks_per_sm[device] * sm_count(device);
  const WorkspaceLayout w(num_problems);
  using EA = typename K::ElementA;
  using EB = typename K::ElementB;
  using EC = typename K::ElementC;
  typename K::Arguments args(
      reinterpret_cast<cutlass::gemm::GemmCoord*>(ws + w.sizes), num_problems, grid,
      typename K::EpilogueOutputOp::Params(1.f, 0.f), reinterpret_cast<EA**>(ws + w.ptr_a),
      reinterpret_cast<EB**>(ws + w.ptr_b), reinterpret_cast<EC**>(ws + w.ptr_c), reinterpret_cast<EC**>(ws + w.ptr_d),
      reinterpret_cast<int64_t*>(ws + w.ld_a), reinterpret_cast<int64_t*>(ws + w.ld_b),
      reinterpret_cast<int64_t*>(ws + w.ld_c), reinterpret_cast<int64_t*>(ws + w.ld_d));
  typename K::Params params(args, nullptr, 0);
  cutlass::Kernel<K><<<grid, K::kThreadCount, smem, stream>>>(params);
  check_launch(name);
}

// The three ops per dtype (dtype checked by the caller), instantiated in gemm_<op>.cu (sm80)
// and sm90_<op>.cu (sm_90a, only with NEURONSPEC_HAS_SM90).
void launch_nt(int dtype, int device, cudaStream_t stream, char* ws, int num_problems);
void launch_nn(int dtype, int device, cudaStream_t stream, char* ws, int num_problems);
void launch_tn(int dtype, int device, cudaStream_t stream, char* ws, int num_problems);
void sm90_nt(int dtype, int device, cudaStream_t stream, char* ws, int num_problems);
void sm90_nn(int dtype, int device, cudaStream_t stream, char* ws, int num_problems);
void sm90_tn(int dtype, int device, cudaStream_t stream, char* ws, int num_problems);

}  // namespace ns
