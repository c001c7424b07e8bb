// The AGRU ops' argument checks and output shapes, used by the CPU binding (agru_ops.cpp) and
// the CUDA binding (agru_cuda.cu) alike, on top of common/checks.h. The outputs' shapes are
// written here once for C++ (Python's: ops/agru/autograd.py, agru_forward_shapes).
#pragma once
#include <tuple>

#include "common/checks.h"

namespace aghmn {

/// Sizes of one AGRU op call: batch, steps, hidden.
struct AgruSizes {
  int64_t B, T, H;
};

/// agru_forward's arguments for the kernel of `device`.
inline AgruSizes check_agru_forward(const at::Tensor& xproj, const at::Tensor& attn,
                                    const at::Tensor& weight_hh, const at::Tensor& bias_hh,
                                    const at::Tensor& h0, c10::DeviceType device) {
  const Checks c{"agru_forward", xproj};
  c.first_tensor("xproj", 3, device);
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(1) > 0, c.op,
              ": weight_hh must have shape [2H, H], got ", weight_hh.sizes());
  const int64_t B = xproj.size(0), T = xproj.size(1), H = weight_hh.size(1);
  c.same(weight_hh, "weight_hh", {2 * H, H});
  c.same(xproj, "xproj", {B, T, 2 * H});
  c.same(attn, "attn", {B, T});
  c.same(bias_hh, "bias_hh", {2 * H});
  c.same(h0, "h0", {B, H});
  return {B, T, H};
}

/// agru_backward's arguments for the kernel of `device`.
inline AgruSizes check_agru_backward(const at::Tensor& grad_output, const at::Tensor& attn,
                                     const at::Tensor& weight_hh, const at::Tensor& h0,
                                     const at::Tensor& output, const at::Tensor& gates,
                                     c10::DeviceType device) {
  const Checks c{"agru_backward", grad_output};
  c.first_tensor("grad_output", 3, device);
  const int64_t B = grad_output.size(0), T = grad_output.size(1), H = grad_output.size(2);
  TORCH_CHECK(H > 0, c.op, ": grad_output must have a positive hidden size, got shape ",
              grad_output.sizes());
  c.same(attn, "attn", {B, T});
  c.same(weight_hh, "weight_hh", {2 * H, H});
  c.same(h0, "h0", {B, H});
  c.same(output, "output", {B, T, H});
  c.same(gates, "gates", {B, T, 3 * H});
  return {B, T, H};
}

/// agru_forward's outputs, uninitialised: output [B, T, H], gates [B, T, 3H].
inline std::tuple<at::Tensor, at::Tensor> agru_forward_outputs(const AgruSizes& s,
                                                               const at::TensorOptions& o) {
  return {at::empty({s.B, s.T, s.H}, o), at::empty({s.B, s.T, 3 * s.H}, o)};
}

/// agru_backward's outputs, uninitialised: grad_xproj [B, T, 2H], grad_attn [B, T],
/// grad_ghh [B, T, 2H], grad_h0 [B, H].
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> agru_backward_outputs(
    const AgruSizes& s, const at::TensorOptions& o) {
  return {at::empty({s.B, s.T, 2 * s.H}, o), at::empty({s.B, s.T}, o),
          at::empty({s.B, s.T, 2 * s.H}, o), at::empty({s.B, s.H}, o)};
}

}  // namespace aghmn
