// The sequential part of the memory bank's window GRU (PyTorch gate layout r, z, n) on the CPU:
// forward and backward for one direction and one tile of windows, plus the deterministic
// scatter of slot gradients back onto utterances. No torch headers; shapes as in docs/OPS.md.
//
// Inputs are projected once per utterance (proj [D, N, 3H]); a window slot gathers its row by
// index (an empty slot, index -1, uses pad_proj). The backward writes per-slot gradients, then
// sums them onto utterances through an inverse index (CSR, slots in increasing order), so the
// result is bit-identical from run to run and thread count to thread count.
#pragma once
#include <cstdint>

#include "common/gate_math.h"
#include "common/gemm_cpu.h"

namespace aghmn {
namespace cpu {

template <typename T>
struct WindowGruPlan {
  int64_t D, Q, K, N, H;
  int64_t Np;     // round_up(3H): row length of the packed forward weights
  int64_t Hp;     // round_up(H)
  const T* wt;    // [D][H][Np]: weight_hh[d]^T (forward)
  const T* bias;  // [D][Np]: bias_hh[d] zero-padded (forward)
  const T* wp;    // [D][3H][Hp]: weight_hh[d] zero-padded (backward)
};

template <typename T>
inline WindowGruPlan<T> window_gru_plan(int64_t D, int64_t Q, int64_t K, int64_t N, int64_t H) {
  WindowGruPlan<T> p{};
  p.D = D;
  p.Q = Q;
  p.K = K;
  p.N = N;
  p.H = H;
  p.Np = round_up(3 * H, pad_width<T>());
  p.Hp = round_up(H, pad_width<T>());
  return p;
}

template <typename T>
inline int64_t window_gru_forward_pack_size(const WindowGruPlan<T>& p) {
  return p.D * (p.H * p.Np + p.Np);
}
template <typename T>
inline int64_t window_gru_backward_pack_size(const WindowGruPlan<T>& p) {
  return p.D * 3 * p.H * p.Hp;
}
template <typename T>
inline int64_t window_gru_scratch_size(const WindowGruPlan<T>& p, int64_t rows) {
  return rows * p.Np + p.Hp;
}

// weight_hh [D, 3H, H], bias_hh [D, 3H] into buf (window_gru_forward_pack_size elements).
template <typename T>
inline void window_gru_pack_forward(WindowGruPlan<T>& p, const T* weight_hh, const T* bias_hh,
                                    T* buf) {
  const int64_t H = p.H, Np = p.Np;
  T* bias = buf + p.D * H * Np;
  for (int64_t d = 0; d < p.D; ++d) {
    pack_transposed(weight_hh + d * 3 * H * H, 3 * H, H, Np, buf + d * H * Np);
    pack_bias(bias_hh + d * 3 * H, 3 * H, Np, bias + d * Np);
  }
  p.wt = buf;
  p.bias = bias;
}

template <typename T>
inline void window_gru_pack_backward(WindowGruPlan<T>& p, const T* weight_hh, T* buf) {
  const int64_t H = p.H;
  for (int64_t d = 0; d < p.D; ++d)
    pack_padded(weight_hh + d * 3 * H * H, 3 * H, H, p.Hp, buf + d * 3 * H * p.Hp);
  p.wp = buf;
}

// Direction d runs k = 0 .. K-1 for d = 0 and k = K-1 .. 0 for d = 1.
inline int64_t window_slot(int64_t d, int64_t K, int64_t s) { return d == 0 ? s : K - 1 - s; }

// One window of one step; separate functions so that __restrict on the pointers holds.
template <typename T>
AGHMN_INLINE void window_gru_forward_row(int64_t H, const T* __restrict x, const T* __restrict g,
                                         const T* __restrict hp, T* __restrict gt,
                                         T* __restrict out) {
  for (int64_t j = 0; j < H; ++j) {
    const GruForward<T> u = gru_forward_unit_vec(x[j], x[H + j], x[2 * H + j], g[j], g[H + j],
                                                 g[2 * H + j], hp[j]);
    gt[j] = u.r;
    gt[H + j] = u.z;
    gt[2 * H + j] = u.n;
    gt[3 * H + j] = g[2 * H + j];
    out[j] = u.h_new;
  }
}

// carry: the gradient reaching h from later slots on entry, dh * z on exit.
template <typename T>
AGHMN_INLINE void window_gru_backward_row(int64_t H, const T* __restrict go,
                                          const T* __restrict hp, const T* __restrict gt,
                                          T* __restrict gg, T* __restrict dn,
                                          T* __restrict carry) {
  for (int64_t j = 0; j < H; ++j) {
    const GruBackward<T> u = gru_backward_unit(go[j] + carry[j], gt[j], gt[H + j], gt[2 * H + j],
                                               gt[3 * H + j], hp[j]);
    gg[j] = u.dpr;
    gg[H + j] = u.dpz;
    gg[2 * H + j] = u.dhn;
    dn[j] = u.dpn;
    carry[j] = u.dh_direct;
  }
}

// Forward of direction d over windows [q0, q0 + rows). scratch: window_gru_scratch_size.
template <typename T, typename Isa>
AGHMN_INLINE void window_gru_forward_tile_impl(const WindowGruPlan<T>& p, const T* proj,
                                               const T* pad_proj, const int64_t* windows,
                                               T* output, T* gates, int64_t d, int64_t q0,
                                               int64_t rows, T* scratch) {
  const int64_t Q = p.Q, K = p.K, N = p.N, H = p.H, Np = p.Np;
  T* g = scratch;                 // [rows][Np]: h @ weight_hh^T + bias_hh = [hr | hz | hn]
  T* zero = scratch + rows * Np;  // [Hp]: h_0 = 0
  for (int64_t j = 0; j < p.Hp; ++j) zero[j] = T(0);
  const T* wt = p.wt + d * H * Np;
  const T* bias = p.bias + d * Np;
  const T* pad = pad_proj + d * 3 * H;
  for (int64_t s = 0; s < K; ++s) {
    const int64_t k = window_slot(d, K, s);
    const int64_t kp = window_slot(d, K, s - 1);
    const T* hprev = s == 0 ? zero : output + ((d * Q + q0) * K + kp) * H;
    const int64_t ld_h = s == 0 ? 0 : K * H;
    gemm_rows<T, Isa>(rows, s == 0 ? 0 : H, Np, hprev, ld_h, wt, bias, 0, g, Np, s & 1);
    for (int64_t m = 0; m < rows; ++m) {
      const int64_t q = q0 + m, slot = (d * Q + q) * K + k;
      const int64_t idx = windows[q * K + k];
      window_gru_forward_row(H, idx < 0 ? pad : proj + (d * N + idx) * 3 * H, g + m * Np,
                             hprev + m * ld_h, gates + slot * 4 * H, output + slot * H);
    }
  }
}

// Backward of direction d over windows [q0, q0 + rows): writes grad_ghh [D,Q,K,3H] and the n
// part of each slot's projection gradient, slot_dpn [D,Q,K,H] (its r and z parts equal
// grad_ghh's). scratch: window_gru_scratch_size.
template <typename T, typename Isa>
AGHMN_INLINE void window_gru_backward_tile_impl(const WindowGruPlan<T>& p, const T* grad_output,
                                                const T* output, const T* gates, T* grad_ghh,
                                                T* slot_dpn, int64_t d, int64_t q0, int64_t rows,
                                                T* scratch) {
  const int64_t Q = p.Q, K = p.K, H = p.H, Hp = p.Hp;
  T* carry = scratch;              // [rows][Hp]
  T* zero = scratch + rows * Hp;   // [Hp]
  for (int64_t i = 0; i < rows * Hp + Hp; ++i) scratch[i] = T(0);
  const T* wp = p.wp + d * 3 * H * Hp;
  for (int64_t s = K - 1; s >= 0; --s) {
    const int64_t k = window_slot(d, K, s);
    const int64_t kp = window_slot(d, K, s - 1);
    for (int64_t m = 0; m < rows; ++m) {
      const int64_t q = q0 + m, slot = (d * Q + q) * K + k;
      window_gru_backward_row(H, grad_output + slot * H,
                              s == 0 ? zero : output + ((d * Q + q) * K + kp) * H,
                              gates + slot * 4 * H, grad_ghh + slot * 3 * H, slot_dpn + slot * H,
                              carry + m * Hp);
    }
    // carry = dh * z + grad_ghh_k @ weight_hh[d] for the whole tile.
    gemm_rows<T, Isa>(rows, 3 * H, Hp, grad_ghh + ((d * Q + q0) * K + k) * 3 * H, K * 3 * H, wp,
                      carry, Hp, carry, Hp, s & 1);
  }
}

template <typename T>
inline void window_gru_forward_tile(const WindowGruPlan<T>& p, const T* proj, const T* pad_proj,
                                    const int64_t* windows, T* output, T* gates, int64_t d,
                                    int64_t q0, int64_t rows, T* scratch) {
  dispatch_isa([&](auto isa) {
    window_gru_forward_tile_impl<T, decltype(isa)>(p, proj, pad_proj, windows, output, gates, d,
                                                   q0, rows, scratch);
  });
}

template <typename T>
inline void window_gru_backward_tile(const WindowGruPlan<T>& p, const T* grad_output,
                                     const T* output, const T* gates, T* grad_ghh, T* slot_dpn,
                                     int64_t d, int64_t q0, int64_t rows, T* scratch) {
  dispatch_isa([&](auto isa) {
    window_gru_backward_tile_impl<T, decltype(isa)>(p, grad_output, output, gates, grad_ghh,
                                                    slot_dpn, d, q0, rows, scratch);
  });
}

// Inverse index of windows [Q, K] (CSR): bucket u < N lists the slots (q * K + k) holding
// utterance u, bucket N the empty slots, each in increasing slot order. offsets: N + 2
// elements, slots: Q * K.
inline void window_inverse_index(const int64_t* windows, int64_t QK, int64_t N,
                                 int64_t* offsets, int64_t* slots) {
  for (int64_t u = 0; u <= N + 1; ++u) offsets[u] = 0;
  for (int64_t i = 0; i < QK; ++i) {
    const int64_t u = windows[i] < 0 ? N : windows[i];
    ++offsets[u + 1];
  }
  for (int64_t u = 0; u <= N; ++u) offsets[u + 1] += offsets[u];
  // Fill with a running cursor per bucket (offsets[u] is restored by the shift below).
  for (int64_t i = 0; i < QK; ++i) {
    const int64_t u = windows[i] < 0 ? N : windows[i];
    slots[offsets[u]++] = i;
  }
  for (int64_t u = N; u > 0; --u) offsets[u] = offsets[u - 1];
  offsets[0] = 0;
}

// grad_proj rows [u0, u1) of direction d (u = N: grad_pad_proj[d]): the fixed-order sum of the
// slot gradients [grad_ghh r, z parts | slot_dpn] listed in the inverse index.
template <typename T>
inline void window_gru_scatter(const WindowGruPlan<T>& p, const T* grad_ghh, const T* slot_dpn,
                               const int64_t* offsets, const int64_t* slots, T* grad_proj,
                               T* grad_pad_proj, int64_t d, int64_t u0, int64_t u1) {
  const int64_t H = p.H, QK = p.Q * p.K;
  for (int64_t u = u0; u < u1; ++u) {
    T* __restrict out = u < p.N ? grad_proj + (d * p.N + u) * 3 * H : grad_pad_proj + d * 3 * H;
    for (int64_t j = 0; j < 3 * H; ++j) out[j] = T(0);
    for (int64_t i = offsets[u]; i < offsets[u + 1]; ++i) {
      const int64_t slot = d * QK + slots[i];
      const T* __restrict gg = grad_ghh + slot * 3 * H;
      const T* __restrict dn = slot_dpn + slot * H;
      for (int64_t j = 0; j < 2 * H; ++j) out[j] += gg[j];
      for (int64_t j = 0; j < H; ++j) out[2 * H + j] += dn[j];
    }
  }
}

}  // namespace cpu
}  // namespace aghmn
