// CPU implementation of the AGRU ops (schemas: csrc/library.cpp, contract: docs/OPS.md). A thin
// binding: it checks the arguments (agru_checks.h), allocates the outputs, packs the recurrent
// weights once and runs batch tiles in parallel; the math is in agru_cpu.h (no torch header).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "agru/agru_checks.h"
#include "agru/agru_cpu.h"
#include "common/cpu_parallel.h"

namespace {

using aghmn::tile_rows;
using at::Tensor;
namespace cpu = aghmn::cpu;

std::tuple<Tensor, Tensor> agru_forward_cpu(const Tensor& xproj, const Tensor& attn,
                                            const Tensor& weight_hh, const Tensor& bias_hh,
                                            const Tensor& h0, bool reverse) {
  const aghmn::AgruSizes sizes = aghmn::check_agru_forward(
      xproj, attn, weight_hh, bias_hh, h0, c10::DeviceType::CPU);
  const int64_t B = sizes.B, T = sizes.T, H = sizes.H;

  Tensor output, gates;
  std::tie(output, gates) = aghmn::agru_forward_outputs(sizes, xproj.options());
  if (B == 0 || T == 0) return {output, gates};
  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "agru_forward_cpu", [&] {
    auto plan = cpu::agru_plan<scalar_t>(B, T, H, reverse);
    std::vector<scalar_t> packed(cpu::agru_forward_pack_size(plan));
    cpu::agru_pack_forward(plan, weight_hh.data_ptr<scalar_t>(),
                           bias_hh.data_ptr<scalar_t>(), packed.data());
    const int64_t rows = tile_rows(B), tiles = (B + rows - 1) / rows;
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(cpu::agru_scratch_size(plan, rows));
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b0 = i * rows;
        cpu::agru_forward_tile(
            plan, xproj.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
            h0.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), b0,
            std::min(rows, B - b0), scratch.data());
      }
    });
  });
  return {output, gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> agru_backward_cpu(
    const Tensor& grad_output, const Tensor& attn, const Tensor& weight_hh, const Tensor& h0,
    const Tensor& output, const Tensor& gates, bool reverse) {
  const aghmn::AgruSizes sizes = aghmn::check_agru_backward(
      grad_output, attn, weight_hh, h0, output, gates, c10::DeviceType::CPU);
  const int64_t B = sizes.B, T = sizes.T, H = sizes.H;

  Tensor grad_xproj, grad_attn, grad_ghh, grad_h0;
  std::tie(grad_xproj, grad_attn, grad_ghh, grad_h0) =
      aghmn::agru_backward_outputs(sizes, grad_output.options());
  if (B == 0) return {grad_xproj, grad_attn, grad_ghh, grad_h0};
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "agru_backward_cpu", [&] {
    auto plan = cpu::agru_plan<scalar_t>(B, T, H, reverse);
    std::vector<scalar_t> packed(cpu::agru_backward_pack_size(plan));
    cpu::agru_pack_backward(plan, weight_hh.data_ptr<scalar_t>(), packed.data());
    const int64_t rows = tile_rows(B), tiles = (B + rows - 1) / rows;
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(cpu::agru_scratch_size(plan, rows));
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b0 = i * rows;
        cpu::agru_backward_tile(
            plan, grad_output.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
            h0.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
            grad_xproj.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>(),
            grad_ghh.data_ptr<scalar_t>(), grad_h0.data_ptr<scalar_t>(), b0,
            std::min(rows, B - b0), scratch.data());
      }
    });
  });
  return {grad_xproj, grad_attn, grad_ghh, grad_h0};
}

}  // namespace

TORCH_LIBRARY_IMPL(aghmn_fast, CPU, m) {
  m.impl("agru_forward", &agru_forward_cpu);
  m.impl("agru_backward", &agru_backward_cpu);
}
