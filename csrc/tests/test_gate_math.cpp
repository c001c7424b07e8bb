// Unit test of common/gate_math.h, the per-unit gate math that the CPU and CUDA kernels share:
// forward against the plain formulas, backward against central finite differences (double) and
// against the double results (float); the vectorisable float activations at their extremes
// against libm, and exp_vec bit for bit against its formula before the input clamp. Prints
// "gate_math: N checks passed" and exits 0, or prints every failure and exits 1. Built by CMake
// (ctest) and by tests/test_gate_math.py; also valid as CUDA host code (nvcc -x cu), where the
// helpers are __host__ __device__.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>

#include "common/gate_math.h"

namespace {

int g_checks = 0, g_failures = 0;

void check(bool ok, const char* what, double got, double want, int sample) {
  ++g_checks;
  if (ok) return;
  ++g_failures;
  std::printf("FAIL %s (sample %d): got %.17g want %.17g\n", what, sample, got, want);
}

void close(const char* what, double got, double want, double rtol, double atol, int sample) {
  check(std::isfinite(got) && std::fabs(got - want) <= atol + rtol * std::fabs(want), what, got,
        want, sample);
}

// One AGRU unit: every input of agru_forward_unit plus the incoming gradient dh of h'.
struct AgruPoint {
  double xr, xn, hr, hn, a, h, dh;
};

double agru_h_new(const AgruPoint& p) {
  return aghmn::agru_forward_unit(p.xr, p.xn, p.hr, p.hn, p.a, p.h).h_new;
}

// Central difference of dh * h'(p) along the field `f` of p, for h' = h_new(p).
template <class P>
double central_difference(P p, double P::*f, double (*h_new)(const P&)) {
  const double eps = 1e-6, base = p.*f;
  p.*f = base + eps;
  const double up = h_new(p);
  p.*f = base - eps;
  const double down = h_new(p);
  return p.dh * (up - down) / (2 * eps);
}

double agru_fd(const AgruPoint& p, double AgruPoint::*f) {
  return central_difference(p, f, agru_h_new);
}

template <typename T>
aghmn::AgruBackward<T> agru_grads(const AgruPoint& p) {
  const auto f = aghmn::agru_forward_unit<T>(T(p.xr), T(p.xn), T(p.hr), T(p.hn), T(p.a), T(p.h));
  return aghmn::agru_backward_unit<T>(T(p.dh), T(p.a), f.r, f.n, T(p.hn), T(p.h));
}

void test_agru(const AgruPoint& p, int sample) {
  // Forward against the formulas of docs/OPS.md.
  const double r = 1 / (1 + std::exp(-(p.xr + p.hr)));
  const double n = std::tanh(p.xn + r * p.hn);
  const auto f = aghmn::agru_forward_unit(p.xr, p.xn, p.hr, p.hn, p.a, p.h);
  close("agru r", f.r, r, 1e-15, 1e-15, sample);
  close("agru n", f.n, n, 1e-15, 1e-15, sample);
  close("agru h_new", f.h_new, p.a * n + (1 - p.a) * p.h, 1e-15, 1e-15, sample);

  // Backward against finite differences: xr and hr enter only through their sum, so dpr is the
  // gradient of both; hn's gradient is dhn; a's is da; h's direct part is dh_direct.
  const auto g = agru_grads<double>(p);
  const double rtol = 1e-6, atol = 1e-8;
  close("agru dpr (xr)", g.dpr, agru_fd(p, &AgruPoint::xr), rtol, atol, sample);
  close("agru dpr (hr)", g.dpr, agru_fd(p, &AgruPoint::hr), rtol, atol, sample);
  close("agru dpn (xn)", g.dpn, agru_fd(p, &AgruPoint::xn), rtol, atol, sample);
  close("agru dhn", g.dhn, agru_fd(p, &AgruPoint::hn), rtol, atol, sample);
  close("agru da", g.da, agru_fd(p, &AgruPoint::a), rtol, atol, sample);
  close("agru dh_direct", g.dh_direct, agru_fd(p, &AgruPoint::h), rtol, atol, sample);

  // float: the same arithmetic in single precision.
  const auto s = agru_grads<float>(p);
  const double frtol = 2e-5, fatol = 2e-6 * (1 + std::fabs(p.dh));
  close("agru float dpr", s.dpr, g.dpr, frtol, fatol, sample);
  close("agru float dpn", s.dpn, g.dpn, frtol, fatol, sample);
  close("agru float dhn", s.dhn, g.dhn, frtol, fatol, sample);
  close("agru float da", s.da, g.da, frtol, fatol, sample);
  close("agru float dh_direct", s.dh_direct, g.dh_direct, frtol, fatol, sample);
}

// One PyTorch-layout GRU unit.
struct GruPoint {
  double pr, pz, pn, hr, hz, hn, h, dh;
};

double gru_h_new(const GruPoint& p) {
  return aghmn::gru_forward_unit(p.pr, p.pz, p.pn, p.hr, p.hz, p.hn, p.h).h_new;
}

double gru_fd(const GruPoint& p, double GruPoint::*f) {
  return central_difference(p, f, gru_h_new);
}

template <typename T>
aghmn::GruBackward<T> gru_grads(const GruPoint& p) {
  const auto f = aghmn::gru_forward_unit<T>(T(p.pr), T(p.pz), T(p.pn), T(p.hr), T(p.hz), T(p.hn),
                                            T(p.h));
  return aghmn::gru_backward_unit<T>(T(p.dh), f.r, f.z, f.n, T(p.hn), T(p.h));
}

void test_gru(const GruPoint& p, int sample) {
  const double r = 1 / (1 + std::exp(-(p.pr + p.hr)));
  const double z = 1 / (1 + std::exp(-(p.pz + p.hz)));
  const double n = std::tanh(p.pn + r * p.hn);
  const auto f = aghmn::gru_forward_unit(p.pr, p.pz, p.pn, p.hr, p.hz, p.hn, p.h);
  close("gru r", f.r, r, 1e-15, 1e-15, sample);
  close("gru z", f.z, z, 1e-15, 1e-15, sample);
  close("gru n", f.n, n, 1e-15, 1e-15, sample);
  close("gru h_new", f.h_new, (1 - z) * n + z * p.h, 1e-15, 1e-15, sample);

  const auto g = gru_grads<double>(p);
  const double rtol = 1e-6, atol = 1e-8;
  close("gru dpr (pr)", g.dpr, gru_fd(p, &GruPoint::pr), rtol, atol, sample);
  close("gru dpr (hr)", g.dpr, gru_fd(p, &GruPoint::hr), rtol, atol, sample);
  close("gru dpz (pz)", g.dpz, gru_fd(p, &GruPoint::pz), rtol, atol, sample);
  close("gru dpz (hz)", g.dpz, gru_fd(p, &GruPoint::hz), rtol, atol, sample);
  close("gru dpn (pn)", g.dpn, gru_fd(p, &GruPoint::pn), rtol, atol, sample);
  close("gru dhn", g.dhn, gru_fd(p, &GruPoint::hn), rtol, atol, sample);
  close("gru dh_direct", g.dh_direct, gru_fd(p, &GruPoint::h), rtol, atol, sample);

  const auto s = gru_grads<float>(p);
  const double frtol = 2e-5, fatol = 2e-6 * (1 + std::fabs(p.dh));
  close("gru float dpr", s.dpr, g.dpr, frtol, fatol, sample);
  close("gru float dpz", s.dpz, g.dpz, frtol, fatol, sample);
  close("gru float dpn", s.dpn, g.dpn, frtol, fatol, sample);
  close("gru float dhn", s.dhn, g.dhn, frtol, fatol, sample);
  close("gru float dh_direct", s.dh_direct, g.dh_direct, frtol, fatol, sample);
}

// Saturated pre-activations must give finite gates (0 or 1), never NaN.
template <typename T>
void test_saturation() {
  for (T x : {T(-1000), T(-100), T(-30), T(30), T(100), T(1000)}) {
    const T s = aghmn::sigmoid(x), t = aghmn::tanh_(x);
    check(std::isfinite(s) && s >= T(0) && s <= T(1), "sigmoid saturates", s, x > 0 ? 1 : 0, 0);
    check(std::isfinite(t) && std::fabs(t) <= T(1), "tanh saturates", t, x > 0 ? 1 : -1, 0);
  }
  const auto g = aghmn::agru_backward_unit<T>(T(1), T(1), T(1), T(1), T(5), T(0));
  check(g.dpn == T(0) && g.dpr == T(0), "saturated AGRU unit has zero gate gradients", g.dpn, 0,
        0);
}

bool same_value(float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

// The vectorisable float activations far outside the polynomials' range equal the libm formulas
// (0, 1, +-1, inf, NaN). -1e7 and -1.5e7 lie where x log2(e) + 1.5 * 2^23 is a small negative
// float, whose bits minus the constant's once overflowed int inside exp_vec (UBSan: the
// csrc/tests targets under -DAGHMN_SANITIZE=ON, and tests/test_gate_math.py).
void test_vec_extremes() {
  const float inf = std::numeric_limits<float>::infinity();
  for (float x : {1e7f, 1.5e7f, 1e8f, 1e30f, 3e38f, inf, std::numeric_limits<float>::quiet_NaN()}) {
    for (float v : {x, -x}) {
      check(same_value(aghmn::exp_vec(v), std::exp(v)), "exp_vec extreme", aghmn::exp_vec(v),
            std::exp(v), 0);
      check(same_value(aghmn::sigmoid_vec(v), aghmn::sigmoid(v)), "sigmoid_vec extreme",
            aghmn::sigmoid_vec(v), aghmn::sigmoid(v), 0);
      check(same_value(aghmn::tanh_vec(v), aghmn::tanh_(v)), "tanh_vec extreme",
            aghmn::tanh_vec(v), aghmn::tanh_(v), 0);
    }
  }
}

// exp_vec as it was before its input clamp, with the bit-pattern subtraction done in unsigned
// arithmetic: what the -fwrapv builds (Python's CFLAGS for the extension, CMake's for the
// runtime) computed, without the undefined behaviour.
float exp_vec_unclamped(float x) {
  const float magic = 12582912.0f;
  const unsigned sum_bits = aghmn::detail::float_to_bits(x * 1.44269504088896341f + magic);
  int n = static_cast<int>(sum_bits - static_cast<unsigned>(aghmn::detail::float_to_bits(magic)));
  n = n < -126 ? -126 : n;
  n = n > 127 ? 127 : n;
  const float fn = static_cast<float>(n);
  float r = x - fn * 0.693145751953125f;
  r = r - fn * 1.42860682030941723212e-6f;
  float p = 1.0f / 5040.0f;
  for (float c : {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f})
    p = p * r + c;
  const float v = p * aghmn::detail::bits_to_float((n + 127) << 23);
  return aghmn::detail::select(x < -87.33f, 0.0f, v);
}

// The clamp changes no result: exp_vec equals the unclamped formula bit for bit on every 251st
// float bit pattern (every binade, both signs, inf and NaN: about 33,000 values per binade) and
// on a grid of step 2^-12 over [-100, 100] (the streaming exactness and the native runtime's
// bitwise equality with torch rest on these values).
void test_exp_vec_unchanged() {
  int differ = 0;
  float first = 0;
  auto compare = [&](float x) {
    if (aghmn::detail::float_to_bits(aghmn::exp_vec(x)) !=
            aghmn::detail::float_to_bits(exp_vec_unclamped(x)) && differ++ == 0)
      first = x;
  };
  for (uint64_t bits = 0; bits < (uint64_t(1) << 32); bits += 251)
    compare(aghmn::detail::bits_to_float(static_cast<int>(static_cast<uint32_t>(bits))));
  for (int i = -100 * 4096; i <= 100 * 4096; ++i) compare(static_cast<float>(i) / 4096.0f);
  check(differ == 0, "exp_vec bitwise equal to the unclamped formula", first, differ, 0);
}

}  // namespace

int main() {
  std::mt19937_64 rng(20240601);
  std::uniform_real_distribution<double> pre(-4, 4), state(-1, 1), unit(0, 1), grad(-2, 2);
  for (int i = 0; i < 2000; ++i) {
    // Every 10th sample uses the attention extremes a = 0 (a pad slot) and a = 1.
    const double a = i % 10 == 0 ? 0.0 : (i % 10 == 5 ? 1.0 : unit(rng));
    test_agru({pre(rng), pre(rng), pre(rng), pre(rng), a, state(rng), grad(rng)}, i);
    test_gru({pre(rng), pre(rng), pre(rng), pre(rng), pre(rng), pre(rng), state(rng), grad(rng)},
             i);
  }
  test_saturation<float>();
  test_saturation<double>();
  test_vec_extremes();
  test_exp_vec_unchanged();
  if (g_failures) {
    std::printf("gate_math: %d of %d checks FAILED\n", g_failures, g_checks);
    return 1;
  }
  std::printf("gate_math: %d checks passed\n", g_checks);
  return 0;
}
