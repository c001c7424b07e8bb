// CPU implementation of the window-GRU ops (schemas: csrc/library.cpp, contract: docs/OPS.md). A
// thin binding: it checks the arguments (window_gru_checks.h), allocates the outputs, packs the
// recurrent weights once, runs window tiles in parallel and scatters the gradients
// deterministically; the math is in window_gru_cpu.h (no torch header).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/cpu_parallel.h"
#include "window_gru/window_gru_checks.h"
#include "window_gru/window_gru_cpu.h"

namespace {

using aghmn::tile_rows;
using at::Tensor;
namespace cpu = aghmn::cpu;

std::tuple<Tensor, Tensor> window_gru_forward_cpu(const Tensor& proj, const Tensor& pad_proj,
                                                  const Tensor& weight_hh, const Tensor& bias_hh,
                                                  const Tensor& windows) {
  const aghmn::WindowGruSizes sizes = aghmn::check_window_gru_forward(
      proj, pad_proj, weight_hh, bias_hh, windows, c10::DeviceType::CPU);
  const int64_t D = sizes.D, N = sizes.N, Q = sizes.Q, K = sizes.K, H = sizes.H;

  Tensor output, gates;
  std::tie(output, gates) = aghmn::window_gru_forward_outputs(sizes, proj.options());
  if (Q == 0 || K == 0) return {output, gates};
  AT_DISPATCH_FLOATING_TYPES(proj.scalar_type(), "window_gru_forward_cpu", [&] {
    auto plan = cpu::window_gru_plan<scalar_t>(D, Q, K, N, H);
    std::vector<scalar_t> packed(cpu::window_gru_forward_pack_size(plan));
    cpu::window_gru_pack_forward(plan, weight_hh.data_ptr<scalar_t>(),
                                 bias_hh.data_ptr<scalar_t>(), packed.data());
    const int64_t rows = tile_rows(D * Q), tiles = (Q + rows - 1) / rows;
    at::parallel_for(0, D * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(cpu::window_gru_scratch_size(plan, rows));
      for (int64_t i = begin; i < end; ++i) {
        const int64_t d = i / tiles, q0 = (i % tiles) * rows;
        cpu::window_gru_forward_tile(
            plan, proj.data_ptr<scalar_t>(), pad_proj.data_ptr<scalar_t>(),
            windows.data_ptr<int64_t>(), output.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
            d, q0, std::min(rows, Q - q0), scratch.data());
      }
    });
  });
  return {output, gates};
}

std::tuple<Tensor, Tensor, Tensor> window_gru_backward_cpu(const Tensor& grad_output,
                                                           const Tensor& weight_hh,
                                                           const Tensor& windows,
                                                           const Tensor& output,
                                                           const Tensor& gates,
                                                           int64_t num_utterances) {
  const aghmn::WindowGruSizes sizes = aghmn::check_window_gru_backward(
      grad_output, weight_hh, windows, output, gates, num_utterances, c10::DeviceType::CPU);
  const int64_t D = sizes.D, N = sizes.N, Q = sizes.Q, K = sizes.K, H = sizes.H;

  auto opts = grad_output.options();
  Tensor grad_proj, grad_pad_proj, grad_ghh;
  std::tie(grad_proj, grad_pad_proj, grad_ghh) = aghmn::window_gru_backward_outputs(sizes, opts);
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "window_gru_backward_cpu", [&] {
    auto plan = cpu::window_gru_plan<scalar_t>(D, Q, K, N, H);
    Tensor slot_dpn = at::empty({D, Q, K, H}, opts);
    if (Q > 0) {
      std::vector<scalar_t> packed(cpu::window_gru_backward_pack_size(plan));
      cpu::window_gru_pack_backward(plan, weight_hh.data_ptr<scalar_t>(), packed.data());
      const int64_t rows = tile_rows(D * Q), tiles = (Q + rows - 1) / rows;
      at::parallel_for(0, D * tiles, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> scratch(cpu::window_gru_scratch_size(plan, rows));
        for (int64_t i = begin; i < end; ++i) {
          const int64_t d = i / tiles, q0 = (i % tiles) * rows;
          cpu::window_gru_backward_tile(
              plan, grad_output.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(),
              gates.data_ptr<scalar_t>(), grad_ghh.data_ptr<scalar_t>(),
              slot_dpn.data_ptr<scalar_t>(), d, q0, std::min(rows, Q - q0), scratch.data());
        }
      });
    }
    // Deterministic scatter: each utterance's slots, in increasing order, summed by one thread.
    std::vector<int64_t> offsets(N + 2), slots(Q * K);
    cpu::window_inverse_index(windows.data_ptr<int64_t>(), Q * K, N, offsets.data(),
                              slots.data());
    at::parallel_for(0, D * (N + 1), 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        const int64_t d = i / (N + 1), u0 = i % (N + 1);
        const int64_t u1 = std::min(N + 1, u0 + (end - i));
        cpu::window_gru_scatter(plan, grad_ghh.data_ptr<scalar_t>(),
                                slot_dpn.data_ptr<scalar_t>(), offsets.data(),
                                slots.data(), grad_proj.data_ptr<scalar_t>(),
                                grad_pad_proj.data_ptr<scalar_t>(), d, u0, u1);
        i += u1 - u0;
      }
    });
  });
  return {grad_proj, grad_pad_proj, grad_ghh};
}

}  // namespace

TORCH_LIBRARY_IMPL(aghmn_fast, CPU, m) {
  m.impl("window_gru_forward", &window_gru_forward_cpu);
  m.impl("window_gru_backward", &window_gru_backward_cpu);
}
