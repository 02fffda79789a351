// Memory-bound helpers around the CUTLASS GEMMs (see ops.h for the exact contracts): the
// row gather that builds padded token buffers and per-task weight tables, the scatter back to
// token order (+ fc2's per-task bias), the activation (forward) and act'/act (backward) passes
// over the packed Z, and the per-task activation count.
#include "common.cuh"
#include "ops.h"

namespace ns {
namespace {

constexpr int kThreads = 256;
constexpr int kCountRows = 64;  // grouped rows per block of count_kernel

// Grid-stride loops: the 1-D grid is capped, every element is visited once.
inline unsigned blocks_for(i64 numel) {
  const i64 b = (numel + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < (1 << 20) ? (b > 0 ? b : 1) : (1 << 20));
}

template <typename T>
__global__ void gather_kernel(const T* src, i64 ld_src, int src_cols, const i64* idx, i64 n_rows, T* dst,
                              i64 ld_dst, int extra_col, const T* extra) {
  const i64 numel = n_rows * ld_dst;
  for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < numel; e += (i64)gridDim.x * blockDim.x) {
    const i64 i = e / ld_dst;
    const int j = static_cast<int>(e - i * ld_dst);
    const i64 r = idx ? idx[i] : i;
    T v = from_f<T>(0.f);
    if (r >= 0 && j < src_cols) v = src[r * ld_src + j];
    else if (r >= 0 && j == extra_col) v = extra ? extra[r] : from_f<T>(1.f);
    dst[e] = v;
  }
}

template <typename T>
__global__ void scatter_kernel(const T* src, i64 ld_src, i64 n_rows, int n_cols, const float* bias, i64 ld_bias,
                               const i64* row_problem, const i64* rows, T* dst, i64 ld_dst) {
  const i64 numel = n_rows * n_cols;
  for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < numel; e += (i64)gridDim.x * blockDim.x) {
    const i64 r = e / n_cols;
    const int c = static_cast<int>(e - r * n_cols);
    float v = to_f<T>(src[r * ld_src + c]);
    if (bias) v += bias[(row_problem ? row_problem[r] : 0) * ld_bias + c];
    dst[(rows ? rows[r] : r) * ld_dst + c] = from_f<T>(v);
  }
}

template <typename T, int ACT>
__global__ void act_forward_kernel(const T* z, T* h, i64 numel) {
  for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < numel; e += (i64)gridDim.x * blockDim.x)
    h[e] = from_f<T>(act_fn<ACT>(to_f<T>(z[e])));
}

template <typename T, int ACT>
__global__ void act_backward_kernel(const T* z, T* g, T* h, i64 numel) {
  for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < numel; e += (i64)gridDim.x * blockDim.x) {
    const float zz = to_f<T>(z[e]);
    g[e] = from_f<T>(to_f<T>(g[e]) * act_grad_fn<ACT>(zz));
    h[e] = from_f<T>(act_fn<ACT>(zz));
  }
}

// One thread per column, kCountRows grouped rows per block; rows are grouped by task, so a
// thread's running count is flushed (one 64-bit atomic) only when the task changes and at the end.
template <typename T, int ACT>
__global__ void count_kernel(const T* z, i64 ldz, i64 n_rows, int n_cols, const i64* rows, const i64* row_task,
                             int task, const unsigned char* valid, T* h, i64 ldh, unsigned long long* counts,
                             i64 ldc) {
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c >= n_cols) return;
  const i64 r0 = (i64)blockIdx.y * kCountRows;
  const i64 r1 = r0 + kCountRows < n_rows ? r0 + kCountRows : n_rows;
  i64 cur = -1;
  unsigned long long cnt = 0;
  for (i64 r = r0; r < r1; ++r) {
    const i64 t = row_task ? row_task[r] : (i64)task;
    if (t != cur) {
      if (cnt) atomicAdd(counts + cur * ldc + c, cnt);
      cur = t, cnt = 0;
    }
    const i64 token = rows ? rows[r] : r;
    const float zz = to_f<T>(z[r * ldz + c]);
    if (h) h[token * ldh + c] = from_f<T>(act_fn<ACT>(zz));
    cnt += (zz > 0.f && (valid == nullptr || valid[token] != 0)) ? 1ull : 0ull;
  }
  if (cnt) atomicAdd(counts + cur * ldc + c, cnt);
}

// Runs the statement list with T (element type) and ACT (activation) bound to the runtime
// codes (validated by the caller).
#define NS_DISPATCH_ACT(ACT_CODE, ...) \
  if ((ACT_CODE) == RELU) { constexpr int ACT = RELU; __VA_ARGS__; } else { constexpr int ACT = GELU; __VA_ARGS__; }
#define NS_DISPATCH(DTYPE_CODE, ACT_CODE, ...)                                        \
  do {                                                                                \
    if ((DTYPE_CODE) == F16) { using T = __half; NS_DISPATCH_ACT(ACT_CODE, __VA_ARGS__) } \
    else { using T = __nv_bfloat16; NS_DISPATCH_ACT(ACT_CODE, __VA_ARGS__) }              \
  } while (0)

}  // namespace

void gather_rows(int dtype, int device, ptr stream, ptr src, i64 ld_src, int src_cols, ptr idx, i64 n_rows,
                 ptr dst, i64 ld_dst, int extra_col, ptr extra) {
  prepare_device(device);  // first: without a device every call says so
  check_dtype("gather_rows", dtype);
  if (src_cols > ld_dst) throw std::invalid_argument("gather_rows: src_cols must be <= ld_dst");
  if (extra_col >= 0 && (extra_col < src_cols || extra_col >= ld_dst))
    throw std::invalid_argument("gather_rows: extra_col must lie in [src_cols, ld_dst) or be -1");
  if (n_rows <= 0 || ld_dst <= 0) return;
  const unsigned grid = blocks_for(n_rows * ld_dst);
  cudaStream_t st = as_stream(stream);
  if (dtype == F16)
    gather_kernel<__half><<<grid, kThreads, 0, st>>>(as_ptr<const __half>(src), ld_src, src_cols, as_ptr<const i64>(idx),
                                                     n_rows, as_ptr<__half>(dst), ld_dst, extra_col,
                                                     as_ptr<const __half>(extra));
  else
    gather_kernel<__nv_bfloat16><<<grid, kThreads, 0, st>>>(as_ptr<const __nv_bfloat16>(src), ld_src, src_cols,
                                                            as_ptr<const i64>(idx), n_rows, as_ptr<__nv_bfloat16>(dst),
                                                            ld_dst, extra_col, as_ptr<const __nv_bfloat16>(extra));
  check_launch("gather_rows");
}

void scatter_rows(int dtype, int device, ptr stream, ptr src, i64 ld_src, i64 n_rows, int n_cols, ptr bias,
                  i64 ld_bias, ptr row_problem, ptr rows, ptr dst, i64 ld_dst) {
  prepare_device(device);  // first: without a device every call says so
  check_dtype("scatter_rows", dtype);
  if (n_cols > ld_src || n_cols > ld_dst) throw std::invalid_argument("scatter_rows: n_cols must be <= ld_src and ld_dst");
  if (n_rows <= 0 || n_cols <= 0) return;
  const unsigned grid = blocks_for(n_rows * n_cols);
  cudaStream_t st = as_stream(stream);
  if (dtype == F16)
    scatter_kernel<__half><<<grid, kThreads, 0, st>>>(as_ptr<const __half>(src), ld_src, n_rows, n_cols,
                                                      as_ptr<const float>(bias), ld_bias, as_ptr<const i64>(row_problem),
                                                      as_ptr<const i64>(rows), as_ptr<__half>(dst), ld_dst);
  else
    scatter_kernel<__nv_bfloat16><<<grid, kThreads, 0, st>>>(
        as_ptr<const __nv_bfloat16>(src), ld_src, n_rows, n_cols, as_ptr<const float>(bias), ld_bias,
        as_ptr<const i64>(row_problem), as_ptr<const i64>(rows), as_ptr<__nv_bfloat16>(dst), ld_dst);
  check_launch("scatter_rows");
}

void act_forward(int dtype, int act, int device, ptr stream, ptr z, ptr h, i64 numel) {
  prepare_device(device);  // first: without a device every call says so
  check_dtype("act_forward", dtype);
  check_act("act_forward", act);
  if (numel <= 0) return;
  NS_DISPATCH(dtype, act, act_forward_kernel<T, ACT><<<blocks_for(numel), kThreads, 0, as_stream(stream)>>>(
                              as_ptr<const T>(z), as_ptr<T>(h), numel));
  check_launch("act_forward");
}

void act_backward(int dtype, int act, int device, ptr stream, ptr z, ptr g, ptr h, i64 numel) {
  prepare_device(device);  // first: without a device every call says so
  check_dtype("act_backward", dtype);
  check_act("act_backward", act);
  if (numel <= 0) return;
  NS_DISPATCH(dtype, act, act_backward_kernel<T, ACT><<<blocks_for(numel), kThreads, 0, as_stream(stream)>>>(
                              as_ptr<const T>(z), as_ptr<T>(g), as_ptr<T>(h), numel));
  check_launch("act_backward");
}

void count_act(int dtype, int act, int device, ptr stream, ptr z, i64 ldz, i64 n_rows, int n_cols, ptr rows,
               ptr row_task, int task, ptr valid, ptr h, i64 ldh, ptr counts, i64 ldc) {
  prepare_device(device);  // first: without a device every call says so
  check_dtype("count_act", dtype);
  check_act("count_act", act);
  if (n_rows <= 0 || n_cols <= 0) return;
  if ((n_rows + kCountRows - 1) / kCountRows > 65535)
    throw std::invalid_argument("count_act: n_rows too large for one launch (at most 65535 * 64 rows)");
  const dim3 grid(ceil_div(n_cols, kThreads), ceil_div(n_rows, kCountRows));
  NS_DISPATCH(dtype, act, count_kernel<T, ACT><<<grid, kThreads, 0, as_stream(stream)>>>(
                              as_ptr<const T>(z), ldz, n_rows, n_cols, as_ptr<const i64>(rows),
                              as_ptr<const i64>(row_task), task, as_ptr<const unsigned char>(valid), as_ptr<T>(h),
                              ldh, as_ptr<unsigned long long>(counts), ldc));
  check_launch("count_act");
}

}  // namespace ns
