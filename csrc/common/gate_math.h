// Per-element gate math shared by the CPU and CUDA kernels (no torch, no CUDA runtime needed).
// Under nvcc these are __host__ __device__, so the CPU tests exercise the arithmetic the GPU runs.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define AGHMN_HD __host__ __device__ __forceinline__
#else
#define AGHMN_HD inline
#endif

namespace aghmn {

template <typename T>
AGHMN_HD T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

template <typename T>
AGHMN_HD T tanh_(T x) { return std::tanh(x); }

// The activations a gate formula is written over: libm's (here) or the vectorisable ones
// (VecActivations, below). Each formula is written once, over an Act; the *_unit functions use
// libm, the *_unit_vec ones the vectorisable activations.
struct LibmActivations {
  template <typename T>
  static AGHMN_HD T sigmoid(T x) { return aghmn::sigmoid(x); }
  template <typename T>
  static AGHMN_HD T tanh(T x) { return tanh_(x); }
};

// ---- AGRU, one hidden unit j of one step -------------------------------------------------
// Forward: r = s(xr + hr), n = tanh(xn + r * hn), h' = a * n + (1 - a) * h.
template <typename T>
struct AgruForward {
  T r, n, h_new;
};

template <typename Act, typename T>
AGHMN_HD AgruForward<T> agru_forward_over(T xr, T xn, T hr, T hn, T a, T h) {
  AgruForward<T> o;
  o.r = Act::sigmoid(xr + hr);
  o.n = Act::tanh(xn + o.r * hn);
  o.h_new = a * o.n + (T(1) - a) * h;
  return o;
}

template <typename T>
AGHMN_HD AgruForward<T> agru_forward_unit(T xr, T xn, T hr, T hn, T a, T h) {
  return agru_forward_over<LibmActivations>(xr, xn, hr, hn, a, h);
}

// Backward of one unit given dh (total gradient of h'): returns the gate gradients and the
// unit's contribution to the attention gradient (summed over j by the caller).
template <typename T>
struct AgruBackward {
  T dpr;      // grad of r's pre-activation (= grad xr = grad hr)
  T dpn;      // grad of n's pre-activation (= grad xn)
  T dhn;      // grad of hn (= dpn * r)
  T dh_direct;  // dh * (1 - a): the part of grad h_prev not through weight_hh
  T da;       // dh * (n - h_prev)
};

template <typename T>
AGHMN_HD AgruBackward<T> agru_backward_unit(T dh, T a, T r, T n, T hn, T h_prev) {
  AgruBackward<T> g;
  g.dpn = dh * a * (T(1) - n * n);
  g.dpr = g.dpn * hn * r * (T(1) - r);
  g.dhn = g.dpn * r;
  g.dh_direct = dh * (T(1) - a);
  g.da = dh * (n - h_prev);
  return g;
}

// ---- PyTorch-layout GRU (gates r, z, n), one hidden unit j of one step --------------------
template <typename T>
struct GruForward {
  T r, z, n, h_new;
};

template <typename Act, typename T>
AGHMN_HD GruForward<T> gru_forward_over(T pr, T pz, T pn, T hr, T hz, T hn, T h) {
  GruForward<T> o;
  o.r = Act::sigmoid(pr + hr);
  o.z = Act::sigmoid(pz + hz);
  o.n = Act::tanh(pn + o.r * hn);
  o.h_new = (T(1) - o.z) * o.n + o.z * h;
  return o;
}

template <typename T>
AGHMN_HD GruForward<T> gru_forward_unit(T pr, T pz, T pn, T hr, T hz, T hn, T h) {
  return gru_forward_over<LibmActivations>(pr, pz, pn, hr, hz, hn, h);
}

template <typename T>
struct GruBackward {
  T dpr, dpz, dpn;  // grads of the input projections (r, z, n)
  T dhn;            // grad of hn = dpn * r (the n part of grad_ghh; r and z parts equal dpr, dpz)
  T dh_direct;      // dh * z
};

template <typename T>
AGHMN_HD GruBackward<T> gru_backward_unit(T dh, T r, T z, T n, T hn, T h_prev) {
  GruBackward<T> g;
  g.dpn = dh * (T(1) - z) * (T(1) - n * n);
  g.dpz = dh * (h_prev - n) * z * (T(1) - z);
  g.dpr = g.dpn * hn * r * (T(1) - r);
  g.dhn = g.dpn * r;
  g.dh_direct = dh * z;
  return g;
}

// ---- Vectorisable variants for the CPU kernels ---------------------------------------------
// The functions above call libm, which keeps a loop over hidden units scalar (8,000 exp/tanh
// calls for one 40-step AGRU at H = 100). The float versions below are branch-free polynomials
// (the compiler vectorises loops that call them); accuracy is a few ulp, well inside fp32
// tolerances. double keeps libm: its accuracy budget is tighter and it is not the fast path.
namespace detail {

// Bits of an int as a float and back (union punning, defined by GCC, Clang and nvcc).
AGHMN_HD float bits_to_float(int i) {
  union { int i; float f; } u;
  u.i = i;
  return u.f;
}

AGHMN_HD int float_to_bits(float f) {
  union { float f; int i; } u;
  u.f = f;
  return u.i;
}

// c ? a : b as bit operations: a branch here would have the vectoriser speculate the FP work
// of the other side, which it refuses to do (-ftrapping-math), leaving the loop scalar.
AGHMN_HD float select(bool c, float a, float b) {
  const int mask = -static_cast<int>(c);
  return bits_to_float((float_to_bits(a) & mask) | (float_to_bits(b) & ~mask));
}

}  // namespace detail

// e^x for float: x = n ln2 + r, |r| <= ln2/2, degree-7 Taylor in r, 2^n built in the exponent.
// n is read from the mantissa of x log2(e) + 1.5 * 2^23 (which rounds it to an integer) and
// clamped as an integer: a float clamp of x lets GCC thread constant paths through the
// function, and the loops calling it then stay scalar on AVX2 ("control flow in loop").
// Before that, the x that n is read from (x_n) is kept in [-100, 100] by bit selects: beyond it
// n is clamped to -126 or 127 anyway, and for x < -8.7e6 the sum would be a negative float whose
// bits minus the constant's overflow int (undefined behaviour). r is computed from x itself, so
// no result changes (csrc/tests/test_gate_math.cpp compares every binade bit for bit), and the
// same loops vectorise.
// Results below FLT_MIN (x < -87.33) are flushed to 0; above FLT_MAX they overflow to inf.
AGHMN_HD float exp_vec(float x) {
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float x_n = detail::select(x < -100.0f, -100.0f, detail::select(x > 100.0f, 100.0f, x));
  int n = detail::float_to_bits(x_n * 1.44269504088896341f + magic) - detail::float_to_bits(magic);
  n = n < -126 ? -126 : n;
  n = n > 127 ? 127 : n;
  const float fn = static_cast<float>(n);
  float r = x - fn * 0.693145751953125f;  // ln2 split in two for an exact n*ln2_hi
  r = r - fn * 1.42860682030941723212e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float v = p * detail::bits_to_float((n + 127) << 23);
  return detail::select(x < -87.33f, 0.0f, v);
}

AGHMN_HD float sigmoid_vec(float x) { return 1.0f / (1.0f + exp_vec(-x)); }

// tanh for float: an odd Taylor polynomial near 0 (where 1 - e^-2|x| would cancel), the exp
// form elsewhere; both are computed and one selected, so the loop stays branch-free.
AGHMN_HD float tanh_vec(float x) {
  const float y = std::fabs(x);
  const float e = exp_vec(-2.0f * y);
  const float far = (1.0f - e) / (1.0f + e);
  const float y2 = y * y;
  float p = 21844.0f / 6081075.0f;
  p = p * y2 - 1382.0f / 155925.0f;
  p = p * y2 + 62.0f / 2835.0f;
  p = p * y2 - 17.0f / 315.0f;
  p = p * y2 + 2.0f / 15.0f;
  p = p * y2 - 1.0f / 3.0f;
  const float near = y + y * y2 * p;
  return std::copysign(detail::select(y < 0.3f, near, far), x);
}

AGHMN_HD double sigmoid_vec(double x) { return sigmoid(x); }
AGHMN_HD double tanh_vec(double x) { return tanh_(x); }

struct VecActivations {
  template <typename T>
  static AGHMN_HD T sigmoid(T x) { return sigmoid_vec(x); }
  template <typename T>
  static AGHMN_HD T tanh(T x) { return tanh_vec(x); }
};

// agru_forward_unit / gru_forward_unit with the vectorisable activations.
template <typename T>
AGHMN_HD AgruForward<T> agru_forward_unit_vec(T xr, T xn, T hr, T hn, T a, T h) {
  return agru_forward_over<VecActivations>(xr, xn, hr, hn, a, h);
}

template <typename T>
AGHMN_HD GruForward<T> gru_forward_unit_vec(T pr, T pz, T pn, T hr, T hz, T hn, T h) {
  return gru_forward_over<VecActivations>(pr, pz, pn, hr, hz, hn, h);
}

}  // namespace aghmn
