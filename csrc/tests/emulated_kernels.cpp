// The CUDA kernels and launchers of csrc/agru/ and csrc/window_gru/ built for the CPU SIMT
// emulator, with a C ABI for the tests (tests/test_cuda_ops.py loads it with ctypes). Not part of
// the extension: the tests compile it with the host C++ compiler, e.g.
//   g++ -std=c++20 -O2 -shared -fPIC -Icsrc csrc/tests/emulated_kernels.cpp
// Pointers are host pointers (the emulated device memory is the host's).
#define AGHMN_SIMT_EMULATION 1
#include "simt_emulator.h"
// clang-format off
#include "agru/agru_kernels.cu"
#include "window_gru/window_gru_kernels.cu"
// clang-format on

namespace {

namespace ac = aghmn::cuda;

// dtype codes of the C ABI
constexpr int kFloat32 = 0;
constexpr int kFloat64 = 1;

template <typename T>
const T* in(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T>
T* out(void* p) {
  return static_cast<T*>(p);
}

// Calls f(T{}) with T the scalar type of the dtype code.
template <class F>
int with_dtype(int dtype, F&& f) {
  if (dtype == kFloat32) return static_cast<int>(f(float{}));
  if (dtype == kFloat64) return static_cast<int>(f(double{}));
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace

extern "C" {

/// Device properties the launchers see, and the order in which ready threads run (0 identity,
/// 1 reversed, 2 shuffled with `seed`).
void emu_configure(int sm_count, int smem_optin, int smem_per_sm, int order, uint64_t seed) {
  auto& r = aghmn_emu::rt();
  r.settings = {sm_count, smem_optin, smem_per_sm, order, seed};
  r.rng.seed(seed);
  r.smem_attribute.clear();
}

/// First failure message since the last call ("" if none), then cleared.
const char* emu_take_message() {
  static std::string last;
  last = aghmn_emu::rt().message;
  aghmn_emu::rt().message.clear();
  return last.c_str();
}

/// Number of kernel launches recorded since the last emu_clear_launches.
int emu_launch_count() { return static_cast<int>(aghmn_emu::rt().launches.size()); }

/// Launch i as grid x, y, z, block x, y, z, dynamic shared bytes.
void emu_launch_record(int i, int64_t* seven) {
  const auto& l = aghmn_emu::rt().launches.at(i);
  const int64_t v[7] = {l.grid.x, l.grid.y, l.grid.z, l.block.x, l.block.y, l.block.z,
                        static_cast<int64_t>(l.smem)};
  std::copy(v, v + 7, seven);
}

void emu_clear_launches() { aghmn_emu::rt().launches.clear(); }

/// The kernel launch i ran (its name with template arguments).
const char* emu_launch_kernel(int i) { return aghmn_emu::rt().launches.at(i).kernel.c_str(); }

/// Shared-memory accesses of the plan the launchers pick for a recurrence of `gates` gate
/// blocks, `hidden` units and `rows` sequences (one direction) on the emulated device, as the
/// kernels' own index functions (common/recurrence.cuh) compute them: pattern 0, the staging
/// stores of weight_hh; 1, one step's weight_hh reads of the contraction (shared-memory
/// weights); 2, one step's state / gate-gradient vector reads of the register-resident kernels.
/// Each warp instruction writes 32 element offsets (-1: lane inactive) into `offsets` while
/// `capacity` (instructions) allows; returns the number of instructions (-1: unknown pattern,
/// -2: no plan). info = [weights (0 global, 1 shared, 2 registers), slice, throughput, ldw, ldv,
/// bytes per access, shared bytes the padded layout of the chosen configuration needs, whether
/// ldw is the padded one].
int64_t emu_smem_accesses(int pattern, int dtype, int64_t gates, int64_t hidden, int64_t rows,
                          int backward, int64_t* offsets, int64_t capacity, int64_t* info) {
  return with_dtype(dtype, [&](auto zero) -> int64_t {
    using T = decltype(zero);
    namespace d = aghmn::cuda::detail;
    d::Shape shape;
    shape.gates = static_cast<int>(gates);
    shape.rows = rows;
    shape.hidden = hidden;
    shape.steps = 4;
    shape.backward = backward != 0;
    shape.attn_grad = backward != 0 && gates == 2;
    shape.slot_index = backward == 0 && gates == 3;
    d::Plan plan;
    if (d::choose_plan<T>(shape, false, &plan) != cudaSuccess) return -2;
    const d::Geometry& g = plan.geo;
    const int H = g.hidden, G = static_cast<int>(gates), warps = plan.block.x / d::kWarp;
    const int KS = plan.throughput ? d::ThroughputConfig<T>::kSplit : d::LatencyConfig::kSplit;
    d::Plan padded;
    if (plan.throughput) {
      d::make_layout<T, d::ThroughputConfig<T>>(shape, d::WeightsIn::kShared, true, 0, &padded);
    } else {
      d::make_layout<T, d::LatencyConfig>(shape, d::WeightsIn::kShared, true, 0, &padded);
    }
    const int64_t v[8] = {static_cast<int64_t>(plan.weights), plan.slice, plan.throughput, g.ldw,
                          g.ldv, pattern == 2 ? 16 : static_cast<int64_t>(sizeof(T)),
                          static_cast<int64_t>(padded.smem), padded.geo.ldw == g.ldw};
    std::copy(v, v + 8, info);
    int64_t n = 0;
    auto emit = [&](auto&& offset_of) {  // offset_of(tid) -> element offset or -1
      for (int w = 0; w < warps; ++w) {
        if (n < capacity) {
          for (int l = 0; l < d::kWarp; ++l) offsets[n * d::kWarp + l] = offset_of(w * d::kWarp + l);
        }
        ++n;
      }
    };
    auto split_of = [&](int tid) {
      return KS == 4 ? d::lane_split<4>(tid) : d::lane_split<2>(tid);
    };
    auto unit_of = [&](int tid) { return KS == 4 ? d::lane_unit<4>(tid) : d::lane_unit<2>(tid); };
    if (pattern == 0) {
      if (plan.weights != d::WeightsIn::kShared) return 0;
      const int rows_w = G * H;
      for (int it = 0; it * warps < rows_w; ++it) {
        for (int kt = 0; kt * d::kWarp < H; ++kt) {
          emit([&](int tid) -> int64_t {
            const int r = d::staged_row(tid / d::kWarp, warps, it);
            const int k = d::staged_column(tid % d::kWarp, kt);
            return r < rows_w && k < H ? d::staged_weight_offset(r, k, g.ldw) : -1;
          });
        }
      }
      return n;
    }
    if (pattern == 1) {
      if (plan.weights != d::WeightsIn::kShared) return 0;
      const int len = backward ? G * H : H, outputs = backward ? 1 : G;
      for (int pass = 0; pass < g.passes; ++pass) {
        for (int it = 0; it * KS < len; ++it) {
          for (int o = 0; o < outputs; ++o) {
            emit([&](int tid) -> int64_t {
              const int j = pass * g.units_per_pass + unit_of(tid), i = split_of(tid) + KS * it;
              if (j >= H || i >= len) return -1;
              return backward ? d::staged_weight_offset(i, j, g.ldw)
                              : d::staged_weight_offset(j + o * H, i, g.ldw);
            });
          }
        }
      }
      return n;
    }
    if (pattern == 2) {
      if (plan.weights != d::WeightsIn::kRegisters) return 0;
      constexpr int V = static_cast<int>(16 / sizeof(T));
      for (int o = 0; o < (backward ? G : 1); ++o) {
        for (int q = 0; q < plan.slice / V; ++q) {
          emit([&](int tid) -> int64_t {
            if (unit_of(tid) >= H) return -1;
            return o * g.ldv + d::register_slice_index<T, d::LatencyConfig::kSplit>(split_of(tid), q);
          });
        }
      }
      return n;
    }
    return -1;
  });
}

int emu_agru_forward(int dtype, const void* xproj, const void* attn, const void* weight_hh,
                     const void* bias_hh, const void* h0, void* output, void* gates, int64_t batch,
                     int64_t steps, int64_t hidden, int reverse) {
  return with_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    ac::AgruForwardParams<T> p;
    p.xproj = in<T>(xproj);
    p.attn = in<T>(attn);
    p.weight_hh = in<T>(weight_hh);
    p.bias_hh = in<T>(bias_hh);
    p.h0 = in<T>(h0);
    p.output = out<T>(output);
    p.gates = out<T>(gates);
    p.batch = batch;
    p.steps = steps;
    p.hidden = hidden;
    p.reverse = reverse != 0;
    return ac::agru_forward(p, nullptr);
  });
}

int emu_agru_backward(int dtype, const void* grad_output, const void* attn, const void* weight_hh,
                      const void* h0, const void* output, const void* gates, void* grad_xproj,
                      void* grad_attn, void* grad_ghh, void* grad_h0, int64_t batch, int64_t steps,
                      int64_t hidden, int reverse) {
  return with_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    ac::AgruBackwardParams<T> p;
    p.grad_output = in<T>(grad_output);
    p.attn = in<T>(attn);
    p.weight_hh = in<T>(weight_hh);
    p.h0 = in<T>(h0);
    p.output = in<T>(output);
    p.gates = in<T>(gates);
    p.grad_xproj = out<T>(grad_xproj);
    p.grad_attn = out<T>(grad_attn);
    p.grad_ghh = out<T>(grad_ghh);
    p.grad_h0 = out<T>(grad_h0);
    p.batch = batch;
    p.steps = steps;
    p.hidden = hidden;
    p.reverse = reverse != 0;
    return ac::agru_backward(p, nullptr);
  });
}

int emu_window_gru_forward(int dtype, const void* proj, const void* pad_proj,
                           const void* weight_hh, const void* bias_hh, const int64_t* windows,
                           void* output, void* gates, int64_t directions, int64_t num_utterances,
                           int64_t num_windows, int64_t window, int64_t hidden) {
  return with_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    ac::WindowGruForwardParams<T> p;
    p.proj = in<T>(proj);
    p.pad_proj = in<T>(pad_proj);
    p.weight_hh = in<T>(weight_hh);
    p.bias_hh = in<T>(bias_hh);
    p.windows = windows;
    p.output = out<T>(output);
    p.gates = out<T>(gates);
    p.directions = directions;
    p.num_utterances = num_utterances;
    p.num_windows = num_windows;
    p.window = window;
    p.hidden = hidden;
    return ac::window_gru_forward(p, nullptr);
  });
}

int64_t emu_window_gru_backward_workspace_bytes(int dtype, int64_t directions,
                                                int64_t num_utterances, int64_t num_windows,
                                                int64_t window, int64_t hidden) {
  if (dtype == kFloat32)
    return static_cast<int64_t>(ac::window_gru_backward_workspace_bytes<float>(
        directions, num_utterances, num_windows, window, hidden));
  return static_cast<int64_t>(ac::window_gru_backward_workspace_bytes<double>(
      directions, num_utterances, num_windows, window, hidden));
}

int emu_window_gru_backward(int dtype, const void* grad_output, const void* weight_hh,
                            const int64_t* windows, const void* output, const void* gates,
                            void* grad_proj, void* grad_pad_proj, void* grad_ghh, void* workspace,
                            int64_t workspace_bytes, int64_t directions, int64_t num_utterances,
                            int64_t num_windows, int64_t window, int64_t hidden) {
  return with_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    ac::WindowGruBackwardParams<T> p;
    p.grad_output = in<T>(grad_output);
    p.weight_hh = in<T>(weight_hh);
    p.windows = windows;
    p.output = in<T>(output);
    p.gates = in<T>(gates);
    p.grad_proj = out<T>(grad_proj);
    p.grad_pad_proj = out<T>(grad_pad_proj);
    p.grad_ghh = out<T>(grad_ghh);
    p.workspace = workspace;
    p.workspace_bytes = static_cast<size_t>(workspace_bytes);
    p.directions = directions;
    p.num_utterances = num_utterances;
    p.num_windows = num_windows;
    p.window = window;
    p.hidden = hidden;
    return ac::window_gru_backward(p, nullptr);
  });
}

}  // extern "C"
