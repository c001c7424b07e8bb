// The persistent recurrence kernels shared by the AGRU and the window GRU, and their launches
// (the host-side launch planning, choose_plan, is in common/launch_plan.h).
//
// One CTA runs the whole time loop of a tile of sequences (one direction). weight_hh stays on
// chip for the whole loop where it can (WeightsIn): in registers (each lane holds its slice; one
// sequence per CTA), else staged once into shared memory, else it is read from global memory /
// L2 every step. The state lives in shared memory (double-buffered, so a step needs exactly one
// __syncthreads), and each thread owns one hidden unit j for every sequence of the tile. A
// step's matvec splits its contraction over kSplit adjacent lanes, which then add their partial
// sums with xor shuffles (a fixed order, so results are bit-reproducible). The per-unit gate
// math comes from common/gate_math.h, the same code the CPU kernels run. What differs between
// the two recurrences (input layout, gate count, what is written) is a small "cell" policy
// class; the weight placement and the tile shape are template parameters of the same kernels.
//
// Cost model (not measured: no GPU has run these kernels; per step, one sequence, H = 100, fp32
// AGRU, 416 threads). Shared-memory weights: the step streams the whole 80 KB weight tile
// through the SM's shared memory (~625 cycles at 128 B/clock), plus one load of the state per
// contraction element: ~1,000 cycles a step. Register weights: each lane holds 2 x 32 weights
// (slice 32: H padded to 128) and reads the state as 8 broadcast 16-byte pieces (~1 KB of
// shared-memory traffic per warp instead of 80 KB per CTA); its 64 FMAs run as 8 independent
// chains of 8, then 2 shuffle rounds, the gate math on one lane per unit and the barrier: a few
// hundred cycles a step, bound by latency rather than bandwidth. The register variants are
// instantiated where the slice takes at most 64 registers (ptxas: float AGRU slice 32 uses
// 117 / 128 registers forward / backward on sm_90, no spills; a double slice 32 or a window-GRU
// float slice 32 would spill). The throughput configuration (several sequences per CTA) reuses
// each shared-memory weight load for kTile sequences and is bound by FMA throughput instead.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/cuda_kernels.h"
#include "common/gate_math.h"
#include "common/launch_plan.h"

// Cell policy methods: always inlined, so that no call ABI (and no spill around it) sits in a loop.
#define AGHMN_CELL __device__ __forceinline__ static

#if defined(AGHMN_SIMT_EMULATION)
#define AGHMN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ((void)(stream), ::aghmn_emu::launch<kernel>(grid, block, smem, __VA_ARGS__))
#else
#define AGHMN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace aghmn {
namespace cuda {
namespace detail {

constexpr unsigned kFullMask = 0xffffffffu;

#if defined(AGHMN_SIMT_EMULATION)
inline unsigned char* dynamic_smem() { return ::aghmn_emu::dynamic_smem(); }
#else
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char aghmn_dynamic_smem[];
  return aghmn_dynamic_smem;
}
#endif

// ---- index mappings (host and device: tests/test_cuda_register_kernel.py computes the banks
// that a warp's lanes hit with these very functions, through the emulator build's C ABI) ----

/// The unit's lane (0 .. kSplit-1) and the hidden unit (within a pass) of thread `tid`.
template <int KS>
AGHMN_HD int lane_split(int tid) { return tid % KS; }
template <int KS>
AGHMN_HD int lane_unit(int tid) { return tid / KS; }

/// Shared-memory offset of weight_hh element (row r, column k) in the staged tile: weight_hh
/// keeps its row-major layout, rows padded to ldw. In the forward the kSplit lanes of a unit read
/// consecutive columns of the unit's row and the units of a warp sit on consecutive rows; in the
/// backward the lanes of a unit read consecutive rows of the unit's column and the units sit on
/// consecutive columns. padded_ld picks ldw per direction so that neither read conflicts.
AGHMN_HD int staged_weight_offset(int r, int k, int ldw) { return r * ldw + k; }

/// Staging of weight_hh ([rows][cols], row-major) into shared memory: warp w copies rows w,
/// w + warps, ..., lane l columns l, l + 32, ...: global reads are coalesced and the 32 stores
/// of a warp go to 32 consecutive words (no bank conflict, padded rows or not).
AGHMN_HD int staged_row(int warp, int warps, int it) { return warp + it * warps; }
AGHMN_HD int staged_column(int lane, int it) { return lane + it * kWarp; }

/// Register-resident weights: lane `split` of a unit holds the contraction indices
/// register_slice_index(split, q) + e (e < kVec, q < kSlice / kVec), where kVec elements make 16
/// bytes. The KS lanes of a unit read KS consecutive 16-byte pieces of the state vector, which all
/// units share (a broadcast): one conflict-free wavefront per quarter warp.
template <typename T, int KS>
AGHMN_HD int register_slice_index(int split, int q) {
  return (q * KS + split) * static_cast<int>(16 / sizeof(T));
}

/// Gradients of one unit of one step, as the backward kernel consumes them.
template <typename T, int G>
struct UnitGrads {
  static_assert(G >= 1, "a recurrence has at least one gate block");
  T dg[G];      // gradient of h_prev @ weight_hh^T + bias_hh, per gate block
  T dh_direct;  // the part of grad h_prev that does not go through weight_hh
  T da;         // contribution to the attention gradient (cells with kAttnGrad; else unused)
};

/// The element of weight_hh (row-major, leading dimension ld: the staged copy in shared memory
/// or the tensor in global memory) that a step contracts at index i for output c: W[c][i] in
/// the forward (kTransposed = false: output c is a gate row), W[i][c] in the backward.
template <typename T, bool kShared, bool kTransposed>
struct MatView {
  const T* base;
  int ld;
  __device__ __forceinline__ T at(int i, int c) const {
    const T* p = base + (kTransposed ? staged_weight_offset(i, c, ld) : staged_weight_offset(c, i, ld));
    if constexpr (kShared) {
      return *p;
    } else {
      return __ldg(p);
    }
  }
};

/// Copies weight_hh ([rows][cols]) into shared memory with rows padded to ldw (see staged_row).
template <typename T>
__device__ __forceinline__ void stage_weights(T* w_s, const T* w, int rows, int cols, int ldw) {
  const int warps = blockDim.x / kWarp, warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  for (int it = 0, r = staged_row(warp, warps, 0); r < rows; r = staged_row(warp, warps, ++it)) {
    for (int kt = 0, k = staged_column(lane, 0); k < cols; k = staged_column(lane, ++kt))
      w_s[staged_weight_offset(r, k, ldw)] = w[static_cast<int64_t>(r) * cols + k];
  }
}

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
template <typename T, int TB, int KS, int NG, bool kShared, bool kTransposed>
__device__ __forceinline__ void contract(const MatView<T, kShared, kTransposed>& m, const T* vec,
                                         int len,
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

/// A lane's slice of weight_hh for the register-resident kernels: w[g][q * kVec + e] is the
/// weight of gate block g at contraction index register_slice_index(split, q) + e of the lane's
/// unit (zero beyond H, so that the padded tail of the vectors contributes nothing).
template <typename T, int G, int S>
struct RegisterSlice {
  static constexpr int kVec = static_cast<int>(16 / sizeof(T));
  static_assert(S % kVec == 0, "a slice is made of whole 16-byte pieces");
  T w[G][S];

  /// Loads the slice of unit j (lanes of units j >= H hold zeros). The forward contracts over
  /// the columns of row g * H + j, the backward (kTransposed) over the rows g * H + i of column j.
  template <int KS, bool kTransposed>
  __device__ __forceinline__ void load(const T* weight, int H, int j, int split) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int q = 0; q < S / kVec; ++q) {
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const int i = register_slice_index<T, KS>(split, q) + e;
          const int64_t at = kTransposed ? static_cast<int64_t>(g * H + i) * H + j
                                         : static_cast<int64_t>(g * H + j) * H + i;
          w[g][q * kVec + e] = (j < H && i < H) ? __ldg(weight + at) : T(0);
        }
      }
    }
  }
};

/// Sum of kVec partial sums in a fixed (pairwise) order.
template <typename T, int N>
__device__ __forceinline__ T sum_parts(const T (&part)[N]) {
  if constexpr (N == 1) {
    return part[0];
  } else if constexpr (N == 2) {
    return part[0] + part[1];
  } else {
    static_assert(N == 4, "16-byte pieces of float or double");
    return (part[0] + part[1]) + (part[2] + part[3]);
  }
}

/// Forward with register-resident weights: acc[g][0] = this lane's part of row g * H + j of
/// weight_hh times the state vec (one sequence). kVec independent partial sums per gate keep the
/// dependent FMA chain short; their order is fixed, so results are bit-reproducible.
template <typename T, int KS, int G, int S>
__device__ __forceinline__ void contract_registers(const RegisterSlice<T, G, S>& ws, const T* vec,
                                                   int split, T (&acc)[G][1]) {
  constexpr int V = RegisterSlice<T, G, S>::kVec;
  T part[G][V];
#pragma unroll
  for (int g = 0; g < G; ++g) {
#pragma unroll
    for (int e = 0; e < V; ++e) part[g][e] = T(0);
  }
#pragma unroll
  for (int q = 0; q < S / V; ++q) {
    T v[V];
    load_tile(vec + register_slice_index<T, KS>(split, q), v);
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int e = 0; e < V; ++e) part[g][e] += ws.w[g][q * V + e] * v[e];
    }
  }
#pragma unroll
  for (int g = 0; g < G; ++g) acc[g][0] = sum_parts(part[g]);
}

/// Backward with register-resident weights: acc[0][0] = this lane's part of column j of
/// weight_hh times the gate gradients vec ([G][ldv], one sequence).
template <typename T, int KS, int G, int S>
__device__ __forceinline__ void contract_registers_transposed(const RegisterSlice<T, G, S>& ws,
                                                              const T* vec, int ldv, int split,
                                                              T (&acc)[1][1]) {
  constexpr int V = RegisterSlice<T, G, S>::kVec;
  T part[V];
#pragma unroll
  for (int e = 0; e < V; ++e) part[e] = T(0);
#pragma unroll
  for (int g = 0; g < G; ++g) {
#pragma unroll
    for (int q = 0; q < S / V; ++q) {
      T v[V];
      load_tile(vec + g * ldv + register_slice_index<T, KS>(split, q), v);
#pragma unroll
      for (int e = 0; e < V; ++e) part[e] += ws.w[g][q * V + e] * v[e];
    }
  }
  acc[0][0] = sum_parts(part);
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

// ---- launch shapes ---------------------------------------------------------------------------
// What choose_plan (launch_plan.h) plans for is read from the cells themselves: the gate count
// kGates (any G >= 1: every buffer, loop and register slice below is sized by it) and the options
// kSlotIndex (forward) and kAttnGrad (backward), so that a launcher cannot plan for another shape
// than its kernel runs.

/// The launch shape of the forward (kBackward = false) or backward recurrence of `Cell`.
template <class Cell, bool kBackward>
Shape launch_shape(int64_t rows, int64_t hidden, int64_t steps, int64_t directions) {
  static_assert(Cell::kGates >= 1, "a recurrence has at least one gate block");
  Shape s;
  s.gates = Cell::kGates;
  s.rows = rows;
  s.hidden = hidden;
  s.steps = steps;
  s.directions = static_cast<int>(directions);
  s.backward = kBackward;
  if constexpr (kBackward) {
    s.attn_grad = Cell::kAttnGrad;
  } else {
    s.slot_index = Cell::kSlotIndex;
  }
  return s;
}

// ---- forward ---------------------------------------------------------------------------------
// Cell interface: Scalar, Args, kGates, kSlotIndex, In, weight, bias, initial, time_of, slot,
// load (the step's inputs of one unit), finish (gate math + stores; returns the new state).
// kW: where weight_hh lives; kSlice: the register slice length per gate block (kRegisters only,
// with one sequence per CTA and every unit in one pass; the plan guarantees both).
template <class Cell, class C, WeightsIn kW, int kSlice>
__global__ void __launch_bounds__(C::kMaxThreads, 1)
    recurrence_forward(typename Cell::Args args, Geometry geo) {
  using T = typename Cell::Scalar;
  constexpr int TB = C::kTile, KS = C::kSplit, G = Cell::kGates;
  constexpr bool kInRegisters = kW == WeightsIn::kRegisters;
  static_assert(!kInRegisters || (TB == 1 && kSlice > 0), "register weights: one sequence per CTA");
  unsigned char* smem = dynamic_smem();
  const int H = geo.hidden, steps = geo.steps, ldv = geo.ldv;
  const int dir = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * TB;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int split = lane_split<KS>(tid), unit = lane_unit<KS>(tid);

  const T* w = Cell::weight(args, dir);
  const T* bias = Cell::bias(args, dir);
  T* w_s = reinterpret_cast<T*>(smem + geo.off_w);  // [G*H][ldw]: weight_hh, row-major
  T* bias_s = reinterpret_cast<T*>(smem + geo.off_bias);
  T* h_s = reinterpret_cast<T*>(smem + geo.off_vec);  // [2][ldv][TB], zero beyond H
  int* idx_s = reinterpret_cast<int*>(smem + geo.off_idx);  // [TB][steps]

  if constexpr (kW == WeightsIn::kShared) stage_weights(w_s, w, G * H, H, geo.ldw);
  [[maybe_unused]] RegisterSlice<T, G, kInRegisters ? kSlice : RegisterSlice<T, G, 16>::kVec> w_r;
  if constexpr (kInRegisters) w_r.template load<KS, false>(w, H, unit, split);
  for (int e = tid; e < G * H; e += nthreads) bias_s[e] = bias[e];
  for (int e = tid; e < ldv * TB; e += nthreads) {
    const int k = e / TB, bb = e - k * TB;
    const int64_t row = row0 + bb;
    h_s[e] = k < H && row < geo.rows ? Cell::initial(args, row, k) : T(0);
    h_s[ldv * TB + e] = T(0);
  }
  if constexpr (Cell::kSlotIndex) {
    for (int e = tid; e < TB * steps; e += nthreads) {
      const int bb = e / steps, t = e - bb * steps;
      const int64_t row = row0 + bb;
      idx_s[e] = row < geo.rows ? Cell::slot(args, row, t) : -1;
    }
  }
  __syncthreads();

  [[maybe_unused]] const MatView<T, kW == WeightsIn::kShared, false> mat{
      kW == WeightsIn::kShared ? w_s : w, geo.ldw};

  for (int i = 0; i < steps; ++i) {
    const int t = Cell::time_of(args, dir, i, steps);
    const T* h_cur = h_s + (i & 1) * ldv * TB;
    T* h_next = h_s + ((i + 1) & 1) * ldv * TB;
    for (int pass = 0; pass < geo.passes; ++pass) {
      const int j = pass * geo.units_per_pass + unit;
      const bool active = j < H;
      // The step's inputs do not depend on the state: issue their loads before the matvec.
      typename Cell::In in[C::kOwned] = {};
      for_owned_rows<C>(active, split, row0, geo.rows, [&](int m, int bb, int64_t row) {
        in[m] = Cell::load(args, geo, idx_s, dir, row, bb, t, j);
      });
      T acc[G][TB];
      zero(acc);
      if (active) {
        if constexpr (kInRegisters) {
          contract_registers<T, KS>(w_r, h_cur, split, acc);
        } else {
          contract<T, TB, KS, G>(mat, h_cur, H, split, j, H, acc);
        }
      }
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
template <class Cell, class C, WeightsIn kW, int kSlice>
__global__ void __launch_bounds__(C::kMaxThreads, 1)
    recurrence_backward(typename Cell::Args args, Geometry geo) {
  using T = typename Cell::Scalar;
  constexpr int TB = C::kTile, KS = C::kSplit, G = Cell::kGates;
  constexpr int kLast = Cell::kInitialGrad ? -1 : 0;
  constexpr bool kInRegisters = kW == WeightsIn::kRegisters;
  static_assert(!kInRegisters || (TB == 1 && kSlice > 0), "register weights: one sequence per CTA");
  unsigned char* smem = dynamic_smem();
  const int H = geo.hidden, GH = G * geo.hidden, steps = geo.steps, ldv = geo.ldv;
  const int dir = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * TB;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int split = lane_split<KS>(tid), unit = lane_unit<KS>(tid);
  const int warps = nthreads / kWarp, warp = tid / kWarp, lane = tid % kWarp;

  const T* w = Cell::weight(args, dir);
  T* w_s = reinterpret_cast<T*>(smem + geo.off_w);      // [G*H][ldw]: weight_hh, row-major
  T* dg_s = reinterpret_cast<T*>(smem + geo.off_vec);   // [2][G][ldv][TB], zero beyond H
  T* carry_s = reinterpret_cast<T*>(smem + geo.off_carry);  // [H][TB]: dh_direct of step i+1
  T* part_s = reinterpret_cast<T*>(smem + geo.off_part);    // [2][TB][warps]

  if constexpr (kW == WeightsIn::kShared) stage_weights(w_s, w, GH, H, geo.ldw);
  [[maybe_unused]] RegisterSlice<T, G, kInRegisters ? kSlice : RegisterSlice<T, G, 16>::kVec> w_r;
  if constexpr (kInRegisters) w_r.template load<KS, true>(w, H, unit, split);
  for (int e = tid; e < 2 * G * ldv * TB; e += nthreads) dg_s[e] = T(0);
  for (int e = tid; e < H * TB; e += nthreads) carry_s[e] = T(0);
  __syncthreads();

  [[maybe_unused]] const MatView<T, kW == WeightsIn::kShared, true> mat{
      kW == WeightsIn::kShared ? w_s : w, geo.ldw};

  for (int i = steps - 1; i >= kLast; --i) {
    const T* dg_next = dg_s + ((i + 1) & 1) * G * ldv * TB;  // written while processing step i+1
    T* dg_cur = dg_s + (i & 1) * G * ldv * TB;
    const int t = i >= 0 ? Cell::time_of(args, dir, i, steps) : -1;
    const int t_prev = i > 0 ? Cell::time_of(args, dir, i - 1, steps) : -1;
    T da[C::kOwned];
#pragma unroll
    for (int m = 0; m < C::kOwned; ++m) da[m] = T(0);

    for (int pass = 0; pass < geo.passes; ++pass) {
      const int j = pass * geo.units_per_pass + unit;
      const bool active = j < H;
      typename Cell::In in[C::kOwned] = {};
      for_owned_rows<C>(i >= 0 && active, split, row0, geo.rows, [&](int m, int, int64_t row) {
        in[m] = Cell::load(args, geo, dir, row, t, t_prev, j);
      });
      T acc[1][TB];
      zero(acc);
      if (active && i < steps - 1) {
        if constexpr (kInRegisters) {
          contract_registers_transposed<T, KS>(w_r, dg_next, ldv, split, acc);
        } else {
          contract<T, TB, KS, 1>(mat, dg_next, GH, split, j, 0, acc);  // here ldv == H
        }
      }
      reduce_split<T, TB, KS, 1>(acc);
      for_owned_rows<C>(active, split, row0, geo.rows, [&](int m, int bb, int64_t row) {
        const T carry = carry_s[j * TB + bb] + pick(acc[0], bb);
        if (i >= 0) {
          const UnitGrads<T, G> u = Cell::step(args, geo, dir, row, t, j, in[m], carry);
#pragma unroll
          for (int g = 0; g < G; ++g) dg_cur[(g * ldv + j) * TB + bb] = u.dg[g];
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

/// The kernel of `Cell` (forward or backward) for configuration C, weights in kW, slice kSlice.
template <class Cell, bool kBackward, class C, WeightsIn kW, int kSlice = 0>
cudaError_t start_kernel(const Plan& plan, const typename Cell::Args& args, cudaStream_t stream) {
  if constexpr (kBackward) {
    return start<recurrence_backward<Cell, C, kW, kSlice>>(plan, args, stream);
  } else {
    return start<recurrence_forward<Cell, C, kW, kSlice>>(plan, args, stream);
  }
}

/// The register-resident kernel of slice kRegisterSlices[kI] or a later one, as plan.slice says.
template <class Cell, bool kBackward, int kI = 0>
cudaError_t start_register_kernel(const Plan& plan, const typename Cell::Args& args,
                                  cudaStream_t stream) {
  using T = typename Cell::Scalar;
  constexpr int kCount = sizeof(kRegisterSlices) / sizeof(kRegisterSlices[0]);
  if constexpr (kI >= kCount) {
    return cudaErrorInvalidValue;  // choose_plan never picks a slice that was not instantiated
  } else {
    constexpr int kSlice = kRegisterSlices[kI];
    if constexpr (has_register_variant<T>(Cell::kGates, kSlice)) {
      if (plan.slice == kSlice)
        return start_kernel<Cell, kBackward, LatencyConfig, WeightsIn::kRegisters, kSlice>(
            plan, args, stream);
    }
    return start_register_kernel<Cell, kBackward, kI + 1>(plan, args, stream);
  }
}

/// Runs the forward (kBackward = false) or backward recurrence of `Cell` with `plan`.
template <class Cell, bool kBackward>
cudaError_t run_recurrence(const Plan& plan, const typename Cell::Args& args,
                           cudaStream_t stream) {
  using T = typename Cell::Scalar;
  using Lat = LatencyConfig;
  using Thr = ThroughputConfig<T>;
  constexpr WeightsIn kShared = WeightsIn::kShared, kGlobal = WeightsIn::kGlobal;
  const bool shared = plan.weights == kShared;
  if (plan.weights == WeightsIn::kRegisters)
    return start_register_kernel<Cell, kBackward>(plan, args, stream);
  if (plan.throughput)
    return shared ? start_kernel<Cell, kBackward, Thr, kShared>(plan, args, stream)
                  : start_kernel<Cell, kBackward, Thr, kGlobal>(plan, args, stream);
  return shared ? start_kernel<Cell, kBackward, Lat, kShared>(plan, args, stream)
                : start_kernel<Cell, kBackward, Lat, kGlobal>(plan, args, stream);
}

}  // namespace detail
}  // namespace cuda
}  // namespace aghmn
