// The SIMT emulator build's part that no op owns: the emulated device's settings, the launch
// record and the shared-memory access patterns of the recurrence plans (common/), with a C ABI
// for the tests. Each op's CUDA kernels and their entry points are in csrc/<op>/<op>_emulated.cpp
// (the ABI: emulated_abi.h); tests/cuda_emulator.py compiles this file with all of those (found by
// glob) into one library with the host C++ compiler, e.g.
//   g++ -std=c++20 -O2 -shared -fPIC -Icsrc csrc/tests/emulated_kernels.cpp csrc/*/*_emulated.cpp
// Not part of the extension.
#define AGHMN_SIMT_EMULATION 1
#include "simt_emulator.h"
// clang-format off
#include "common/recurrence.cuh"
#include "emulated_abi.h"
// clang-format on

extern "C" {

/// Dimensions per tensor in the shapes array of every op entry point (emulated_abi.h).
int emu_max_dims() { return ::aghmn_emu::kEmuMaxDims; }

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
/// blocks, `hidden` units and `rows` sequences (one direction) on the emulated device, with the
/// recurrence cell's options `attn_grad` (the backward reduces an attention gradient) and
/// `slot_index` (the forward stages slot indices) (launch_plan.h: Shape), as the
/// kernels' own index functions (common/recurrence.cuh) compute them: pattern 0, the staging
/// stores of weight_hh; 1, one step's weight_hh reads of the contraction (shared-memory
/// weights); 2, one step's state / gate-gradient vector reads of the register-resident kernels.
/// Each warp instruction writes 32 element offsets (-1: lane inactive) into `offsets` while
/// `capacity` (instructions) allows; returns the number of instructions (-1: unknown pattern,
/// -2: no plan). info = [weights (0 global, 1 shared, 2 registers), slice, throughput, ldw, ldv,
/// bytes per access, shared bytes the padded layout of the chosen configuration needs, whether
/// ldw is the padded one].
int64_t emu_smem_accesses(int pattern, int dtype, int64_t gates, int64_t hidden, int64_t rows,
                          int backward, int attn_grad, int slot_index, int64_t* offsets,
                          int64_t capacity, int64_t* info) {
  return aghmn_emu::Call{dtype, nullptr, nullptr, nullptr}.with_dtype([&](auto zero) -> int64_t {
    using T = decltype(zero);
    namespace d = aghmn::cuda::detail;
    d::Shape shape;
    shape.gates = static_cast<int>(gates);
    shape.rows = rows;
    shape.hidden = hidden;
    shape.steps = 4;
    shape.backward = backward != 0;
    shape.attn_grad = attn_grad != 0;
    shape.slot_index = slot_index != 0;
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

}  // extern "C"
