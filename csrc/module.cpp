// pybind11 module neuronspec._cuda: raw-pointer launchers of the masked-FFN kernels (see ops.h).
// Python (neuronspec/ops/cuda_backend.py) validates tensors, allocates every buffer with torch
// and passes data_ptr()s, strides and torch's current stream; nothing here knows about torch.
#include <pybind11/pybind11.h>

#include "ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "neuronspec CUDA kernels (gathered fc1/fc2 on tensor cores, fused counting, backward)";
  m.attr("TILE_ROWS") = 64;  // rows per work item of the row-tiled launchers

  m.def("device_count", &ns::device_count,
        "Number of CUDA devices; RuntimeError 'neuronspec._cuda: no CUDA device: ...' if none.");
  m.def("gathered_fc1", &ns::gathered_fc1, py::arg("dtype"), py::arg("act"), py::arg("device"), py::arg("stream"),
        py::arg("work"), py::arg("num_work"), py::arg("max_cols"), py::arg("x"), py::arg("ldx"), py::arg("x_rows"),
        py::arg("w1"), py::arg("ldw"), py::arg("idx"), py::arg("off"), py::arg("K"), py::arg("bias"),
        py::arg("z_out"), py::arg("h_out"), py::arg("ldo"),
        "Packed Z = X[rows] W1[A]^T + b1[A] and H = act(Z) per task work item.");
  m.def("fc1_count", &ns::fc1_count, py::arg("dtype"), py::arg("act"), py::arg("device"), py::arg("stream"),
        py::arg("work"), py::arg("num_work"), py::arg("n_cols"), py::arg("x"), py::arg("ldx"), py::arg("x_rows"),
        py::arg("w1"), py::arg("ldw"), py::arg("K"), py::arg("bias"), py::arg("h_out"), py::arg("ldo"),
        py::arg("counts"), py::arg("ldc"), py::arg("valid"),
        "Dense fc1 + bias + act with counts[task, n] += #(Z > 0 and valid) in the epilogue.");
  m.def("gathered_dz", &ns::gathered_dz, py::arg("dtype"), py::arg("act"), py::arg("device"), py::arg("stream"),
        py::arg("work"), py::arg("num_work"), py::arg("max_cols"), py::arg("dy"), py::arg("lddy"),
        py::arg("dy_rows"), py::arg("w2t"), py::arg("ldw"), py::arg("idx"), py::arg("off"), py::arg("K"),
        py::arg("z_in"), py::arg("dz_out"), py::arg("h_out"), py::arg("ldo"),
        "Packed dZ = (dY[rows] W2[:, A]) * act'(Z) and H = act(Z).");
  m.def("gathered_fc2", &ns::gathered_fc2, py::arg("dtype"), py::arg("device"), py::arg("stream"),
        py::arg("work"), py::arg("num_work"), py::arg("p"), py::arg("ldp"), py::arg("w"), py::arg("ldw"),
        py::arg("idx"), py::arg("off"), py::arg("n_cols"), py::arg("bias"), py::arg("bias_stride"),
        py::arg("out"), py::arg("ldo"), py::arg("out_rows"),
        "out[rows] = P W[A] + bias[task]: fc2 over the active neurons (also dX = dZ W1[A]).");
  m.def("gathered_wgrad", &ns::gathered_wgrad, py::arg("dtype"), py::arg("device"), py::arg("stream"),
        py::arg("work"), py::arg("num_work"), py::arg("max_cols"), py::arg("p"), py::arg("ldp"), py::arg("q"),
        py::arg("ldq"), py::arg("q_rows"), py::arg("idx"), py::arg("off"), py::arg("n_cols"), py::arg("out"),
        py::arg("ldo"), "out_f32[A] += P^T Q[rows] (dW1 and dW2^T of the active neurons).");
  m.def("gathered_colsum", &ns::gathered_colsum, py::arg("dtype"), py::arg("device"), py::arg("stream"),
        py::arg("work"), py::arg("num_work"), py::arg("max_cols"), py::arg("p"), py::arg("ldp"), py::arg("idx"),
        py::arg("off"), py::arg("out"), "out_f32[A] += column sums of P (db1 of the active neurons).");
}
