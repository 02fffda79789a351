// pybind11 module neuronspec._cuda: raw-pointer launchers of the masked-FFN kernels (see ops.h).
// Python (neuronspec/ops/cuda_backend.py) validates tensors, allocates every buffer with torch
// and passes data_ptr()s, leading dimensions and torch's current stream; nothing here knows
// about torch.
#include <pybind11/pybind11.h>

#include "ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "neuronspec CUDA kernels: CUTLASS grouped GEMMs over the active neurons + elementwise passes";

  m.def("device_count", &ns::device_count,
        "Number of CUDA devices; RuntimeError 'neuronspec._cuda: no CUDA device: ...' if none.");
  m.def("cutlass_version", &ns::cutlass_version, "CUTLASS version the module was compiled with ('4.2.0').");
  m.def("workspace_bytes", &ns::workspace_bytes, py::arg("num_problems"),
        "Bytes of device workspace grouped_gemm needs for num_problems problems.");
  m.def("has_sm90", &ns::has_sm90, "True when the module holds the sm_90a CUTLASS 3 kernels.");
  m.def("grouped_gemm", &ns::grouped_gemm, py::arg("kernel"), py::arg("op"), py::arg("dtype"), py::arg("device"),
        py::arg("stream"), py::arg("workspace"), py::arg("num_problems"), py::arg("starts"), py::arg("n"),
        py::arg("koff"), py::arg("kw"), py::arg("kdim"), py::arg("ncols"), py::arg("a"), py::arg("lda"), py::arg("b"),
        py::arg("ldb"), py::arg("d"), py::arg("ldd"),
        "One CUTLASS grouped GEMM over per-task problems (op 0 nt: fc1/dH, 1 nn: fc2/dX, 2 tn: dW1/dW2^T; "
        "kernel 0 sm80, 1 sm90a).");
  m.def("gather_rows", &ns::gather_rows, py::arg("dtype"), py::arg("device"), py::arg("stream"), py::arg("src"),
        py::arg("ld_src"), py::arg("src_cols"), py::arg("idx"), py::arg("n_rows"), py::arg("dst"), py::arg("ld_dst"),
        py::arg("extra_col"), py::arg("extra"),
        "dst[i] = src[idx[i]] zero-padded to ld_dst columns (idx < 0: zero row), extra[idx[i]] (or 1) in extra_col.");
  m.def("scatter_rows", &ns::scatter_rows, py::arg("dtype"), py::arg("device"), py::arg("stream"), py::arg("src"),
        py::arg("ld_src"), py::arg("n_rows"), py::arg("n_cols"), py::arg("bias"), py::arg("ld_bias"),
        py::arg("row_problem"), py::arg("rows"), py::arg("dst"), py::arg("ld_dst"),
        "dst[rows[r]] = src[r] + bias[row_problem[r]] (fp32 bias; each optional).");
  m.def("act_forward", &ns::act_forward, py::arg("dtype"), py::arg("act"), py::arg("device"), py::arg("stream"),
        py::arg("z"), py::arg("h"), py::arg("numel"), "h = act(z).");
  m.def("act_backward", &ns::act_backward, py::arg("dtype"), py::arg("act"), py::arg("device"), py::arg("stream"),
        py::arg("z"), py::arg("g"), py::arg("h"), py::arg("numel"), "g *= act'(z) (in place), h = act(z).");
  m.def("count_act", &ns::count_act, py::arg("dtype"), py::arg("act"), py::arg("device"), py::arg("stream"),
        py::arg("z"), py::arg("ldz"), py::arg("n_rows"), py::arg("n_cols"), py::arg("rows"), py::arg("row_task"),
        py::arg("task"), py::arg("valid"), py::arg("h"), py::arg("ldh"), py::arg("counts"), py::arg("ldc"),
        "h[token] = act(z) and counts[task] += (z > 0) & valid over grouped rows.");
}
