// Whole-row gate math of the inference kernels on explicit vectors (no torch headers): one GRU or
// AGRU step of one row of hidden units, H at a time, with the activations of gate_math.h
// (exp_vec, sigmoid_vec, tanh_vec) written over the instruction set's float vector.
//
// Why not the scalar loop over gru_forward_unit_vec: the compiler vectorises that loop, but the
// H % W units left over (4 of H = 100 on AVX-512) run one at a time, and each costs as much as a
// whole vector (three exp polynomials and three divisions); at H = 100 that scalar tail was about
// 40% of a row. Here the tail is one more vector that ends at unit H and overlaps the one before:
// the overlapped units are computed twice, from the same inputs, to the same values.
//
// Every operation is the scalar formula's, in its order, so each unit's result is the scalar
// function's bit for bit on every instruction set, FMA contraction included (the compiler fuses
// the same multiply-adds in a vector expression as in a scalar one):
// csrc/tests/test_stream_cpu.cpp compares them on random and extreme inputs.
#pragma once
#include <cstdint>

#include "common/bf16_cpu.h"
#include "common/gate_math.h"
#include "common/gemm_cpu.h"

// The vectors pass by value only between always-inlined functions, so the compilers' note that
// such an ABI differs between instruction sets concerns no call that exists.
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace aghmn {
namespace cpu {

#ifdef AGHMN_HAVE_VECTOR_EXT
namespace gate_rows {

template <int kBytes>
struct Vecs {
  typedef float F __attribute__((vector_size(kBytes)));
  typedef int32_t I __attribute__((vector_size(kBytes)));
  typedef uint32_t U __attribute__((vector_size(kBytes)));
  typedef uint16_t Half __attribute__((vector_size(kBytes / 2)));  // as many 16-bit lanes
};

// The activations below work in place on a vector (a reference, not a value: vectors passed by
// value between functions of different instruction sets make GCC warn about the ABI).

// c ? a : b per lane (c: a comparison's all-ones / zero lanes), as detail::select.
template <typename F, typename I>
AGHMN_INLINE void select_into(F& out, const I& c, const F& a, const F& b) {
  out = (F)(((I)a & c) | ((I)b & ~c));
}

// exp_vec per lane (gate_math.h: the same clamps, constants and Horner order).
template <typename F, typename I>
AGHMN_INLINE void exp_v(F& x) {
  const float magic = 12582912.0f;  // 1.5 * 2^23
  F x_n;
  select_into<F, I>(x_n, (I)(x > 100.0f), F{} + 100.0f, x);
  select_into<F, I>(x_n, (I)(x < -100.0f), F{} - 100.0f, x_n);
  const F m = x_n * 1.44269504088896341f + magic;
  I n = (I)m - detail::float_to_bits(magic);
  n = (n & (I)(n >= -126)) | ((I{} - 126) & (I)(n < -126));
  n = (n & (I)(n <= 127)) | ((I{} + 127) & (I)(n > 127));
  const F fn = __builtin_convertvector(n, F);
  F r = x - fn * 0.693145751953125f;
  r = r - fn * 1.42860682030941723212e-6f;
  F p = F{} + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const F v = p * (F)((n + 127) << 23);
  select_into<F, I>(x, (I)(x < -87.33f), F{}, v);
}

template <typename F, typename I>
AGHMN_INLINE void sigmoid_v(F& x) {
  F e = -x;
  exp_v<F, I>(e);
  x = 1.0f / (1.0f + e);
}

// tanh_vec per lane: the odd polynomial near 0, the exp form elsewhere, the sign put back.
template <typename F, typename I>
AGHMN_INLINE void tanh_v(F& x) {
  const I sign = (I)x & static_cast<int32_t>(0x80000000u);
  const F y = (F)((I)x & 0x7fffffff);
  F e = -2.0f * y;
  exp_v<F, I>(e);
  const F far = (1.0f - e) / (1.0f + e);
  const F y2 = y * y;
  F p = F{} + 21844.0f / 6081075.0f;
  p = p * y2 - 1382.0f / 155925.0f;
  p = p * y2 + 62.0f / 2835.0f;
  p = p * y2 - 17.0f / 315.0f;
  p = p * y2 + 2.0f / 15.0f;
  p = p * y2 - 1.0f / 3.0f;
  const F near = y + y * y2 * p;
  F t;
  select_into<F, I>(t, (I)(y < 0.3f), near, far);
  // copysign: the magnitude's bits (a NaN's sign dropped too) with x's sign
  x = (F)(((I)t & 0x7fffffff) | sign);
}

template <typename F>
AGHMN_INLINE void load(F& v, const float* p) {
  __builtin_memcpy(&v, p, sizeof(F));
}

// The lanes of p widened to float (bf16_float per lane: the bits shifted into the high half).
template <typename F>
AGHMN_INLINE void load(F& v, const Bf16* p) {
  using V = Vecs<sizeof(F)>;
  typename V::Half b;
  __builtin_memcpy(&b, p, sizeof(b));
  v = (F)(__builtin_convertvector(b, typename V::U) << 16);
}

template <typename F>
AGHMN_INLINE void store(float* p, const F& v) {
  __builtin_memcpy(p, &v, sizeof(F));
}

// f(j) for the vectors of units [0, H): j = 0, W, 2W, ..., then H - W when W does not divide
// H. Needs H >= W.
template <int W, typename Fn>
AGHMN_INLINE void for_unit_vectors(int64_t H, Fn&& f) {
  int64_t j = 0;
  for (; j + W <= H; j += W) f(j);
  if (j < H) f(H - W);
}

}  // namespace gate_rows
#endif

// out[j] = gru_forward_unit_vec(x[j], x[H + j], x[2H + j], g[j], g[H + j], g[2H + j], hp[j]).h_new
// for j < H, bit for bit; with pool: pool[j] = max(pool[j], out[j]) too. out must not overlap
// the inputs (the tail vector reads units already written).
template <typename Isa, typename X>
AGHMN_INLINE void gru_row_vec(int64_t H, const X* __restrict x, const float* __restrict g,
                              const float* __restrict hp, float* __restrict out,
                              float* __restrict pool) {
#ifdef AGHMN_HAVE_VECTOR_EXT
  constexpr int W = Isa::kBytes / 4;
  using F = typename gate_rows::Vecs<Isa::kBytes>::F;
  using I = typename gate_rows::Vecs<Isa::kBytes>::I;
  if (H >= W) {
    gate_rows::for_unit_vectors<W>(H, [&](int64_t j) {
      using namespace gate_rows;
      F xr, xz, xn, gr, gz, gn, h;
      load(xr, x + j), load(xz, x + H + j), load(xn, x + 2 * H + j);
      load(gr, g + j), load(gz, g + H + j), load(gn, g + 2 * H + j), load(h, hp + j);
      F r = xr + gr, z = xz + gz;
      sigmoid_v<F, I>(r);
      sigmoid_v<F, I>(z);
      F n = xn + r * gn;
      tanh_v<F, I>(n);
      h = (1.0f - z) * n + z * h;
      store(out + j, h);
      if (pool != nullptr) {
        F p;
        load(p, pool + j);
        select_into<F, I>(p, (I)(p < h), h, p);
        store(pool + j, p);
      }
    });
    return;
  }
#endif
  for (int64_t j = 0; j < H; ++j) {
    const float h = gru_forward_unit_vec(from_storage<float>(x[j]), from_storage<float>(x[H + j]),
                                         from_storage<float>(x[2 * H + j]), g[j], g[H + j],
                                         g[2 * H + j], hp[j]).h_new;
    out[j] = h;
    if (pool != nullptr) pool[j] = pool[j] < h ? h : pool[j];
  }
}

// out[j] = agru_forward_unit_vec(x[j], x[H + j], g[j], g[H + j], a, hp[j]).h_new for j < H, bit
// for bit. out must not overlap the inputs.
template <typename Isa>
AGHMN_INLINE void agru_row_vec(int64_t H, const float* __restrict x, const float* __restrict g,
                               const float* __restrict hp, float a, float* __restrict out) {
#ifdef AGHMN_HAVE_VECTOR_EXT
  constexpr int W = Isa::kBytes / 4;
  using F = typename gate_rows::Vecs<Isa::kBytes>::F;
  using I = typename gate_rows::Vecs<Isa::kBytes>::I;
  if (H >= W) {
    gate_rows::for_unit_vectors<W>(H, [&](int64_t j) {
      using namespace gate_rows;
      F xr, xn, gr, gn, h;
      load(xr, x + j), load(xn, x + H + j), load(gr, g + j), load(gn, g + H + j), load(h, hp + j);
      F r = xr + gr;
      sigmoid_v<F, I>(r);
      F n = xn + r * gn;
      tanh_v<F, I>(n);
      h = a * n + (1.0f - a) * h;
      store(out + j, h);
    });
    return;
  }
#endif
  for (int64_t j = 0; j < H; ++j)
    out[j] = agru_forward_unit_vec(x[j], x[H + j], g[j], g[H + j], a, hp[j]).h_new;
}

}  // namespace cpu
}  // namespace aghmn

#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic pop
#endif
