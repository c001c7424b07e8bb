// The sequential part of the attention GRU (AGRU) on the CPU, forward and backward, for one
// direction and one tile of the batch (the caller splits the batch across threads).
// No torch headers: raw pointers to contiguous arrays, shapes as in docs/OPS.md.
//
// Per step the whole tile's recurrent product [rows, H] x [H, 2H] runs as one register-blocked
// small GEMM over packed weights that stay hot in L1/L2, then one vectorisable loop over the
// hidden units applies the gate math of gate_math.h.
#pragma once
#include <cstdint>

#include "common/gate_math.h"
#include "common/gemm_cpu.h"

namespace aghmn {
namespace cpu {

// Shapes and the weights packed once per call (shared read-only by every tile).
template <typename T>
struct AgruPlan {
  int64_t B, T_, H;
  bool reverse;
  int64_t Np;      // round_up(2H): row length of the packed forward weights
  int64_t Hp;      // round_up(H): row length of the packed backward weights and of `carry`
  const T* wt;     // [H][Np]: weight_hh^T (forward)
  const T* wp;     // [2H][Hp]: weight_hh zero-padded (backward)
  const T* bias;   // [Np]: bias_hh zero-padded (forward)
};

template <typename T>
inline AgruPlan<T> agru_plan(int64_t B, int64_t T_, int64_t H, bool reverse) {
  AgruPlan<T> p{};
  p.B = B;
  p.T_ = T_;
  p.H = H;
  p.reverse = reverse;
  p.Np = round_up(2 * H, pad_width<T>());
  p.Hp = round_up(H, pad_width<T>());
  return p;
}

// Sizes (in elements of T) of the packed buffers and of one tile's scratch.
template <typename T>
inline int64_t agru_forward_pack_size(const AgruPlan<T>& p) { return p.H * p.Np + p.Np; }
template <typename T>
inline int64_t agru_backward_pack_size(const AgruPlan<T>& p) { return 2 * p.H * p.Hp; }
template <typename T>
inline int64_t agru_scratch_size(const AgruPlan<T>& p, int64_t rows) {
  return rows * p.Np + p.Hp;
}

// Packs weight_hh [2H, H] (and bias_hh [2H]) into `buf` (agru_forward_pack_size elements).
template <typename T>
inline void agru_pack_forward(AgruPlan<T>& p, const T* weight_hh, const T* bias_hh, T* buf) {
  pack_transposed(weight_hh, 2 * p.H, p.H, p.Np, buf);
  T* bias = buf + p.H * p.Np;
  pack_bias(bias_hh, 2 * p.H, p.Np, bias);
  p.wt = buf;
  p.bias = bias;
}

template <typename T>
inline void agru_pack_backward(AgruPlan<T>& p, const T* weight_hh, T* buf) {
  pack_padded(weight_hh, 2 * p.H, p.H, p.Hp, buf);
  p.wp = buf;
}

// One batch row of one step. Separate functions so that the pointers' __restrict holds (the
// vectoriser ignores it on block-scope pointers and then gives up on the alias checks).
template <typename T>
AGHMN_INLINE void agru_forward_row(int64_t H, const T* __restrict x, const T* __restrict g,
                                   const T* __restrict hp, T a, T* __restrict gt,
                                   T* __restrict out) {
  for (int64_t j = 0; j < H; ++j) {
    const AgruForward<T> u = agru_forward_unit_vec(x[j], x[H + j], g[j], g[H + j], a, hp[j]);
    gt[j] = u.r;
    gt[H + j] = u.n;
    gt[2 * H + j] = g[H + j];
    out[j] = u.h_new;
  }
}

// carry holds the gradient reaching h from later steps on entry and dh * (1 - a) on exit.
template <typename T>
AGHMN_INLINE void agru_backward_row(int64_t H, const T* __restrict go, const T* __restrict hp,
                                    const T* __restrict gt, T a, T* __restrict gx,
                                    T* __restrict gg, T* __restrict carry, T* __restrict da) {
  for (int64_t j = 0; j < H; ++j) {
    const AgruBackward<T> u =
        agru_backward_unit(go[j] + carry[j], a, gt[j], gt[H + j], gt[2 * H + j], hp[j]);
    gx[j] = u.dpr;
    gx[H + j] = u.dpn;
    gg[j] = u.dpr;
    gg[H + j] = u.dhn;
    carry[j] = u.dh_direct;
    da[j] = u.da;
  }
}

// Forward over batch rows [b0, b0 + rows). scratch: agru_scratch_size(p, rows) elements.
template <typename T, typename Isa>
AGHMN_INLINE void agru_forward_tile_impl(const AgruPlan<T>& p, const T* xproj, const T* attn,
                                         const T* h0, T* output, T* gates, int64_t b0,
                                         int64_t rows, T* scratch) {
  const int64_t T_ = p.T_, H = p.H, Np = p.Np;
  T* g = scratch;  // [rows][Np]: this step's h @ weight_hh^T + bias_hh = [hr | hn]
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = p.reverse ? T_ - 1 - s : s;
    const int64_t tp = p.reverse ? t + 1 : t - 1;
    // h_prev rows: h0 at the first step, else the previous step's output row.
    const T* hprev = s == 0 ? h0 + b0 * H : output + (b0 * T_ + tp) * H;
    const int64_t ld_h = s == 0 ? H : T_ * H;
    gemm_rows<T, Isa>(rows, H, Np, hprev, ld_h, p.wt, p.bias, 0, g, Np, s & 1);
    for (int64_t m = 0; m < rows; ++m) {
      const int64_t bt = (b0 + m) * T_ + t;
      agru_forward_row(H, xproj + bt * 2 * H, g + m * Np, hprev + m * ld_h, attn[bt],
                       gates + bt * 3 * H, output + bt * H);
    }
  }
}

// Backward over batch rows [b0, b0 + rows). scratch: agru_scratch_size(p, rows) elements.
template <typename T, typename Isa>
AGHMN_INLINE void agru_backward_tile_impl(const AgruPlan<T>& p, const T* grad_output,
                                          const T* attn, const T* h0, const T* output,
                                          const T* gates, T* grad_xproj, T* grad_attn,
                                          T* grad_ghh, T* grad_h0, int64_t b0, int64_t rows,
                                          T* scratch) {
  const int64_t T_ = p.T_, H = p.H, Hp = p.Hp;
  T* carry = scratch;          // [rows][Hp]: gradient reaching h from the steps after this one
  T* da = scratch + rows * Hp;  // [Hp]: per-unit attention-gradient terms, summed per step
  for (int64_t i = 0; i < rows * Hp + Hp; ++i) scratch[i] = T(0);
  for (int64_t s = T_ - 1; s >= 0; --s) {
    const int64_t t = p.reverse ? T_ - 1 - s : s;
    const int64_t tp = p.reverse ? t + 1 : t - 1;
    for (int64_t m = 0; m < rows; ++m) {
      const int64_t b = b0 + m, bt = b * T_ + t;
      agru_backward_row(H, grad_output + bt * H, s == 0 ? h0 + b * H : output + (b * T_ + tp) * H,
                        gates + bt * 3 * H, attn[bt], grad_xproj + bt * 2 * H,
                        grad_ghh + bt * 2 * H, carry + m * Hp, da);
      grad_attn[bt] = sum_padded<T, Isa>(da, Hp);
    }
    // carry = dh * (1 - a) + grad_ghh_t @ weight_hh, for the whole tile at once.
    gemm_rows<T, Isa>(rows, 2 * H, Hp, grad_ghh + (b0 * T_ + t) * 2 * H, T_ * 2 * H, p.wp, carry,
                      Hp, carry, Hp, s & 1);
  }
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t j = 0; j < H; ++j) grad_h0[(b0 + m) * H + j] = carry[m * Hp + j];
}

template <typename T>
inline void agru_forward_tile(const AgruPlan<T>& p, const T* xproj, const T* attn, const T* h0,
                              T* output, T* gates, int64_t b0, int64_t rows, T* scratch) {
  dispatch_isa([&](auto isa) {
    agru_forward_tile_impl<T, decltype(isa)>(p, xproj, attn, h0, output, gates, b0, rows,
                                             scratch);
  });
}

template <typename T>
inline void agru_backward_tile(const AgruPlan<T>& p, const T* grad_output, const T* attn,
                               const T* h0, const T* output, const T* gates, T* grad_xproj,
                               T* grad_attn, T* grad_ghh, T* grad_h0, int64_t b0, int64_t rows,
                               T* scratch) {
  dispatch_isa([&](auto isa) {
    agru_backward_tile_impl<T, decltype(isa)>(p, grad_output, attn, h0, output, gates,
                                              grad_xproj, grad_attn, grad_ghh, grad_h0, b0, rows,
                                              scratch);
  });
}

}  // namespace cpu
}  // namespace aghmn
