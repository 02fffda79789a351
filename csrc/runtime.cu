// Device checks shared by every launcher (a missing device or a failed launch becomes a C++
// exception, a Python RuntimeError through pybind11, never a crash) and the CUTLASS version.
#include <cutlass/version.h>

#include <mutex>

#include "common.cuh"
#include "ops.h"

namespace ns {
namespace {
constexpr int kMaxDevices = 64;
std::once_flag count_once;
int cached_count = -1;
cudaError_t count_error = cudaSuccess;
int cached_sms[kMaxDevices] = {};  // 0: not read yet
int cached_cc[kMaxDevices] = {};

int read_attribute(cudaDeviceAttr attr, int device, const char* what) {
  int v = 0;
  const cudaError_t e = cudaDeviceGetAttribute(&v, attr, device);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string("neuronspec._cuda: cannot read the ") + what + " of device " +
                             std::to_string(device) + ": " + cudaGetErrorString(e));
  }
  return v;
}
}  // namespace

int device_count() {
  std::call_once(count_once, [] {
    int n = 0;
    count_error = cudaGetDeviceCount(&n);
    if (count_error != cudaSuccess) cudaGetLastError();  // clear it so later calls report their own
    cached_count = count_error == cudaSuccess ? n : 0;
  });
  if (count_error != cudaSuccess)
    throw std::runtime_error(std::string("neuronspec._cuda: no CUDA device: cudaGetDeviceCount failed: ") +
                             cudaGetErrorName(count_error) + " (" + cudaGetErrorString(count_error) + ")");
  if (cached_count <= 0) throw std::runtime_error("neuronspec._cuda: no CUDA device: cudaGetDeviceCount found 0 devices");
  return cached_count;
}

void prepare_device(int device) {
  const int n = device_count();
  if (device < 0 || device >= n || device >= kMaxDevices)
    throw std::invalid_argument("neuronspec._cuda: device " + std::to_string(device) + " out of range [0, " +
                                std::to_string(n) + ")");
  int current = -1;
  cudaError_t e = cudaGetDevice(&current);  // runtime state of this thread: no driver round trip
  if (e == cudaSuccess && current != device) e = cudaSetDevice(device);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error("neuronspec._cuda: cannot make device " + std::to_string(device) +
                             " current: " + cudaGetErrorString(e));
  }
}

int sm_count(int device) {
  if (cached_sms[device] == 0) cached_sms[device] = read_attribute(cudaDevAttrMultiProcessorCount, device, "multiprocessor count");
  return cached_sms[device];
}

int compute_capability(int device) {
  if (cached_cc[device] == 0)
    cached_cc[device] = 10 * read_attribute(cudaDevAttrComputeCapabilityMajor, device, "compute capability") +
                        read_attribute(cudaDevAttrComputeCapabilityMinor, device, "compute capability");
  return cached_cc[device];
}

void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("neuronspec._cuda: kernel ") + kernel + " failed to launch: " +
                             cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

void check_dtype(const char* fn, int dtype) {
  if (dtype != F16 && dtype != BF16)
    throw std::invalid_argument(std::string(fn) + ": dtype code must be 1 (float16) or 2 (bfloat16), got " +
                                std::to_string(dtype));
}

void check_act(const char* fn, int act) {
  if (act != RELU && act != GELU)
    throw std::invalid_argument(std::string(fn) + ": act code must be 0 (relu) or 1 (gelu), got " +
                                std::to_string(act));
}

std::string cutlass_version() {
  return std::to_string(CUTLASS_MAJOR) + "." + std::to_string(CUTLASS_MINOR) + "." + std::to_string(CUTLASS_PATCH);
}

}  // namespace ns
