// CUDA implementations of the four aghmn_fast ops (schemas: csrc/ops.cpp, contract: docs/OPS.md).
// The only CUDA file with torch headers: it checks arguments, allocates outputs (and the window
// backward's workspace) with the caching allocator on the inputs' device, and calls the
// framework-free launchers of aghmn/cuda_kernels.h on the current stream (so CUDA graphs
// capture them). A size the kernels cannot hold, or a GPU the binary has no code for, raises
// NotImplementedError (and nothing else does); aghmn_fast/backends/cuda.py then falls back to
// another backend.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "aghmn/cuda_kernels.h"

namespace {

using at::Tensor;

/// Argument checks of one op against its first tensor (which fixes dtype and device).
struct Checks {
  const char* op;
  const Tensor& first;

  void first_tensor(const char* name, int64_t dim) const {
    TORCH_CHECK(first.defined(), op, ": ", name, " is undefined");
    TORCH_CHECK(first.is_cuda(), op, " (CUDA): ", name, " must be a CUDA tensor, got ",
                first.device());
    TORCH_CHECK_TYPE(first.scalar_type() == at::kFloat || first.scalar_type() == at::kDouble, op,
                     " (CUDA): ", name, " must be float32 or float64, got ", first.scalar_type());
    TORCH_CHECK(first.dim() == dim, op, ": ", name, " must be ", dim, "-D, got shape ",
                first.sizes());
    TORCH_CHECK(first.is_contiguous(), op, ": ", name, " must be contiguous");
  }

  void same(const Tensor& t, const char* name, at::IntArrayRef shape) const {
    TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
    TORCH_CHECK_TYPE(t.scalar_type() == first.scalar_type(), op, ": ", name, " has dtype ",
                     t.scalar_type(), " but the first input has dtype ", first.scalar_type());
    TORCH_CHECK(t.device() == first.device(), op, ": ", name, " is on ", t.device(),
                " but the first input is on ", first.device());
    TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ",
                t.sizes());
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  }

  void windows(const Tensor& w) const {
    TORCH_CHECK(w.defined(), op, ": windows is undefined");
    TORCH_CHECK_TYPE(w.scalar_type() == at::kLong, op, ": windows must be int64, got ",
                     w.scalar_type());
    TORCH_CHECK(w.device() == first.device(), op, ": windows is on ", w.device(),
                " but the first input is on ", first.device());
    TORCH_CHECK(w.dim() == 2, op, ": windows must be 2-D [Q, K], got shape ", w.sizes());
    TORCH_CHECK(w.is_contiguous(), op, ": windows must be contiguous");
  }

  void launched(cudaError_t err, int64_t hidden) const {
    if (err == cudaErrorNotSupported)
      TORCH_CHECK_NOT_IMPLEMENTED(false, op, " (CUDA): unsupported size: hidden size ", hidden,
                                  " does not fit the kernels' shared-memory buffers on this "
                                  "device; use backend='triton' or backend='reference'");
    // No code in the binary this GPU can run (an architecture newer than the embedded PTX
    // allows, or older than the SASS): not the caller's fault, the next backend takes it.
    // These launch errors are not sticky, so the context stays usable.
    if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidKernelImage ||
        err == cudaErrorUnsupportedPtxVersion || err == cudaErrorInvalidDeviceFunction)
      TORCH_CHECK_NOT_IMPLEMENTED(false, op, " (CUDA): no kernel image for this GPU (",
                                  cudaGetErrorString(err),
                                  "); use backend='triton' or backend='reference'");
    TORCH_CHECK(err == cudaSuccess, op, " (CUDA): ", cudaGetErrorString(err));
  }
};

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

std::tuple<Tensor, Tensor> agru_forward_cuda(const Tensor& xproj, const Tensor& attn,
                                             const Tensor& weight_hh, const Tensor& bias_hh,
                                             const Tensor& h0, bool reverse) {
  const Checks c{"agru_forward", xproj};
  c.first_tensor("xproj", 3);
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(1) > 0, c.op,
              ": weight_hh must have shape [2H, H], got ", weight_hh.sizes());
  const int64_t B = xproj.size(0), T = xproj.size(1), H = weight_hh.size(1);
  c.same(xproj, "xproj", {B, T, 2 * H});
  c.same(attn, "attn", {B, T});
  c.same(weight_hh, "weight_hh", {2 * H, H});
  c.same(bias_hh, "bias_hh", {2 * H});
  c.same(h0, "h0", {B, H});
  const c10::cuda::CUDAGuard guard(xproj.device());
  Tensor output = at::empty({B, T, H}, xproj.options());
  Tensor gates = at::empty({B, T, 3 * H}, xproj.options());
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
    c.launched(aghmn::cuda::agru_forward(p, current_stream()), H);
  });
  return {output, gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> agru_backward_cuda(
    const Tensor& grad_output, const Tensor& attn, const Tensor& weight_hh, const Tensor& h0,
    const Tensor& output, const Tensor& gates, bool reverse) {
  const Checks c{"agru_backward", grad_output};
  c.first_tensor("grad_output", 3);
  const int64_t B = grad_output.size(0), T = grad_output.size(1), H = grad_output.size(2);
  TORCH_CHECK(H > 0, c.op, ": grad_output must have a positive hidden size, got shape ",
              grad_output.sizes());
  c.same(attn, "attn", {B, T});
  c.same(weight_hh, "weight_hh", {2 * H, H});
  c.same(h0, "h0", {B, H});
  c.same(output, "output", {B, T, H});
  c.same(gates, "gates", {B, T, 3 * H});
  const c10::cuda::CUDAGuard guard(grad_output.device());
  Tensor grad_xproj = at::empty({B, T, 2 * H}, grad_output.options());
  Tensor grad_attn = at::empty({B, T}, grad_output.options());
  Tensor grad_ghh = at::empty({B, T, 2 * H}, grad_output.options());
  Tensor grad_h0 = at::empty({B, H}, grad_output.options());
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
    c.launched(aghmn::cuda::agru_backward(p, current_stream()), H);
  });
  return {grad_xproj, grad_attn, grad_ghh, grad_h0};
}

std::tuple<Tensor, Tensor> window_gru_forward_cuda(const Tensor& proj, const Tensor& pad_proj,
                                                   const Tensor& weight_hh,
                                                   const Tensor& bias_hh,
                                                   const Tensor& windows) {
  const Checks c{"window_gru_forward", proj};
  c.first_tensor("proj", 3);
  c.windows(windows);
  const int64_t D = proj.size(0), N = proj.size(1), H = proj.size(2) / 3;
  const int64_t Q = windows.size(0), K = windows.size(1);
  TORCH_CHECK(D == 1 || D == 2, c.op, ": proj must have 1 or 2 directions, got shape ",
              proj.sizes());
  TORCH_CHECK(H > 0 && proj.size(2) == 3 * H, c.op,
              ": proj must have shape [D, N, 3H] with H > 0, got ", proj.sizes());
  c.same(pad_proj, "pad_proj", {D, 3 * H});
  c.same(weight_hh, "weight_hh", {D, 3 * H, H});
  c.same(bias_hh, "bias_hh", {D, 3 * H});
  const c10::cuda::CUDAGuard guard(proj.device());
  Tensor output = at::empty({D, Q, K, H}, proj.options());
  Tensor gates = at::empty({D, Q, K, 4 * H}, proj.options());
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
    c.launched(aghmn::cuda::window_gru_forward(p, current_stream()), H);
  });
  return {output, gates};
}

std::tuple<Tensor, Tensor, Tensor> window_gru_backward_cuda(
    const Tensor& grad_output, const Tensor& weight_hh, const Tensor& windows,
    const Tensor& output, const Tensor& gates, int64_t num_utterances) {
  const Checks c{"window_gru_backward", grad_output};
  c.first_tensor("grad_output", 4);
  c.windows(windows);
  const int64_t D = grad_output.size(0), Q = grad_output.size(1), K = grad_output.size(2);
  const int64_t H = grad_output.size(3), N = num_utterances;
  TORCH_CHECK(D == 1 || D == 2, c.op, ": grad_output must have 1 or 2 directions, got shape ",
              grad_output.sizes());
  TORCH_CHECK(H > 0, c.op, ": grad_output must have a positive hidden size, got shape ",
              grad_output.sizes());
  TORCH_CHECK(N >= 0, c.op, ": num_utterances must be >= 0, got ", N);
  TORCH_CHECK(windows.size(0) == Q && windows.size(1) == K, c.op, ": windows must have shape [",
              Q, ", ", K, "], got ", windows.sizes());
  c.same(weight_hh, "weight_hh", {D, 3 * H, H});
  c.same(output, "output", {D, Q, K, H});
  c.same(gates, "gates", {D, Q, K, 4 * H});
  const c10::cuda::CUDAGuard guard(grad_output.device());
  Tensor grad_proj = at::empty({D, N, 3 * H}, grad_output.options());
  Tensor grad_pad_proj = at::empty({D, 3 * H}, grad_output.options());
  Tensor grad_ghh = at::empty({D, Q, K, 3 * H}, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "window_gru_backward_cuda", [&] {
    const size_t bytes =
        aghmn::cuda::window_gru_backward_workspace_bytes<scalar_t>(D, N, Q, K, H);
    TORCH_CHECK(bytes > 0, c.op, ": sizes out of range (N = ", N, ", Q = ", Q, ", K = ", K, ")");
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
    c.launched(aghmn::cuda::window_gru_backward(p, current_stream()), H);
  });
  return {grad_proj, grad_pad_proj, grad_ghh};
}

}  // namespace

TORCH_LIBRARY_IMPL(aghmn_fast, CUDA, m) {
  m.impl("agru_forward", &agru_forward_cuda);
  m.impl("agru_backward", &agru_backward_cuda);
  m.impl("window_gru_forward", &window_gru_forward_cuda);
  m.impl("window_gru_backward", &window_gru_backward_cuda);
}
