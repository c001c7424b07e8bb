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

// ---- AGRU, one hidden unit j of one step -------------------------------------------------
// Forward: r = s(xr + hr), n = tanh(xn + r * hn), h' = a * n + (1 - a) * h.
template <typename T>
struct AgruForward {
  T r, n, h_new;
};

template <typename T>
AGHMN_HD AgruForward<T> agru_forward_unit(T xr, T xn, T hr, T hn, T a, T h) {
  AgruForward<T> o;
  o.r = sigmoid(xr + hr);
  o.n = tanh_(xn + o.r * hn);
  o.h_new = a * o.n + (T(1) - a) * h;
  return o;
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

template <typename T>
AGHMN_HD GruForward<T> gru_forward_unit(T pr, T pz, T pn, T hr, T hz, T hn, T h) {
  GruForward<T> o;
  o.r = sigmoid(pr + hr);
  o.z = sigmoid(pz + hz);
  o.n = tanh_(pn + o.r * hn);
  o.h_new = (T(1) - o.z) * o.n + o.z * h;
  return o;
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

}  // namespace aghmn
