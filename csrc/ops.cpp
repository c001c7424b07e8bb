// The thin PyTorch binding of the fused kernels: op schemas and CPU implementations.
// Kernel math lives in csrc/include/aghmn/*.h, which needs no torch header. Contracts of the four
// ops: docs/OPS.md. Each op checks its inputs (message names the argument), allocates outputs,
// packs the recurrent weights once, and runs batch tiles in parallel with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "aghmn/agru_cpu.h"
#include "aghmn/window_gru_cpu.h"

namespace {

using at::Tensor;

// ---- input checks -------------------------------------------------------------------------

void check_float(const Tensor& t, const char* op, const char* name, const Tensor& like) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but expected ", like.scalar_type(), " (the dtype of the first input)");
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(),
              " but the first input is on ", like.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check_shape(const Tensor& t, const char* op, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

void check_first(const Tensor& t, const char* op, const char* name, int64_t dim) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64 on the CPU, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check_windows(const Tensor& windows, const char* op, const Tensor& like, int64_t N) {
  TORCH_CHECK(windows.scalar_type() == at::kLong, op, ": windows must be int64, got ",
              windows.scalar_type());
  TORCH_CHECK(windows.device() == like.device(), op, ": windows is on ", windows.device(),
              " but the first input is on ", like.device());
  TORCH_CHECK(windows.dim() == 2, op, ": windows must be 2-D [Q, K], got shape ",
              windows.sizes());
  TORCH_CHECK(windows.is_contiguous(), op, ": windows must be contiguous");
  const int64_t* w = windows.data_ptr<int64_t>();
  for (int64_t i = 0, n = windows.numel(); i < n; ++i)
    TORCH_CHECK(w[i] >= -1 && w[i] < N, op, ": windows holds index ", w[i], " at flat position ",
                i, ", outside [-1, ", N, ") (", N, " utterances)");
}

// Rows per batch tile: enough tiles for every thread, at most kMaxTile rows so that a tile's
// per-step state stays in L1 while the packed weights stream from L2. (at::parallel_for is a
// header template: it only runs tiles on several threads when this file is compiled with
// -fopenmp; otherwise it runs them all on the calling thread. Results do not depend on it:
// every tile computes its rows with the same per-element summation order.)
constexpr int64_t kMaxTile = 32;

int64_t tile_rows(int64_t batch) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return std::clamp<int64_t>((batch + threads - 1) / threads, 1, kMaxTile);
}

// ---- AGRU ---------------------------------------------------------------------------------

std::tuple<Tensor, Tensor> agru_forward_cpu(const Tensor& xproj, const Tensor& attn,
                                            const Tensor& weight_hh, const Tensor& bias_hh,
                                            const Tensor& h0, bool reverse) {
  constexpr const char* op = "agru_forward";
  check_first(xproj, op, "xproj", 3);
  check_float(weight_hh, op, "weight_hh", xproj);
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == 2 * weight_hh.size(1) &&
                  weight_hh.size(1) > 0,
              op, ": weight_hh must have shape [2H, H], got ", weight_hh.sizes());
  const int64_t B = xproj.size(0), T = xproj.size(1), H = weight_hh.size(1);
  check_shape(xproj, op, "xproj", {B, T, 2 * H});
  check_float(attn, op, "attn", xproj);
  check_shape(attn, op, "attn", {B, T});
  check_float(bias_hh, op, "bias_hh", xproj);
  check_shape(bias_hh, op, "bias_hh", {2 * H});
  check_float(h0, op, "h0", xproj);
  check_shape(h0, op, "h0", {B, H});

  Tensor output = at::empty({B, T, H}, xproj.options());
  Tensor gates = at::empty({B, T, 3 * H}, xproj.options());
  if (B == 0 || T == 0) return {output, gates};
  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "agru_forward_cpu", [&] {
    auto plan = aghmn::cpu::agru_plan<scalar_t>(B, T, H, reverse);
    std::vector<scalar_t> packed(aghmn::cpu::agru_forward_pack_size(plan));
    aghmn::cpu::agru_pack_forward(plan, weight_hh.data_ptr<scalar_t>(),
                                  bias_hh.data_ptr<scalar_t>(), packed.data());
    const int64_t rows = tile_rows(B), tiles = (B + rows - 1) / rows;
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(aghmn::cpu::agru_scratch_size(plan, rows));
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b0 = i * rows;
        aghmn::cpu::agru_forward_tile(
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
  constexpr const char* op = "agru_backward";
  check_first(grad_output, op, "grad_output", 3);
  check_float(weight_hh, op, "weight_hh", grad_output);
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == 2 * weight_hh.size(1) &&
                  weight_hh.size(1) > 0,
              op, ": weight_hh must have shape [2H, H], got ", weight_hh.sizes());
  const int64_t B = grad_output.size(0), T = grad_output.size(1), H = weight_hh.size(1);
  check_shape(grad_output, op, "grad_output", {B, T, H});
  check_float(attn, op, "attn", grad_output);
  check_shape(attn, op, "attn", {B, T});
  check_float(h0, op, "h0", grad_output);
  check_shape(h0, op, "h0", {B, H});
  check_float(output, op, "output", grad_output);
  check_shape(output, op, "output", {B, T, H});
  check_float(gates, op, "gates", grad_output);
  check_shape(gates, op, "gates", {B, T, 3 * H});

  auto opts = grad_output.options();
  Tensor grad_xproj = at::empty({B, T, 2 * H}, opts);
  Tensor grad_attn = at::empty({B, T}, opts);
  Tensor grad_ghh = at::empty({B, T, 2 * H}, opts);
  Tensor grad_h0 = at::empty({B, H}, opts);
  if (B == 0) return {grad_xproj, grad_attn, grad_ghh, grad_h0};
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "agru_backward_cpu", [&] {
    auto plan = aghmn::cpu::agru_plan<scalar_t>(B, T, H, reverse);
    std::vector<scalar_t> packed(aghmn::cpu::agru_backward_pack_size(plan));
    aghmn::cpu::agru_pack_backward(plan, weight_hh.data_ptr<scalar_t>(), packed.data());
    const int64_t rows = tile_rows(B), tiles = (B + rows - 1) / rows;
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(aghmn::cpu::agru_scratch_size(plan, rows));
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b0 = i * rows;
        aghmn::cpu::agru_backward_tile(
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

// ---- window GRU -----------------------------------------------------------------------------

void check_window_weights(const char* op, const Tensor& like, const Tensor& weight_hh,
                          int64_t D, int64_t H) {
  check_float(weight_hh, op, "weight_hh", like);
  check_shape(weight_hh, op, "weight_hh", {D, 3 * H, H});
}

std::tuple<Tensor, Tensor> window_gru_forward_cpu(const Tensor& proj, const Tensor& pad_proj,
                                                  const Tensor& weight_hh, const Tensor& bias_hh,
                                                  const Tensor& windows) {
  constexpr const char* op = "window_gru_forward";
  check_first(proj, op, "proj", 3);
  const int64_t D = proj.size(0), N = proj.size(1);
  TORCH_CHECK(D == 1 || D == 2, op, ": proj must be [D, N, 3H] with D = 1 or 2 directions, got ",
              proj.sizes());
  TORCH_CHECK(proj.size(2) % 3 == 0 && proj.size(2) > 0, op,
              ": proj must be [D, N, 3H] with H > 0, got ", proj.sizes());
  const int64_t H = proj.size(2) / 3;
  check_float(pad_proj, op, "pad_proj", proj);
  check_shape(pad_proj, op, "pad_proj", {D, 3 * H});
  check_window_weights(op, proj, weight_hh, D, H);
  check_float(bias_hh, op, "bias_hh", proj);
  check_shape(bias_hh, op, "bias_hh", {D, 3 * H});
  check_windows(windows, op, proj, N);
  const int64_t Q = windows.size(0), K = windows.size(1);

  Tensor output = at::empty({D, Q, K, H}, proj.options());
  Tensor gates = at::empty({D, Q, K, 4 * H}, proj.options());
  if (Q == 0 || K == 0) return {output, gates};
  AT_DISPATCH_FLOATING_TYPES(proj.scalar_type(), "window_gru_forward_cpu", [&] {
    auto plan = aghmn::cpu::window_gru_plan<scalar_t>(D, Q, K, N, H);
    std::vector<scalar_t> packed(aghmn::cpu::window_gru_forward_pack_size(plan));
    aghmn::cpu::window_gru_pack_forward(plan, weight_hh.data_ptr<scalar_t>(),
                                        bias_hh.data_ptr<scalar_t>(), packed.data());
    const int64_t rows = tile_rows(D * Q), tiles = (Q + rows - 1) / rows;
    at::parallel_for(0, D * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(aghmn::cpu::window_gru_scratch_size(plan, rows));
      for (int64_t i = begin; i < end; ++i) {
        const int64_t d = i / tiles, q0 = (i % tiles) * rows;
        aghmn::cpu::window_gru_forward_tile(
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
  constexpr const char* op = "window_gru_backward";
  check_first(grad_output, op, "grad_output", 4);
  const int64_t D = grad_output.size(0), Q = grad_output.size(1), K = grad_output.size(2),
                H = grad_output.size(3), N = num_utterances;
  TORCH_CHECK(D == 1 || D == 2, op, ": grad_output must be [D, Q, K, H] with D = 1 or 2, got ",
              grad_output.sizes());
  TORCH_CHECK(H > 0, op, ": grad_output must be [D, Q, K, H] with H > 0, got ",
              grad_output.sizes());
  TORCH_CHECK(N >= 0, op, ": num_utterances must be >= 0, got ", N);
  check_window_weights(op, grad_output, weight_hh, D, H);
  check_windows(windows, op, grad_output, N);
  check_shape(windows, op, "windows", {Q, K});
  check_float(output, op, "output", grad_output);
  check_shape(output, op, "output", {D, Q, K, H});
  check_float(gates, op, "gates", grad_output);
  check_shape(gates, op, "gates", {D, Q, K, 4 * H});

  auto opts = grad_output.options();
  Tensor grad_proj = at::empty({D, N, 3 * H}, opts);
  Tensor grad_pad_proj = at::empty({D, 3 * H}, opts);
  Tensor grad_ghh = at::empty({D, Q, K, 3 * H}, opts);
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "window_gru_backward_cpu", [&] {
    auto plan = aghmn::cpu::window_gru_plan<scalar_t>(D, Q, K, N, H);
    Tensor slot_dpn = at::empty({D, Q, K, H}, opts);
    if (Q > 0) {
      std::vector<scalar_t> packed(aghmn::cpu::window_gru_backward_pack_size(plan));
      aghmn::cpu::window_gru_pack_backward(plan, weight_hh.data_ptr<scalar_t>(), packed.data());
      const int64_t rows = tile_rows(D * Q), tiles = (Q + rows - 1) / rows;
      at::parallel_for(0, D * tiles, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> scratch(aghmn::cpu::window_gru_scratch_size(plan, rows));
        for (int64_t i = begin; i < end; ++i) {
          const int64_t d = i / tiles, q0 = (i % tiles) * rows;
          aghmn::cpu::window_gru_backward_tile(
              plan, grad_output.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(),
              gates.data_ptr<scalar_t>(), grad_ghh.data_ptr<scalar_t>(),
              slot_dpn.data_ptr<scalar_t>(), d, q0, std::min(rows, Q - q0), scratch.data());
        }
      });
    }
    // Deterministic scatter: each utterance's slots, in increasing order, summed by one thread.
    std::vector<int64_t> offsets(N + 2), slots(Q * K);
    aghmn::cpu::window_inverse_index(windows.data_ptr<int64_t>(), Q * K, N, offsets.data(),
                                     slots.data());
    at::parallel_for(0, D * (N + 1), 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        const int64_t d = i / (N + 1), u0 = i % (N + 1);
        const int64_t u1 = std::min(N + 1, u0 + (end - i));
        aghmn::cpu::window_gru_scatter(plan, grad_ghh.data_ptr<scalar_t>(),
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

TORCH_LIBRARY(aghmn_fast, m) {
  m.def(
      "agru_forward(Tensor xproj, Tensor attn, Tensor weight_hh, Tensor bias_hh, Tensor h0, "
      "bool reverse) -> (Tensor output, Tensor gates)");
  m.def(
      "agru_backward(Tensor grad_output, Tensor attn, Tensor weight_hh, Tensor h0, "
      "Tensor output, Tensor gates, bool reverse) -> (Tensor grad_xproj, Tensor grad_attn, "
      "Tensor grad_ghh, Tensor grad_h0)");
  m.def(
      "window_gru_forward(Tensor proj, Tensor pad_proj, Tensor weight_hh, Tensor bias_hh, "
      "Tensor windows) -> (Tensor output, Tensor gates)");
  m.def(
      "window_gru_backward(Tensor grad_output, Tensor weight_hh, Tensor windows, Tensor output, "
      "Tensor gates, int num_utterances) -> (Tensor grad_proj, Tensor grad_pad_proj, "
      "Tensor grad_ghh)");
}

TORCH_LIBRARY_IMPL(aghmn_fast, CPU, m) {
  m.impl("agru_forward", &agru_forward_cpu);
  m.impl("agru_backward", &agru_backward_cpu);
  m.impl("window_gru_forward", &window_gru_forward_cpu);
  m.impl("window_gru_backward", &window_gru_backward_cpu);
}
