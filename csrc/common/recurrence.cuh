// The persistent recurrence kernels shared by the AGRU and the window GRU, and their launch plans.
//
// One CTA runs the whole time loop of a tile of sequences (one direction): weight_hh is staged
// once into shared memory (or, when it does not fit, read from global memory / L2 every step),
// the state lives in shared memory (double-buffered, so a step needs exactly one __syncthreads),
// and each thread owns one hidden unit j for every sequence of the tile. A step's matvec splits
// its contraction over kSplit adjacent lanes, which then add their partial sums with xor
// shuffles (a fixed order, so results are bit-reproducible). The per-unit gate math comes from
// common/gate_math.h, the same code the CPU kernels run. What differs between the two recurrences
// (input layout, gate count, what is written) is a small "cell" policy class.
//
// Cost model (not measured: no GPU was available when this was written). Every step streams the
// whole weight tile through the SM's shared memory once per CTA (80 KB for the AGRU at H = 100
// fp32: ~625 cycles at 128 B/clock), plus one load of the state per contraction element, so at
// batch 1 a step costs roughly 1,000 cycles. Keeping the weights in registers instead (about 50
// per thread at H = 100, as persistent RNNs do) would roughly halve that; it is the next step if
// the latency target is missed. The tiled configuration reuses each weight load for kTile
// sequences and is bound by FMA throughput instead.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/cuda_kernels.h"
#include "common/gate_math.h"

// Cell policy methods: always inlined, so that no call ABI (and no spill around it) sits in a loop.
#define AGHMN_CELL __device__ __forceinline__ static

#if defined(AGHMN_SIMT_EMULATION)
#define AGHMN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ((void)(stream), ::aghmn_emu::launch(kernel, grid, block, smem, __VA_ARGS__))
#else
#define AGHMN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace aghmn {
namespace cuda {
namespace detail {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kDefaultSmem = 48 * 1024;  // above this a kernel needs the opt-in attribute
constexpr int64_t kMaxHidden = 1 << 16;  // keeps every in-kernel int product in range

#if defined(AGHMN_SIMT_EMULATION)
inline unsigned char* dynamic_smem() { return ::aghmn_emu::dynamic_smem(); }
#else
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char aghmn_dynamic_smem[];
  return aghmn_dynamic_smem;
}
#endif

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
  int ldw = 0;             // leading dimension of the staged weight (0: weight stays in global)
  int64_t rows = 0;        // sequences: B or Q
  unsigned off_w = 0, off_bias = 0, off_vec = 0, off_carry = 0, off_part = 0, off_idx = 0;
};

/// Gradients of one unit of one step, as the backward kernel consumes them.
template <typename T, int G>
struct UnitGrads {
  T dg[G];      // gradient of h_prev @ weight_hh^T + bias_hh, per gate block
  T dh_direct;  // the part of grad h_prev that does not go through weight_hh
  T da;         // contribution to the attention gradient (AGRU only)
};

/// Element (i, c) of the matrix a step contracts over i: shared memory or global (read-only).
template <typename T, bool kShared>
struct MatView {
  const T* base;
  int64_t si, sc;
  __device__ __forceinline__ T at(int i, int c) const {
    const T* p = base + i * si + c * sc;
    if constexpr (kShared) {
      return *p;
    } else {
      return __ldg(p);
    }
  }
};

template <typename T>
__device__ __forceinline__ T shfl_xor(T v, int lane_mask) {
  return __shfl_xor_sync(kFullMask, v, lane_mask);
}

/// Loads N consecutive values from shared memory in 16-byte pieces where the layout allows it.
template <typename T, int N>
__device__ __forceinline__ void load_tile(const T* p, T (&v)[N]) {
  constexpr int kVec = (N * sizeof(T)) % 16 == 0 ? static_cast<int>(16 / sizeof(T)) : 1;
  struct alignas(kVec * sizeof(T)) Piece {
    T x[kVec];
  };
#pragma unroll
  for (int b = 0; b < N; b += kVec) {
    const Piece q = *reinterpret_cast<const Piece*>(p + b);
#pragma unroll
    for (int e = 0; e < kVec; ++e) v[b + e] = q.x[e];
  }
}

/// v[idx] for a runtime idx without dynamic register indexing (which would go to local memory).
template <typename T, int N>
__device__ __forceinline__ T pick(const T (&v)[N], int idx) {
  T out = v[0];
#pragma unroll
  for (int b = 1; b < N; ++b) out = (b == idx) ? v[b] : out;
  return out;
}

/// acc[g][b] += sum over i = split, split + KS, ... < len of vec[i * TB + b] * M(i, col + g * col_step).
template <typename T, int TB, int KS, int NG, bool kShared>
__device__ __forceinline__ void contract(const MatView<T, kShared>& m, const T* vec, int len,
                                         int split, int col, int col_step, T (&acc)[NG][TB]) {
#pragma unroll 4
  for (int i = split; i < len; i += KS) {
    T v[TB];
    load_tile(vec + i * TB, v);
#pragma unroll
    for (int g = 0; g < NG; ++g) {
      const T w = m.at(i, col + g * col_step);
#pragma unroll
      for (int b = 0; b < TB; ++b) acc[g][b] += w * v[b];
    }
  }
}

/// Adds the partial sums of the KS lanes of a unit; every one of them ends with the total.
template <typename T, int TB, int KS, int NG>
__device__ __forceinline__ void reduce_split(T (&acc)[NG][TB]) {
#pragma unroll
  for (int off = KS / 2; off > 0; off >>= 1) {
#pragma unroll
    for (int g = 0; g < NG; ++g) {
#pragma unroll
      for (int b = 0; b < TB; ++b) acc[g][b] += shfl_xor(acc[g][b], off);
    }
  }
}

template <typename T, int NG, int TB>
__device__ __forceinline__ void zero(T (&acc)[NG][TB]) {
#pragma unroll
  for (int g = 0; g < NG; ++g) {
#pragma unroll
    for (int b = 0; b < TB; ++b) acc[g][b] = T(0);
  }
}

/// Calls f(m, bb, row) for each tile row this lane finishes: rows bb = m * kSplit + split that
/// exist, for an active unit. m is a compile-time index once unrolled, so per-row register
/// arrays indexed by it stay in registers.
template <class C, class F>
__device__ __forceinline__ void for_owned_rows(bool active, int split, int64_t row0,
                                               int64_t rows, F&& f) {
#pragma unroll
  for (int m = 0; m < C::kOwned; ++m) {
    const int bb = m * C::kSplit + split;
    const int64_t row = row0 + bb;
    if (active && bb < C::kTile && row < rows) f(m, bb, row);
  }
}

/// Step order of an AGRU call (one direction; `reverse` runs t = T-1 .. 0).
struct ReversibleSteps {
  template <class Args>
  AGHMN_CELL int time_of(const Args& p, int, int i, int steps) {
    return p.reverse ? steps - 1 - i : i;
  }
};

/// Step order of the window GRU: direction 1 runs k = K-1 .. 0.
struct DirectionSteps {
  template <class Args>
  AGHMN_CELL int time_of(const Args&, int dir, int i, int steps) {
    return dir == 1 ? steps - 1 - i : i;
  }
};

// ---- forward ---------------------------------------------------------------------------------
// Cell interface: Scalar, Args, kGates, kSlotIndex, In, weight, bias, initial, time_of, slot,
// load (the step's inputs of one unit), finish (gate math + stores; returns the new state).
template <class Cell, class C, bool kSharedW>
__global__ void __launch_bounds__(C::kMaxThreads, 1)
    recurrence_forward(typename Cell::Args args, Geometry geo) {
  using T = typename Cell::Scalar;
  constexpr int TB = C::kTile, KS = C::kSplit, G = Cell::kGates;
  unsigned char* smem = dynamic_smem();
  const int H = geo.hidden, steps = geo.steps;
  const int dir = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * TB;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int split = tid % KS, lane_unit = tid / KS;

  const T* w = Cell::weight(args, dir);
  const T* bias = Cell::bias(args, dir);
  T* w_s = reinterpret_cast<T*>(smem + geo.off_w);  // [H][ldw]: column c = row c of weight_hh
  T* bias_s = reinterpret_cast<T*>(smem + geo.off_bias);
  T* h_s = reinterpret_cast<T*>(smem + geo.off_vec);  // [2][H][TB]
  int* idx_s = reinterpret_cast<int*>(smem + geo.off_idx);  // [TB][steps]

  if constexpr (kSharedW) {
    for (int e = tid; e < G * H * H; e += nthreads) {
      const int c = e / H, k = e - c * H;
      w_s[k * geo.ldw + c] = w[e];
    }
  }
  for (int e = tid; e < G * H; e += nthreads) bias_s[e] = bias[e];
  for (int e = tid; e < H * TB; e += nthreads) {
    const int k = e / TB, bb = e - k * TB;
    const int64_t row = row0 + bb;
    h_s[e] = row < geo.rows ? Cell::initial(args, row, k) : T(0);
    h_s[H * TB + e] = T(0);
  }
  if constexpr (Cell::kSlotIndex) {
    for (int e = tid; e < TB * steps; e += nthreads) {
      const int bb = e / steps, t = e - bb * steps;
      const int64_t row = row0 + bb;
      idx_s[e] = row < geo.rows ? Cell::slot(args, row, t) : -1;
    }
  }
  __syncthreads();

  MatView<T, kSharedW> mat;
  if constexpr (kSharedW) {
    mat = {w_s, geo.ldw, 1};
  } else {
    mat = {w, 1, H};  // weight_hh is [G*H, H]: element (k, c) is w[c * H + k]
  }

  for (int i = 0; i < steps; ++i) {
    const int t = Cell::time_of(args, dir, i, steps);
    const T* h_cur = h_s + (i & 1) * H * TB;
    T* h_next = h_s + ((i + 1) & 1) * H * TB;
    for (int pass = 0; pass < geo.passes; ++pass) {
      const int j = pass * geo.units_per_pass + lane_unit;
      const bool active = j < H;
      // The step's inputs do not depend on the state: issue their loads before the matvec.
      typename Cell::In in[C::kOwned] = {};
      for_owned_rows<C>(active, split, row0, geo.rows, [&](int m, int bb, int64_t row) {
        in[m] = Cell::load(args, geo, idx_s, dir, row, bb, t, j);
      });
      T acc[G][TB];
      zero(acc);
      if (active) contract<T, TB, KS, G>(mat, h_cur, H, split, j, H, acc);
      reduce_split<T, TB, KS, G>(acc);
      for_owned_rows<C>(active, split, row0, geo.rows, [&](int m, int bb, int64_t row) {
        T hg[G];
#pragma unroll
        for (int g = 0; g < G; ++g) hg[g] = pick(acc[g], bb) + bias_s[g * H + j];
        const T h = h_cur[j * TB + bb];
        h_next[j * TB + bb] = Cell::finish(args, geo, dir, row, t, j, in[m], hg, h);
      });
    }
    __syncthreads();
  }
}

// ---- backward --------------------------------------------------------------------------------
// Step i (in processing order, i = steps-1 .. 0) needs the carry from step i+1, which is
// dh_direct(i+1) + dg(i+1) @ weight_hh. The thread that owns unit j computes that carry entry
// and right away the unit's gate gradients of step i, so one barrier per step suffices; dg is
// double-buffered in shared memory. With kInitialGrad, one extra round (i = -1) turns the last
// carry into grad_h0. The attention gradient sum over j is reduced per warp with shuffles and
// the warps' partial sums are added in a fixed order one step later.
template <class Cell, class C, bool kSharedW>
__global__ void __launch_bounds__(C::kMaxThreads, 1)
    recurrence_backward(typename Cell::Args args, Geometry geo) {
  using T = typename Cell::Scalar;
  constexpr int TB = C::kTile, KS = C::kSplit, G = Cell::kGates;
  constexpr int kLast = Cell::kInitialGrad ? -1 : 0;
  unsigned char* smem = dynamic_smem();
  const int H = geo.hidden, GH = G * geo.hidden, steps = geo.steps;
  const int dir = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * TB;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int split = tid % KS, lane_unit = tid / KS;
  const int warps = nthreads / kWarp, warp = tid / kWarp, lane = tid % kWarp;

  const T* w = Cell::weight(args, dir);
  T* w_s = reinterpret_cast<T*>(smem + geo.off_w);      // [G*H][ldw]: weight_hh, row-major
  T* dg_s = reinterpret_cast<T*>(smem + geo.off_vec);   // [2][G*H][TB]
  T* carry_s = reinterpret_cast<T*>(smem + geo.off_carry);  // [H][TB]: dh_direct of step i+1
  T* part_s = reinterpret_cast<T*>(smem + geo.off_part);    // [2][TB][warps]

  if constexpr (kSharedW) {
    for (int e = tid; e < GH * H; e += nthreads) {
      const int r = e / H, j = e - r * H;
      w_s[r * geo.ldw + j] = w[e];
    }
  }
  for (int e = tid; e < 2 * GH * TB; e += nthreads) dg_s[e] = T(0);
  for (int e = tid; e < H * TB; e += nthreads) carry_s[e] = T(0);
  __syncthreads();

  MatView<T, kSharedW> mat;
  if constexpr (kSharedW) {
    mat = {w_s, geo.ldw, 1};
  } else {
    mat = {w, H, 1};
  }

  for (int i = steps - 1; i >= kLast; --i) {
    const T* dg_next = dg_s + ((i + 1) & 1) * GH * TB;  // written while processing step i+1
    T* dg_cur = dg_s + (i & 1) * GH * TB;
    const int t = i >= 0 ? Cell::time_of(args, dir, i, steps) : -1;
    const int t_prev = i > 0 ? Cell::time_of(args, dir, i - 1, steps) : -1;
    T da[C::kOwned];
#pragma unroll
    for (int m = 0; m < C::kOwned; ++m) da[m] = T(0);

    for (int pass = 0; pass < geo.passes; ++pass) {
      const int j = pass * geo.units_per_pass + lane_unit;
      const bool active = j < H;
      typename Cell::In in[C::kOwned] = {};
      for_owned_rows<C>(i >= 0 && active, split, row0, geo.rows, [&](int m, int, int64_t row) {
        in[m] = Cell::load(args, geo, dir, row, t, t_prev, j);
      });
      T acc[1][TB];
      zero(acc);
      if (active && i < steps - 1) contract<T, TB, KS, 1>(mat, dg_next, GH, split, j, 0, acc);
      reduce_split<T, TB, KS, 1>(acc);
      for_owned_rows<C>(active, split, row0, geo.rows, [&](int m, int bb, int64_t row) {
        const T carry = carry_s[j * TB + bb] + pick(acc[0], bb);
        if (i >= 0) {
          const UnitGrads<T, G> u = Cell::step(args, geo, dir, row, t, j, in[m], carry);
#pragma unroll
          for (int g = 0; g < G; ++g) dg_cur[(g * H + j) * TB + bb] = u.dg[g];
          carry_s[j * TB + bb] = u.dh_direct;
          da[m] += u.da;
        } else if constexpr (Cell::kInitialGrad) {
          Cell::write_initial_grad(args, row, j, carry);
        }
      });
    }

    if constexpr (Cell::kAttnGrad) {
      if (i >= 0) {
        // Lanes with the same split own the same tile rows: reduce over those lanes only.
#pragma unroll
        for (int m = 0; m < C::kOwned; ++m) {
#pragma unroll
          for (int off = KS; off < kWarp; off <<= 1) da[m] += shfl_xor(da[m], off);
        }
        if (lane < KS) {
#pragma unroll
          for (int m = 0; m < C::kOwned; ++m) {
            const int bb = m * KS + lane;
            if (bb < TB) part_s[((i & 1) * TB + bb) * warps + warp] = da[m];
          }
        }
      }
      if (i + 1 < steps && tid < TB && row0 + tid < geo.rows) {
        const T* part = part_s + (((i + 1) & 1) * TB + tid) * warps;
        T sum = T(0);
        for (int v = 0; v < warps; ++v) sum += part[v];
        Cell::write_attn_grad(args, row0 + tid, Cell::time_of(args, dir, i + 1, steps), sum);
      }
    }
    __syncthreads();
  }
}

// ---- launch plans (host) ---------------------------------------------------------------------

/// What a recurrence launch has to cover.
struct Shape {
  int gates = 0;
  int64_t rows = 0, hidden = 0, steps = 0;
  int directions = 1;
  bool backward = false;
  bool slot_index = false;  // forward stages the window's slot indices (window GRU)
  bool attn_grad = false;   // backward reduces the attention gradient (AGRU)
};

struct Plan {
  Geometry geo;
  dim3 grid, block;
  size_t smem = 0;
  bool shared_w = false;
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

/// Smallest leading dimension >= cols that keeps the kSplit lanes of a unit, which read the same
/// column offset from rows i, i+1, .. (i+KS-1), in different shared-memory banks.
inline int64_t padded_ld(int64_t cols, int split, size_t elem_bytes) {
  const int64_t phase = elem_bytes >= 8 ? 16 : 32;  // lanes one shared-memory wavefront serves
  if (split <= 1) return cols;
  const int64_t want = (phase / split) % phase;
  int64_t ld = cols;
  while (ld % phase != want) ++ld;
  return ld;
}

/// Geometry and shared-memory layout of configuration C; `pad` pads the staged weight's leading
/// dimension against bank conflicts (skipped when only the unpadded tile fits).
template <typename T, class C>
void make_layout(const Shape& s, bool shared_w, bool pad, Plan* plan) {
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
  g.ldw = 0;
  size_t off = 0;
  auto region = [&off](int64_t bytes) {
    const size_t at = off;
    off = (off + static_cast<size_t>(bytes) + 15) & ~static_cast<size_t>(15);
    return static_cast<unsigned>(at);
  };
  const int64_t e = sizeof(T);
  if (!s.backward) {
    const int64_t cols = G * H;
    const int64_t ld = !shared_w ? 0 : pad ? padded_ld(cols, static_cast<int>(KS), sizeof(T)) : cols;
    g.ldw = static_cast<int>(ld);
    g.off_w = region(H * ld * e);
    g.off_bias = region(G * H * e);
    g.off_vec = region(2 * H * TB * e);
    g.off_idx = region(s.slot_index ? TB * s.steps * static_cast<int64_t>(sizeof(int)) : 0);
    g.off_carry = g.off_part = 0;
  } else {
    const int64_t ld = !shared_w ? 0 : pad ? padded_ld(H, static_cast<int>(KS), sizeof(T)) : H;
    g.ldw = static_cast<int>(ld);
    g.off_w = region(G * H * ld * e);
    g.off_vec = region(2 * G * H * TB * e);
    g.off_carry = region(H * TB * e);
    g.off_part = region(s.attn_grad ? 2 * TB * (threads / kWarp) * e : 0);
    g.off_bias = g.off_idx = 0;
  }
  plan->smem = off;
  plan->shared_w = shared_w;
  plan->throughput = TB > 1;
  plan->grid = dim3(static_cast<unsigned>((s.rows + TB - 1) / TB),
                    static_cast<unsigned>(s.directions));
  plan->block = dim3(static_cast<unsigned>(threads));
}

/// A plan of configuration C that fits the device: weights in shared memory if possible
/// (padded, else unpadded), else read from global memory.
template <typename T, class C>
bool fit(const Shape& s, const DeviceLimits& d, Plan* plan) {
  const bool shared[] = {true, true, false}, pad[] = {true, false, false};
  for (int i = 0; i < 3; ++i) {
    make_layout<T, C>(s, shared[i], pad[i], plan);
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

/// Picks the configuration for a launch. The latency configuration wins while all its CTAs
/// run at once; beyond that the throughput one, whose CTAs share each weight load over several
/// sequences, needs fewer waves. cudaErrorNotSupported when nothing fits in shared memory; with
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
  const bool use_lat = !thr_ok || (lat_ok && ((lat.shared_w && !thr.shared_w) ||
                                              ctas <= d.sms * resident_blocks(lat, d)));
  *out = use_lat ? lat : thr;
  return cudaSuccess;
}

/// Launches one kernel instantiation, raising its shared-memory limit first when needed. The
/// attribute is set on every such launch (a cheap host-side call) rather than cached, so that it
/// survives a device reset and holds on every device.
template <auto kKernel, class Args>
cudaError_t start(const Plan& plan, const Args& args, cudaStream_t stream) {
  if (plan.smem > static_cast<size_t>(kDefaultSmem)) {
    const cudaError_t err = cudaFuncSetAttribute(
        kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.smem));
    if (err != cudaSuccess) return err;
  }
  AGHMN_LAUNCH(kKernel, plan.grid, plan.block, plan.smem, stream, args, plan.geo);
  return cudaGetLastError();
}

/// Runs the forward (kBackward = false) or backward recurrence of `Cell` with `plan`.
template <class Cell, bool kBackward>
cudaError_t run_recurrence(const Plan& plan, const typename Cell::Args& args,
                           cudaStream_t stream) {
  using T = typename Cell::Scalar;
  using Lat = LatencyConfig;
  using Thr = ThroughputConfig<T>;
  if constexpr (kBackward) {
    if (plan.throughput)
      return plan.shared_w ? start<recurrence_backward<Cell, Thr, true>>(plan, args, stream)
                           : start<recurrence_backward<Cell, Thr, false>>(plan, args, stream);
    return plan.shared_w ? start<recurrence_backward<Cell, Lat, true>>(plan, args, stream)
                         : start<recurrence_backward<Cell, Lat, false>>(plan, args, stream);
  } else {
    if (plan.throughput)
      return plan.shared_w ? start<recurrence_forward<Cell, Thr, true>>(plan, args, stream)
                           : start<recurrence_forward<Cell, Thr, false>>(plan, args, stream);
    return plan.shared_w ? start<recurrence_forward<Cell, Lat, true>>(plan, args, stream)
                         : start<recurrence_forward<Cell, Lat, false>>(plan, args, stream);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace aghmn
