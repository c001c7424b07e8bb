// The window-GRU ops' argument checks and output shapes, used by the CPU binding
// (window_gru_ops.cpp) and the CUDA binding (window_gru_cuda.cu) alike, on top of
// common/checks.h. The outputs' shapes are written here once for C++ (Python's:
// ops/window_gru/autograd.py, window_gru_forward_shapes).
#pragma once
#include <tuple>

#include "common/checks.h"

namespace aghmn {

/// Sizes of one window-GRU op call: directions, utterances, windows, window length, hidden.
struct WindowGruSizes {
  int64_t D, N, Q, K, H;
};

/// window_gru_forward's arguments for the kernel of `device`.
inline WindowGruSizes check_window_gru_forward(const at::Tensor& proj, const at::Tensor& pad_proj,
                                               const at::Tensor& weight_hh,
                                               const at::Tensor& bias_hh,
                                               const at::Tensor& windows, c10::DeviceType device) {
  const Checks c{"window_gru_forward", proj};
  c.first_tensor("proj", 3, device);
  const int64_t D = proj.size(0), N = proj.size(1);
  TORCH_CHECK(D == 1 || D == 2, c.op,
              ": proj must be [D, N, 3H] with D = 1 or 2 directions, got ", proj.sizes());
  TORCH_CHECK(proj.size(2) % 3 == 0 && proj.size(2) > 0, c.op,
              ": proj must be [D, N, 3H] with H > 0, got ", proj.sizes());
  const int64_t H = proj.size(2) / 3;
  c.same(pad_proj, "pad_proj", {D, 3 * H});
  c.same(weight_hh, "weight_hh", {D, 3 * H, H});
  c.same(bias_hh, "bias_hh", {D, 3 * H});
  c.windows(windows, N);
  return {D, N, windows.size(0), windows.size(1), H};
}

/// window_gru_backward's arguments for the kernel of `device`.
inline WindowGruSizes check_window_gru_backward(const at::Tensor& grad_output,
                                                const at::Tensor& weight_hh,
                                                const at::Tensor& windows,
                                                const at::Tensor& output, const at::Tensor& gates,
                                                int64_t num_utterances, c10::DeviceType device) {
  const Checks c{"window_gru_backward", grad_output};
  c.first_tensor("grad_output", 4, device);
  const int64_t D = grad_output.size(0), Q = grad_output.size(1), K = grad_output.size(2),
                H = grad_output.size(3), N = num_utterances;
  TORCH_CHECK(D == 1 || D == 2, c.op,
              ": grad_output must be [D, Q, K, H] with D = 1 or 2, got ", grad_output.sizes());
  TORCH_CHECK(H > 0, c.op, ": grad_output must be [D, Q, K, H] with H > 0, got ",
              grad_output.sizes());
  TORCH_CHECK(N >= 0, c.op, ": num_utterances must be >= 0, got ", N);
  c.same(weight_hh, "weight_hh", {D, 3 * H, H});
  c.windows(windows, N);
  TORCH_CHECK(windows.size(0) == Q && windows.size(1) == K, c.op, ": windows must have shape [",
              Q, ", ", K, "], got ", windows.sizes());
  c.same(output, "output", {D, Q, K, H});
  c.same(gates, "gates", {D, Q, K, 4 * H});
  return {D, N, Q, K, H};
}

/// window_gru_forward's outputs, uninitialised: output [D, Q, K, H], gates [D, Q, K, 4H].
inline std::tuple<at::Tensor, at::Tensor> window_gru_forward_outputs(const WindowGruSizes& s,
                                                                     const at::TensorOptions& o) {
  return {at::empty({s.D, s.Q, s.K, s.H}, o), at::empty({s.D, s.Q, s.K, 4 * s.H}, o)};
}

/// window_gru_backward's outputs, uninitialised: grad_proj [D, N, 3H], grad_pad_proj [D, 3H],
/// grad_ghh [D, Q, K, 3H].
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> window_gru_backward_outputs(
    const WindowGruSizes& s, const at::TensorOptions& o) {
  return {at::empty({s.D, s.N, 3 * s.H}, o), at::empty({s.D, 3 * s.H}, o),
          at::empty({s.D, s.Q, s.K, 3 * s.H}, o)};
}

}  // namespace aghmn
