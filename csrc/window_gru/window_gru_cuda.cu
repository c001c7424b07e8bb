// CUDA implementation of the window-GRU ops (schemas: csrc/library.cpp, contract: docs/OPS.md).
// A thin binding: it checks the arguments (window_gru_checks.h, shared with the CPU binding),
// allocates the outputs (and the backward's workspace) with the caching allocator on the inputs'
// device, and calls the framework-free launchers of window_gru_kernels.h (defined
// in window_gru_kernels.cu) on the current stream.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "common/cuda_launch.h"
#include "window_gru/window_gru_checks.h"
#include "window_gru/window_gru_kernels.h"

namespace {

using aghmn::check_launch;
using aghmn::current_stream;
using at::Tensor;

std::tuple<Tensor, Tensor> window_gru_forward_cuda(const Tensor& proj, const Tensor& pad_proj,
                                                   const Tensor& weight_hh,
                                                   const Tensor& bias_hh,
                                                   const Tensor& windows) {
  const aghmn::WindowGruSizes sizes = aghmn::check_window_gru_forward(
      proj, pad_proj, weight_hh, bias_hh, windows, c10::DeviceType::CUDA);
  const int64_t D = sizes.D, N = sizes.N, Q = sizes.Q, K = sizes.K, H = sizes.H;
  const c10::cuda::CUDAGuard guard(proj.device());
  Tensor output, gates;
  std::tie(output, gates) = aghmn::window_gru_forward_outputs(sizes, proj.options());
  AT_DISPATCH_FLOATING_TYPES(proj.scalar_type(), "window_gru_forward_cuda", [&] {
    aghmn::cuda::WindowGruForwardParams<scalar_t> p;
    p.proj = proj.const_data_ptr<scalar_t>();
    p.pad_proj = pad_proj.const_data_ptr<scalar_t>();
    p.weight_hh = weight_hh.const_data_ptr<scalar_t>();
    p.bias_hh = bias_hh.const_data_ptr<scalar_t>();
    p.windows = windows.const_data_ptr<int64_t>();
    p.output = output.mutable_data_ptr<scalar_t>();
    p.gates = gates.mutable_data_ptr<scalar_t>();
    p.directions = D;
    p.num_utterances = N;
    p.num_windows = Q;
    p.window = K;
    p.hidden = H;
    check_launch("window_gru_forward", aghmn::cuda::window_gru_forward(p, current_stream()), H);
  });
  return {output, gates};
}

std::tuple<Tensor, Tensor, Tensor> window_gru_backward_cuda(
    const Tensor& grad_output, const Tensor& weight_hh, const Tensor& windows,
    const Tensor& output, const Tensor& gates, int64_t num_utterances) {
  const aghmn::WindowGruSizes sizes = aghmn::check_window_gru_backward(
      grad_output, weight_hh, windows, output, gates, num_utterances, c10::DeviceType::CUDA);
  const int64_t D = sizes.D, N = sizes.N, Q = sizes.Q, K = sizes.K, H = sizes.H;
  const c10::cuda::CUDAGuard guard(grad_output.device());
  Tensor grad_proj, grad_pad_proj, grad_ghh;
  std::tie(grad_proj, grad_pad_proj, grad_ghh) =
      aghmn::window_gru_backward_outputs(sizes, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "window_gru_backward_cuda", [&] {
    const size_t bytes =
        aghmn::cuda::window_gru_backward_workspace_bytes<scalar_t>(D, N, Q, K, H);
    TORCH_CHECK(bytes > 0, "window_gru_backward: sizes out of range (N = ", N, ", Q = ", Q,
                ", K = ", K, ")");
    Tensor workspace = at::empty({static_cast<int64_t>(bytes)},
                                 grad_output.options().dtype(at::kByte));
    aghmn::cuda::WindowGruBackwardParams<scalar_t> p;
    p.grad_output = grad_output.const_data_ptr<scalar_t>();
    p.weight_hh = weight_hh.const_data_ptr<scalar_t>();
    p.windows = windows.const_data_ptr<int64_t>();
    p.output = output.const_data_ptr<scalar_t>();
    p.gates = gates.const_data_ptr<scalar_t>();
    p.grad_proj = grad_proj.mutable_data_ptr<scalar_t>();
    p.grad_pad_proj = grad_pad_proj.mutable_data_ptr<scalar_t>();
    p.grad_ghh = grad_ghh.mutable_data_ptr<scalar_t>();
    p.workspace = workspace.mutable_data_ptr();
    p.workspace_bytes = bytes;
    p.directions = D;
    p.num_utterances = N;
    p.num_windows = Q;
    p.window = K;
    p.hidden = H;
    check_launch("window_gru_backward", aghmn::cuda::window_gru_backward(p, current_stream()),
                 H);
  });
  return {grad_proj, grad_pad_proj, grad_ghh};
}

}  // namespace

TORCH_LIBRARY_IMPL(aghmn_fast, CUDA, m) {
  m.impl("window_gru_forward", &window_gru_forward_cuda);
  m.impl("window_gru_backward", &window_gru_backward_cuda);
}
