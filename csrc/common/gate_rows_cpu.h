// The gate math of the bf16 stream kernels (no torch headers): one GRU or AGRU step of a whole
// row of hidden units on explicit vectors, with rational activations.
//
// Why a second gate math: a bf16 round spends as long in the gates as in its GEMMs once
// vdpbf16ps has halved them (issue 30). gate_math.h's activations cost three exp polynomials and
// three divisions per GRU unit (about 100 vector operations), and the loop the compiler
// vectorises runs the H % W leftover units (4 of H = 100 on AVX-512) one at a time, each as dear
// as a whole vector. Here:
// - tanh is a [13/6] rational function on [-c, c] (c = 7.9988..., where it reaches 1 in float),
//   14 vector operations and one division, and sigmoid(x) = 0.5 + 0.5 tanh(x / 2); largest
//   absolute error against the exact functions 3.7e-7 (tanh) and 1.9e-7 (sigmoid), a few float
//   ulps of 1 and far below a bf16 ulp (2^-8 relative), the rounding every bf16 ring slot and
//   GEMM input carries anyway (csrc/tests/test_gate_rows.cpp checks the bounds);
// - a row is vectors of W units, and the leftover units are one more vector that ends at unit H
//   and overlaps the one before (the overlapped units are computed twice, to the same values).
// fp32 kernels keep gate_math.h, so their results do not move.
//
// Each formula is written once, over F = float or a vector of floats, in place. Every operation
// is elementwise and IEEE, and rows are vectors on every instruction set (for_unit_vectors), so
// AVX-512 and AVX2, whose multiply-adds are fused alike, give the same bits; the baseline (SSE2)
// has no FMA, so its roundings differ in the last place.
#pragma once
#include <cstdint>
#include <type_traits>

#include "common/bf16_cpu.h"
#include "common/gemm_cpu.h"

// Vectors pass by reference, never by value: a vector argument or return value between
// functions of different instruction sets makes GCC and Clang warn that the ABI differs.
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace aghmn {
namespace cpu {

// tanh(x) in place: odd [13/6] rational function of x clamped to [-c, c] (the coefficients of
// Eigen's float tanh); a NaN stays a NaN (the clamps compare it false and keep it).
template <typename F>
AGHMN_INLINE void tanh_rational(F& x) {
  const float c = 7.99881172180175781f;
  x = x > c ? F{} + c : x;
  x = x < -c ? F{} - c : x;
  const F x2 = x * x;
  F p = F{} - 2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  F q = F{} + 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  x = x * p / q;
}

// sigmoid(x) = 0.5 + 0.5 tanh(x / 2), in place.
template <typename F>
AGHMN_INLINE void sigmoid_rational(F& x) {
  x = 0.5f * x;
  tanh_rational(x);
  x = 0.5f + 0.5f * x;
}

// One GRU unit (or a vector of them): PyTorch's gates r, z, n (gate_math.h: gru_forward_over)
// with the rational activations; h is h_prev in, h' out.
template <typename F>
AGHMN_INLINE void gru_unit_rational(const F& pr, const F& pz, const F& pn, const F& hr,
                                    const F& hz, const F& hn, F& h) {
  F r = pr + hr, z = pz + hz;
  sigmoid_rational(r);
  sigmoid_rational(z);
  F n = pn + r * hn;
  tanh_rational(n);
  h = (1.0f - z) * n + z * h;
}

// One AGRU unit (gate_math.h: agru_forward_over) with the rational activations; h in and out.
template <typename F>
AGHMN_INLINE void agru_unit_rational(const F& xr, const F& xn, const F& hr, const F& hn, float a,
                                     F& h) {
  F r = xr + hr;
  sigmoid_rational(r);
  F n = xn + r * hn;
  tanh_rational(n);
  h = a * n + (1.0f - a) * h;
}

namespace gate_rows {

AGHMN_INLINE void load(float& v, const float* p) { v = *p; }
AGHMN_INLINE void load(float& v, const Bf16* p) { v = bf16_float(p->bits); }
AGHMN_INLINE void store(float* p, const float& v) { *p = v; }

#ifdef AGHMN_HAVE_VECTOR_EXT
template <int kBytes>
struct Vecs {
  typedef float F __attribute__((vector_size(kBytes)));
  typedef uint32_t U __attribute__((vector_size(kBytes)));
  typedef uint16_t Half __attribute__((vector_size(kBytes / 2)));  // as many 16-bit lanes
};

template <typename F>
AGHMN_INLINE void load(F& v, const float* p) {
  __builtin_memcpy(&v, p, sizeof(F));
}

// The lanes of p widened to float (bf16_float per lane: the bits into the high half).
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
#endif

// f(tag, j) for every vector of units j .. j + V - 1 of a row of H: j = 0, V, 2V, ..., then
// H - V when V does not divide H; tag is a null pointer to the vector type. V is the
// instruction set's width W, or 4 when H < W: a row is vectors whenever H >= 4, on every
// instruction set, because the compilers need not contract and fold a float expression as they
// do the same expression on vectors (GCC, given a constant a, fused a * n + (1 - a) * h
// differently on floats), while vectors of any width give the same bits. Rows of H < 4 (no
// model has them) run unit by unit, tag a null float*.
template <typename Isa, typename Fn>
AGHMN_INLINE void for_unit_vectors(int64_t H, Fn&& f) {
#ifdef AGHMN_HAVE_VECTOR_EXT
  auto run = [&](auto tag, int64_t V) {
    int64_t j = 0;
    for (; j + V <= H; j += V) f(tag, j);
    if (j < H) f(tag, H - V);
  };
  constexpr int W = Isa::kBytes / 4;
  if (H >= W) return run(static_cast<typename Vecs<Isa::kBytes>::F*>(nullptr), W);
  if (H >= 4) return run(static_cast<typename Vecs<16>::F*>(nullptr), 4);
#endif
  for (int64_t j = 0; j < H; ++j) f(static_cast<float*>(nullptr), j);
}

}  // namespace gate_rows

// out[0:H) = the GRU step of a row (gru_unit_rational per unit) from the input projections x
// [3H] (float, or a bf16 ring row widened as it is read), the recurrent projections g [3H] and
// the state hp [H]; with pool, pool[j] = max(pool[j], out[j]) too. out must not overlap the
// inputs (the overlapping last vector reads units already written).
template <typename Isa, typename X>
AGHMN_INLINE void gru_row_rational(int64_t H, const X* __restrict x, const float* __restrict g,
                                   const float* __restrict hp, float* __restrict out,
                                   float* __restrict pool) {
  gate_rows::for_unit_vectors<Isa>(H, [&](auto tag, int64_t j) {
    using namespace gate_rows;
    using F = std::remove_pointer_t<decltype(tag)>;
    F pr, pz, pn, hr, hz, hn, h;
    load(pr, x + j), load(pz, x + H + j), load(pn, x + 2 * H + j);
    load(hr, g + j), load(hz, g + H + j), load(hn, g + 2 * H + j), load(h, hp + j);
    gru_unit_rational(pr, pz, pn, hr, hz, hn, h);
    store(out + j, h);
    if (pool != nullptr) {
      F p;
      load(p, pool + j);
      p = p < h ? h : p;
      store(pool + j, p);
    }
  });
}

// out[0:H) = the AGRU step of a row (agru_unit_rational per unit) with attention weight a; x
// [2H], g [2H], hp [H]. out must not overlap the inputs.
template <typename Isa>
AGHMN_INLINE void agru_row_rational(int64_t H, const float* __restrict x,
                                    const float* __restrict g, const float* __restrict hp,
                                    float a, float* __restrict out) {
  gate_rows::for_unit_vectors<Isa>(H, [&](auto tag, int64_t j) {
    using namespace gate_rows;
    using F = std::remove_pointer_t<decltype(tag)>;
    F xr, xn, hr, hn, h;
    load(xr, x + j), load(xn, x + H + j), load(hr, g + j), load(hn, g + H + j), load(h, hp + j);
    agru_unit_rational(xr, xn, hr, hn, a, h);
    store(out + j, h);
  });
}

}  // namespace cpu
}  // namespace aghmn

#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic pop
#endif
