// The launch geometry of the recurrence kernels (common/recurrence.cuh) and its planning on the
// host: the tile configurations, where weight_hh lives (WeightsIn), the sizes and shared-memory
// offsets a kernel reads (Geometry), and choose_plan, which picks a configuration and placement
// for a launch from the device's limits. Host code only (plus the types the kernels share): the
// kernels themselves and their launch calls are in recurrence.cuh.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/cuda_kernels.h"

namespace aghmn {
namespace cuda {
namespace detail {

constexpr int kWarp = 32;
constexpr int kDefaultSmem = 48 * 1024;  // above this a kernel needs the opt-in attribute
constexpr int64_t kMaxHidden = 1 << 16;  // keeps every in-kernel int product in range

/// Tile shape of a kernel instantiation: kTile sequences per CTA, the contraction of each
/// hidden unit split over kSplit lanes, at most kMaxThreads threads.
template <int Tile, int Split, int MaxThreads>
struct TileConfig {
  static constexpr int kTile = Tile;
  static constexpr int kSplit = Split;
  static constexpr int kMaxThreads = MaxThreads;
  static constexpr int kOwned = (Tile + Split - 1) / Split;  // tile rows each lane finishes
  static_assert(Split == 1 || Split == 2 || Split == 4 || Split == 8, "split within a warp");
};

/// Where a kernel keeps weight_hh during the time loop.
enum class WeightsIn : int {
  kGlobal = 0,     ///< read from global memory (L1/L2) every step: when nothing else fits
  kShared = 1,     ///< staged once into shared memory, [rows][ldw] row-major
  kRegisters = 2,  ///< each lane holds its slice in registers (one sequence per CTA, one pass)
};

/// Small batches: one sequence per CTA and 4 lanes per unit, to shorten the per-step chain.
using LatencyConfig = TileConfig<1, 4, 512>;
/// Large batches: several sequences per CTA share every weight load from shared memory.
template <typename T>
using ThroughputConfig = TileConfig<(sizeof(T) == 4 ? 8 : 4), 2, 256>;

/// Sizes and shared-memory offsets a kernel needs, computed on the host (see make_layout).
struct Geometry {
  int hidden = 0;          // H
  int steps = 0;           // T (AGRU) or K (window GRU)
  int units_per_pass = 0;  // hidden units covered by the block at once
  int passes = 0;          // ceil(H / units_per_pass)
  int ldw = 0;             // leading dimension of the weight the kernel reads (staged or global)
  int ldv = 0;             // per-gate stride of the state / gate-gradient vectors in shared memory
  int64_t rows = 0;        // sequences: B or Q
  unsigned off_w = 0, off_bias = 0, off_vec = 0, off_carry = 0, off_part = 0, off_idx = 0;
};

// ---- launch plans (host) ---------------------------------------------------------------------

/// What a recurrence launch has to cover (recurrence.cuh's launch_shape makes it from a cell).
struct Shape {
  int gates = 0;  // gate blocks of weight_hh (the cell's kGates, any >= 1)
  int64_t rows = 0, hidden = 0, steps = 0;
  int directions = 1;
  bool backward = false;
  bool slot_index = false;  // forward stages per-step slot indices (the cell's kSlotIndex)
  bool attn_grad = false;   // backward reduces an attention gradient (the cell's kAttnGrad)
};

struct Plan {
  Geometry geo;
  dim3 grid, block;
  size_t smem = 0;
  WeightsIn weights = WeightsIn::kGlobal;
  int slice = 0;  // register slice length per gate block (kRegisters)
  bool throughput = false;
};

struct DeviceLimits {
  int sms = 1, smem_optin = kDefaultSmem, smem_per_sm = kDefaultSmem;
};

inline cudaError_t query_limits(DeviceLimits* d, int* device) {
  cudaError_t e = cudaGetDevice(device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&d->sms, cudaDevAttrMultiProcessorCount, *device);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&d->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, *device);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&d->smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor,
                               *device);
  return e;
}

/// Smallest leading dimension >= cols with ld / step odd. When the lanes of one wavefront read
/// the elements (row r0 + a, column c0 + b) for a < lanes / step and b < step, their banks
/// a * ld + b (mod 32 words, or mod 16 doubles a half warp) are all distinct exactly when
/// ld / step is odd. The forward reads the staged weight_hh with step = kSplit (a unit's lanes
/// along its row, units on consecutive rows), the backward with rows and columns swapped:
/// step = lanes per wavefront / kSplit (units on consecutive columns, lanes down them).
inline int64_t padded_ld(int64_t cols, int64_t step) {
  int64_t ld = (cols + step - 1) / step * step;
  if ((ld / step) % 2 == 0) ld += step;
  return ld;
}

/// Lanes one shared-memory wavefront serves for elements of `elem_bytes` (128 bytes a wavefront).
inline int64_t lanes_per_wavefront(size_t elem_bytes) { return elem_bytes >= 8 ? 16 : 32; }

/// The staged weight's leading dimension for configuration C (see padded_ld).
template <typename T, class C>
int64_t staged_ld(int64_t H, bool backward) {
  const int64_t KS = C::kSplit, phase = lanes_per_wavefront(sizeof(T));
  if (!backward) return padded_ld(H, KS);
  return KS == 1 ? H : padded_ld(H, phase / KS);  // one lane per unit: no row ever repeats
}

/// Geometry and shared-memory layout of configuration C with weight_hh in `where` (register
/// slice `slice`); `pad` pads the staged weight's rows against bank conflicts (skipped when only
/// the unpadded tile fits).
template <typename T, class C>
void make_layout(const Shape& s, WeightsIn where, bool pad, int slice, Plan* plan) {
  const int64_t H = s.hidden, G = s.gates, TB = C::kTile, KS = C::kSplit;
  const int64_t unit_step = kWarp / KS;
  const int64_t cap = C::kMaxThreads / KS;
  const int64_t rounded = (H + unit_step - 1) / unit_step * unit_step;
  const int64_t upp = rounded < cap ? rounded : cap;
  const int64_t threads = upp * KS;
  Geometry& g = plan->geo;
  g.hidden = static_cast<int>(H);
  g.steps = static_cast<int>(s.steps);
  g.units_per_pass = static_cast<int>(upp);
  g.passes = static_cast<int>((H + upp - 1) / upp);
  g.rows = s.rows;
  // Register slices read whole 16-byte pieces up to KS * slice: the vectors are zero-padded.
  const int64_t ldv = where == WeightsIn::kRegisters ? KS * slice : H;
  g.ldv = static_cast<int>(ldv);
  const int64_t ld = where != WeightsIn::kShared ? H : pad ? staged_ld<T, C>(H, s.backward) : H;
  g.ldw = static_cast<int>(ld);
  size_t off = 0;
  auto region = [&off](int64_t bytes) {
    const size_t at = off;
    off = (off + static_cast<size_t>(bytes) + 15) & ~static_cast<size_t>(15);
    return static_cast<unsigned>(at);
  };
  const int64_t e = sizeof(T);
  g.off_w = region(where == WeightsIn::kShared ? G * H * ld * e : 0);
  if (!s.backward) {
    g.off_bias = region(G * H * e);
    g.off_vec = region(2 * ldv * TB * e);
    g.off_idx = region(s.slot_index ? TB * s.steps * static_cast<int64_t>(sizeof(int)) : 0);
    g.off_carry = g.off_part = 0;
  } else {
    g.off_vec = region(2 * G * ldv * TB * e);
    g.off_carry = region(H * TB * e);
    g.off_part = region(s.attn_grad ? 2 * TB * (threads / kWarp) * e : 0);
    g.off_bias = g.off_idx = 0;
  }
  plan->smem = off;
  plan->weights = where;
  plan->slice = where == WeightsIn::kRegisters ? slice : 0;
  plan->throughput = TB > 1;
  plan->grid = dim3(static_cast<unsigned>((s.rows + TB - 1) / TB),
                    static_cast<unsigned>(s.directions));
  plan->block = dim3(static_cast<unsigned>(threads));
}

/// A plan of configuration C that fits the device: weights in shared memory if possible
/// (padded, else unpadded), else read from global memory.
template <typename T, class C>
bool fit(const Shape& s, const DeviceLimits& d, Plan* plan) {
  const WeightsIn where[] = {WeightsIn::kShared, WeightsIn::kShared, WeightsIn::kGlobal};
  const bool pad[] = {true, false, false};
  for (int i = 0; i < 3; ++i) {
    make_layout<T, C>(s, where[i], pad[i], 0, plan);
    if (plan->smem <= static_cast<size_t>(d.smem_optin)) return true;
  }
  return false;
}

inline int64_t resident_blocks(const Plan& p, const DeviceLimits& d) {
  const int64_t by_smem = d.smem_per_sm / static_cast<int64_t>(p.smem + 1024);
  const int64_t by_threads = 2048 / static_cast<int64_t>(p.block.x);
  const int64_t n = by_smem < by_threads ? by_smem : by_threads;
  return n > 0 ? n : 1;
}

// ---- register-resident variants --------------------------------------------------------------
// Slice lengths (per gate block and lane, latency configuration: 4 lanes per unit) that are
// instantiated: H <= 64 and H <= 128. A variant exists where its weights take at most 64 of the
// 128 registers a thread of a 512-thread CTA may use (ptxas then reports no spills; checked by
// tests/test_cuda_build.py): float AGRU up to H = 128, double AGRU and float window GRU up to
// H = 64. Other shapes keep the shared-memory kernels.
constexpr int kRegisterSlices[] = {16, 32};
constexpr int kRegisterWeightBytes = 64 * 4;

template <typename T>
constexpr bool has_register_variant(int gates, int slice) {
  return gates * slice * static_cast<int>(sizeof(T)) <= kRegisterWeightBytes;
}

/// The smallest instantiated register slice that covers `hidden` units (0: none).
template <typename T>
int register_slice_for(int gates, int64_t hidden) {
  for (int slice : kRegisterSlices) {
    if (hidden <= LatencyConfig::kSplit * slice && has_register_variant<T>(gates, slice))
      return slice;
  }
  return 0;
}

/// Picks the configuration for a launch. The latency configuration wins while all its CTAs
/// run at once; beyond that the throughput one, whose CTAs share each weight load over several
/// sequences, needs fewer waves. Within the latency configuration, weight_hh goes to registers
/// where a variant exists for (T, gates, H) and there are at most as many CTAs as SMs (a
/// register-resident CTA may need a whole SM's register file). cudaErrorNotSupported when nothing fits in shared memory; with
/// `require_backward`, also when the matching backward could not run (so that autograd never
/// meets an unsupported backward after a successful forward).
template <typename T>
cudaError_t choose_plan(const Shape& s, bool require_backward, Plan* out) {
  if (s.hidden <= 0 || s.hidden > kMaxHidden || s.steps > INT32_MAX || s.rows < 0 ||
      s.directions < 1 || s.directions > 2)
    return s.hidden > kMaxHidden ? cudaErrorNotSupported : cudaErrorInvalidValue;
  if ((s.rows + LatencyConfig::kTile - 1) / LatencyConfig::kTile > INT32_MAX)
    return cudaErrorInvalidValue;
  DeviceLimits d;
  int device = 0;
  cudaError_t err = query_limits(&d, &device);
  if (err != cudaSuccess) return err;
  if (require_backward) {
    Shape b = s;
    b.backward = true;
    Plan scratch;
    if (!fit<T, LatencyConfig>(b, d, &scratch)) return cudaErrorNotSupported;
  }
  Plan lat, thr;
  const bool lat_ok = fit<T, LatencyConfig>(s, d, &lat);
  const bool thr_ok = fit<T, ThroughputConfig<T>>(s, d, &thr);
  if (!lat_ok && !thr_ok) return cudaErrorNotSupported;
  const int64_t ctas = static_cast<int64_t>(lat.grid.x) * lat.grid.y;
  const bool lat_shared = lat.weights == WeightsIn::kShared;
  const bool thr_shared = thr.weights == WeightsIn::kShared;
  const bool use_lat = !thr_ok || (lat_ok && ((lat_shared && !thr_shared) ||
                                              ctas <= d.sms * resident_blocks(lat, d)));
  *out = use_lat ? lat : thr;
  const int slice = register_slice_for<T>(s.gates, s.hidden);
  if (use_lat && slice > 0 && ctas <= d.sms) {
    Plan reg;
    make_layout<T, LatencyConfig>(s, WeightsIn::kRegisters, false, slice, &reg);
    if (reg.smem <= static_cast<size_t>(d.smem_optin)) *out = reg;
  }
  return cudaSuccess;
}

}  // namespace detail
}  // namespace cuda
}  // namespace aghmn
