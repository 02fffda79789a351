// Device checks shared by every launcher: a missing device or a failed launch becomes a C++
// exception (a Python RuntimeError through pybind11), never a crash.
#include "common.cuh"
#include "ops.h"

namespace ns {

int device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it so later calls report their own errors
    throw std::runtime_error(std::string("neuronspec._cuda: no CUDA device: cudaGetDeviceCount failed: ") +
                             cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
  }
  if (n <= 0) throw std::runtime_error("neuronspec._cuda: no CUDA device: cudaGetDeviceCount found 0 devices");
  return n;
}

void prepare_device(int device) {
  const int n = device_count();
  if (device < 0 || device >= n)
    throw std::invalid_argument("neuronspec._cuda: device " + std::to_string(device) + " out of range [0, " +
                                std::to_string(n) + ")");
  const cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error("neuronspec._cuda: cudaSetDevice(" + std::to_string(device) + ") failed: " +
                             cudaGetErrorString(e));
  }
  cudaGetLastError();  // a stale error from an earlier call must not be blamed on this launch
}

void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("neuronspec._cuda: kernel ") + kernel + " failed to launch: " +
                             cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

}  // namespace ns
