// CUDA implementation of the AGRU ops (schemas: csrc/library.cpp, contract: docs/OPS.md). A thin
// binding: it checks the arguments (agru_checks.h, shared with the CPU binding), allocates the
// outputs with the caching allocator on the inputs' device, and calls the framework-free
// launchers of agru_kernels.h (defined in agru_kernels.cu) on the current stream.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "agru/agru_checks.h"
#include "agru/agru_kernels.h"
#include "common/cuda_launch.h"

namespace {

using aghmn::check_launch;
using aghmn::current_stream;
using at::Tensor;

std::tuple<Tensor, Tensor> agru_forward_cuda(const Tensor& xproj, const Tensor& attn,
                                             const Tensor& weight_hh, const Tensor& bias_hh,
                                             const Tensor& h0, bool reverse) {
  const aghmn::AgruSizes sizes = aghmn::check_agru_forward(
      xproj, attn, weight_hh, bias_hh, h0, c10::DeviceType::CUDA);
  const int64_t B = sizes.B, T = sizes.T, H = sizes.H;
  const c10::cuda::CUDAGuard guard(xproj.device());
  Tensor output, gates;
  std::tie(output, gates) = aghmn::agru_forward_outputs(sizes, xproj.options());
  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "agru_forward_cuda", [&] {
    aghmn::cuda::AgruForwardParams<scalar_t> p;
    p.xproj = xproj.const_data_ptr<scalar_t>();
    p.attn = attn.const_data_ptr<scalar_t>();
    p.weight_hh = weight_hh.const_data_ptr<scalar_t>();
    p.bias_hh = bias_hh.const_data_ptr<scalar_t>();
    p.h0 = h0.const_data_ptr<scalar_t>();
    p.output = output.mutable_data_ptr<scalar_t>();
    p.gates = gates.mutable_data_ptr<scalar_t>();
    p.batch = B;
    p.steps = T;
    p.hidden = H;
    p.reverse = reverse;
    check_launch("agru_forward", aghmn::cuda::agru_forward(p, current_stream()), H);
  });
  return {output, gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> agru_backward_cuda(
    const Tensor& grad_output, const Tensor& attn, const Tensor& weight_hh, const Tensor& h0,
    const Tensor& output, const Tensor& gates, bool reverse) {
  const aghmn::AgruSizes sizes = aghmn::check_agru_backward(
      grad_output, attn, weight_hh, h0, output, gates, c10::DeviceType::CUDA);
  const int64_t B = sizes.B, T = sizes.T, H = sizes.H;
  const c10::cuda::CUDAGuard guard(grad_output.device());
  Tensor grad_xproj, grad_attn, grad_ghh, grad_h0;
  std::tie(grad_xproj, grad_attn, grad_ghh, grad_h0) =
      aghmn::agru_backward_outputs(sizes, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "agru_backward_cuda", [&] {
    aghmn::cuda::AgruBackwardParams<scalar_t> p;
    p.grad_output = grad_output.const_data_ptr<scalar_t>();
    p.attn = attn.const_data_ptr<scalar_t>();
    p.weight_hh = weight_hh.const_data_ptr<scalar_t>();
    p.h0 = h0.const_data_ptr<scalar_t>();
    p.output = output.const_data_ptr<scalar_t>();
    p.gates = gates.const_data_ptr<scalar_t>();
    p.grad_xproj = grad_xproj.mutable_data_ptr<scalar_t>();
    p.grad_attn = grad_attn.mutable_data_ptr<scalar_t>();
    p.grad_ghh = grad_ghh.mutable_data_ptr<scalar_t>();
    p.grad_h0 = grad_h0.mutable_data_ptr<scalar_t>();
    p.batch = B;
    p.steps = T;
    p.hidden = H;
    p.reverse = reverse;
    check_launch("agru_backward", aghmn::cuda::agru_backward(p, current_stream()), H);
  });
  return {grad_xproj, grad_attn, grad_ghh, grad_h0};
}

}  // namespace

TORCH_LIBRARY_IMPL(aghmn_fast, CUDA, m) {
  m.impl("agru_forward", &agru_forward_cuda);
  m.impl("agru_backward", &agru_backward_cuda);
}
