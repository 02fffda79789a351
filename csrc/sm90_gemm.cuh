// sm_90a grouped GEMMs (CUTLASS 3): the same problems as the sm80 path (ops.h "grouped GEMMs"),
// on Hopper's TMA + wgmma. One kernel per (op, dtype): `KernelPtrArrayTmaWarpSpecializedCooperative`
// mainloop (TMA loads with per-group tensor maps updated on the device, wgmma, fp32 accumulation,
// stage count from the shared memory left by the epilogue) and the
// `PtrArrayTmaWarpSpecializedCooperative` epilogue with no source (C = void: D = A B), over a
// `GroupProblemShape` read from device memory (no host problem shapes: nothing is copied to the
// host). 128x128x64 tiles, cluster 1x1x1. Compiled only for sm_90a (CMakeLists.txt), launched
// only on sm_90 devices (grouped_gemm.cu checks).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/operations.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/group_array_problem_shape.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/kernel_hardware_info.h>

#include "grouped_gemm.cuh"

namespace ns {

template <typename T, typename LayoutA, typename LayoutB, typename TOut>
struct Sm90Grouped {
  using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;  // (M, N, K) per group
  using TileShape = cute::Shape<cute::_128, cute::_128, cute::_64>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<TOut>::value;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, cutlass::layout::RowMajor*, kAlignD, TOut, cutlass::layout::RowMajor*, kAlignD,
      cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative,
      cutlass::epilogue::fusion::LinearCombination<TOut, float, void, float>>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, T, LayoutA*, 8, T, LayoutB*, 8, float, TileShape,
      ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

// Runs G over the P problems described in `ws` (setup_kernel's arrays). The kernel's own
// workspace (tensor maps per SM, scheduler state) is stream-ordered device memory.
template <typename G>
void launch_sm90(const char* name, int device, cudaStream_t stream, char* ws, int num_problems) {
  using Gemm = typename G::Gemm;
  using K = typename G::Kernel;
  using Shape = typename G::ProblemShape::UnderlyingProblemShape;
  using SA = typename K::InternalStrideA;
  using SB = typename K::InternalStrideB;
  using SD = typename K::InternalStrideD;
  static_assert(sizeof(Shape) == 3 * sizeof(int), "problem shape: three ints, like cutlass::gemm::GemmCoord");
  static_assert(sizeof(SA) == 8 && sizeof(SB) == 8 && sizeof(SD) == 8,
                "a stride must hold exactly one int64 (the leading dimension) for setup_kernel");
  using EA = typename Gemm::ElementA;
  using EB = typename Gemm::ElementB;
  using ED = typename Gemm::ElementD;
  const WorkspaceLayout w(num_problems);
  cutlass::KernelHardwareInfo hw;
  hw.device_id = device;
  hw.sm_count = sm_count(device);
  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      {num_problems, reinterpret_cast<Shape*>(ws + w.sizes), nullptr},
      {reinterpret_cast<const EA**>(ws + w.ptr_a), reinterpret_cast<SA*>(ws + w.ld_a),
       reinterpret_cast<const EB**>(ws + w.ptr_b), reinterpret_cast<SB*>(ws + w.ld_b)},
      {{}, nullptr, nullptr, reinterpret_cast<ED**>(ws + w.ptr_d), reinterpret_cast<SD*>(ws + w.ld_d)},
      hw};
  args.epilogue.thread.alpha = 1.f;
  args.epilogue.thread.beta = 0.f;
  auto fail = [&](const std::string& what) {
    cudaGetLastError();
    throw std::runtime_error(std::string("neuronspec._cuda: kernel ") + name + ": " + what);
  };
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) fail("CUTLASS cannot implement these arguments");
  const size_t bytes = Gemm::get_workspace_size(args);
  void* kernel_ws = nullptr;
  if (bytes && cudaMallocAsync(&kernel_ws, bytes, stream) != cudaSuccess) fail("no workspace");
  const cutlass::Status init = gemm.initialize(args, kernel_ws, stream);
  const cutlass::Status run = init == cutlass::Status::kSuccess ? gemm.run(stream) : init;
  if (kernel_ws) cudaFreeAsync(kernel_ws, stream);
  if (run != cutlass::Status::kSuccess) fail(std::string("launch failed: ") + cutlassGetStatusString(run));
  check_launch(name);
}

}  // namespace ns
