// grouped_gemm (ops.h): validates the arguments, writes the P problems' sizes, pointers and
// leading dimensions into the workspace with one small kernel (from the device-side group
// bounds: no host sync, no host copy), then launches the op's CUTLASS grouped GEMM: the sm80
// CUTLASS 2.x kernel (gemm_{nt,nn,tn}.cu) or the sm_90a CUTLASS 3 one (sm90_{nt,nn,tn}.cu).
#include "grouped_gemm.cuh"

namespace ns {
namespace {

struct SetupParams {
  int op, num_problems;
  const int* starts;  // [P+1] or nullptr (rows 0..n)
  int n;
  const int* koff;  // [P] first table row of each problem
  const int* kw;    // [P] table rows (padded active neurons) of each problem
  int kdim, ncols;
  const char* a;
  i64 lda;
  const char* b;
  i64 ldb;
  char* d;
  i64 ldd;
  int es_ab, es_d;  // element sizes (bytes) of A/B and of D
  bool skip_empty_k;  // K = 0 problems get M = 0 (the caller zero-filled D): the sm_90a kernels
  char* ws;
};

__global__ void setup_kernel(SetupParams q) {
  const WorkspaceLayout w(q.num_problems);
  for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < q.num_problems; p += gridDim.x * blockDim.x) {
    const i64 s = q.starts ? q.starts[p] : 0;
    const int m = q.starts ? q.starts[p + 1] - q.starts[p] : q.n;  // tokens of problem p
    const i64 ko = q.koff[p];
    const int kw = q.kw[p];
    int M, N, K;
    const char *A, *B;
    char* D;
    if (q.op == OP_NT) {  // [m, kdim] x [kw, kdim]ᵀ -> rows s.. of D
      M = m, N = kw, K = q.kdim;
      A = q.a + s * q.lda * q.es_ab, B = q.b + ko * q.ldb * q.es_ab, D = q.d + s * q.ldd * q.es_d;
    } else if (q.op == OP_NN) {  // [m, kw] x [kw, ncols] -> rows s.. of D
      M = m, N = q.ncols, K = kw;
      A = q.a + s * q.lda * q.es_ab, B = q.b + ko * q.ldb * q.es_ab, D = q.d + s * q.ldd * q.es_d;
    } else {  // OP_TN: [m, kw]ᵀ x [m, ncols] -> table rows ko.. of D
      M = kw, N = q.ncols, K = m;
      A = q.a + s * q.lda * q.es_ab, B = q.b + s * q.ldb * q.es_ab, D = q.d + ko * q.ldd * q.es_d;
    }
    // CUTLASS 3's mainloop leaves the accumulators unset when a tile has no K step, so on the
    // sm_90a path a problem without K steps computes nothing and D keeps the caller's zeros.
    if (q.skip_empty_k && K == 0) M = 0;
    int* size = reinterpret_cast<int*>(q.ws + w.sizes) + 3 * p;
    size[0] = M, size[1] = N, size[2] = K;
    reinterpret_cast<const void**>(q.ws + w.ptr_a)[p] = A;
    reinterpret_cast<const void**>(q.ws + w.ptr_b)[p] = B;
    reinterpret_cast<const void**>(q.ws + w.ptr_c)[p] = D;  // C = D, never read (beta = 0)
    reinterpret_cast<void**>(q.ws + w.ptr_d)[p] = D;
    reinterpret_cast<i64*>(q.ws + w.ld_a)[p] = q.lda;
    reinterpret_cast<i64*>(q.ws + w.ld_b)[p] = q.ldb;
    reinterpret_cast<i64*>(q.ws + w.ld_c)[p] = q.ldd;
    reinterpret_cast<i64*>(q.ws + w.ld_d)[p] = q.ldd;
  }
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("grouped_gemm: " + what);
}

bool aligned16(ptr p) { return p % 16 == 0; }

}  // namespace

i64 workspace_bytes(int num_problems) {
  if (num_problems < 0) throw std::invalid_argument("workspace_bytes: num_problems must be >= 0");
  return WorkspaceLayout(num_problems).total;
}

bool has_sm90() {
#ifdef NEURONSPEC_HAS_SM90
  return true;
#else
  return false;
#endif
}

void grouped_gemm(int kernel, int op, int dtype, int device, ptr stream, ptr workspace, int num_problems, ptr starts,
                  int n, ptr koff, ptr kw, int kdim, int ncols, ptr a, i64 lda, ptr b, i64 ldb, ptr d, i64 ldd) {
  prepare_device(device);  // first: without a device every call says so
  require(kernel == 0 || kernel == 1, "kernel must be 0 (sm80) or 1 (sm90), got " + std::to_string(kernel));
  require(kernel == 0 || has_sm90(), "kernel 1: this module was built without the sm_90a kernels "
                                     "(NEURONSPEC_CUDA_ARCH without 90)");
  require(kernel == 0 || compute_capability(device) == 90,
          "kernel 1: the sm_90a kernels run on sm_90 devices only, device " + std::to_string(device) + " is sm_" +
              std::to_string(compute_capability(device)));
  require(op == OP_NT || op == OP_NN || op == OP_TN, "op must be 0 (nt), 1 (nn) or 2 (tn), got " + std::to_string(op));
  check_dtype("grouped_gemm", dtype);
  require(num_problems >= 0, "num_problems must be >= 0");
  require(n >= 0, "n must be >= 0");
  require(kdim >= 0 && kdim % 8 == 0, "kdim must be a multiple of 8, got " + std::to_string(kdim));
  require(ncols >= 0 && ncols % 8 == 0, "ncols must be a multiple of 8, got " + std::to_string(ncols));
  for (const auto& [name, ld] : {std::pair<const char*, i64>{"lda", lda}, {"ldb", ldb}, {"ldd", ldd}})
    require(ld > 0 && ld % 8 == 0, std::string(name) + " must be a positive multiple of 8, got " + std::to_string(ld));
  for (const auto& [name, p] : {std::pair<const char*, ptr>{"a", a}, {"b", b}, {"d", d}, {"workspace", workspace}})
    require(p != 0 && aligned16(p), std::string(name) + " must be a non-null 16-byte aligned pointer");
  require(koff != 0 && kw != 0, "koff and kw must be device pointers");
  if (num_problems == 0) return;

  SetupParams q{};
  q.op = op, q.num_problems = num_problems, q.starts = as_ptr<const int>(starts), q.n = n;
  q.koff = as_ptr<const int>(koff), q.kw = as_ptr<const int>(kw), q.kdim = kdim, q.ncols = ncols;
  q.a = as_ptr<const char>(a), q.lda = lda, q.b = as_ptr<const char>(b), q.ldb = ldb;
  q.d = as_ptr<char>(d), q.ldd = ldd;
  q.es_ab = 2, q.es_d = op == OP_TN ? 4 : 2;
  q.skip_empty_k = kernel == 1;
  q.ws = as_ptr<char>(workspace);
  cudaStream_t st = as_stream(stream);
  setup_kernel<<<ceil_div(num_problems, 128), 128, 0, st>>>(q);
  check_launch("grouped_gemm setup");
#ifdef NEURONSPEC_HAS_SM90
  if (kernel == 1) {
    if (op == OP_NT) sm90_nt(dtype, device, st, q.ws, num_problems);
    else if (op == OP_NN) sm90_nn(dtype, device, st, q.ws, num_problems);
    else sm90_tn(dtype, device, st, q.ws, num_problems);
    return;
  }
#endif
  if (op == OP_NT) launch_nt(dtype, device, st, q.ws, num_problems);
  else if (op == OP_NN) launch_nn(dtype, device, st, q.ws, num_problems);
  else launch_tn(dtype, device, st, q.ws, num_problems);
}

}  // namespace ns
