// Framework-free tests of the CPU kernel core (no torch): the vectorisable activations against
// libm, and the AGRU and window-GRU tiles (forward and backward, every instruction-set variant)
// against a naive double-precision implementation written from docs/OPS.md. Outputs are
// NaN-poisoned before each call, so an element a kernel forgets to write fails the comparison.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "agru/agru_cpu.h"
#include "window_gru/window_gru_cpu.h"

namespace {

int g_failures = 0, g_checks = 0;

void check(bool ok, const char* what, double got, double want, long index) {
  ++g_checks;
  if (!ok && g_failures < 20)
    std::printf("FAIL %s [%ld]: got %.9g want %.9g\n", what, index, got, want);
  if (!ok) ++g_failures;
}

template <typename T>
void expect_close(const char* what, const std::vector<T>& got, const std::vector<double>& want,
                  double rtol, double atol) {
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = static_cast<double>(got[i]);
    check(std::isfinite(g) && std::fabs(g - want[i]) <= atol + rtol * std::fabs(want[i]), what, g,
          want[i], static_cast<long>(i));
  }
}

template <typename T>
std::vector<T> poisoned(size_t n) {
  return std::vector<T>(n, std::numeric_limits<T>::quiet_NaN());
}

std::vector<double> randn(size_t n, double scale, std::mt19937& rng) {
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// ---- activations ---------------------------------------------------------------------------

void test_activations() {
  for (int i = -40000; i <= 40000; ++i) {
    const float x = static_cast<float>(i) * 0.0025f;  // [-100, 100]
    const double e = std::exp(static_cast<double>(x));
    if (x > -87.0f && x < 88.0f)
      check(std::fabs(aghmn::exp_vec(x) - e) <= 4e-7 * e, "exp_vec", aghmn::exp_vec(x), e, i);
    const double s = sig(x);
    check(std::fabs(aghmn::sigmoid_vec(x) - s) <= 3e-7 * s + 1e-30, "sigmoid_vec",
          aghmn::sigmoid_vec(x), s, i);
    const double t = std::tanh(static_cast<double>(x));
    check(std::fabs(aghmn::tanh_vec(x) - t) <= 3e-7 * std::fabs(t) + 1e-30, "tanh_vec",
          aghmn::tanh_vec(x), t, i);
  }
  // Saturation far outside the polynomial's range, and NaN propagation.
  for (float x : {1e6f, 1e30f, 3e38f}) {
    check(aghmn::exp_vec(-x) == 0.0f, "exp_vec(-large)", aghmn::exp_vec(-x), 0, 0);
    check(std::isinf(aghmn::exp_vec(x)), "exp_vec(large)", aghmn::exp_vec(x), 0, 0);
    check(aghmn::sigmoid_vec(x) == 1.0f && aghmn::sigmoid_vec(-x) == 0.0f, "sigmoid_vec(large)",
          aghmn::sigmoid_vec(-x), 0, 0);
    check(aghmn::tanh_vec(x) == 1.0f && aghmn::tanh_vec(-x) == -1.0f, "tanh_vec(large)",
          aghmn::tanh_vec(-x), -1, 0);
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  check(std::isnan(aghmn::exp_vec(nan)) && std::isnan(aghmn::sigmoid_vec(nan)) &&
            std::isnan(aghmn::tanh_vec(nan)),
        "NaN propagates", 0, 0, 0);
  for (float x : {1e-30f, -1e-20f, 1e-8f, 0.299999f, 0.3f, -0.3f, 9.0f, -9.0f, 0.0f})
    check(std::fabs(aghmn::tanh_vec(x) - std::tanh(static_cast<double>(x))) <=
              3e-7 * std::fabs(std::tanh(static_cast<double>(x))),
          "tanh_vec special", aghmn::tanh_vec(x), std::tanh(static_cast<double>(x)), 0);
}

// ---- AGRU ------------------------------------------------------------------------------------

struct AgruCase {
  int64_t B, T, H;
  bool reverse;
};

struct AgruRef {
  std::vector<double> out, gates, gx, ga, gg, gh0;
};

AgruRef agru_naive(const AgruCase& c, const std::vector<double>& xp, const std::vector<double>& a,
                   const std::vector<double>& w, const std::vector<double>& b,
                   const std::vector<double>& h0, const std::vector<double>& go) {
  const int64_t B = c.B, T = c.T, H = c.H;
  AgruRef r;
  r.out.assign(B * T * H, 0);
  r.gates.assign(B * T * 3 * H, 0);
  r.gx.assign(B * T * 2 * H, 0);
  r.ga.assign(B * T, 0);
  r.gg.assign(B * T * 2 * H, 0);
  r.gh0.assign(B * H, 0);
  auto step_t = [&](int64_t s) { return c.reverse ? T - 1 - s : s; };
  for (int64_t bi = 0; bi < B; ++bi) {
    std::vector<double> h(h0.begin() + bi * H, h0.begin() + (bi + 1) * H);
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = step_t(s), bt = bi * T + t;
      std::vector<double> hn(H);
      for (int64_t j = 0; j < H; ++j) {
        double gr = b[j], gn = b[H + j];
        for (int64_t k = 0; k < H; ++k) {
          gr += w[j * H + k] * h[k];
          gn += w[(H + j) * H + k] * h[k];
        }
        const double rr = sig(xp[bt * 2 * H + j] + gr);
        const double n = std::tanh(xp[bt * 2 * H + H + j] + rr * gn);
        r.gates[bt * 3 * H + j] = rr;
        r.gates[bt * 3 * H + H + j] = n;
        r.gates[bt * 3 * H + 2 * H + j] = gn;
        hn[j] = a[bt] * n + (1 - a[bt]) * h[j];
      }
      h = hn;
      for (int64_t j = 0; j < H; ++j) r.out[bt * H + j] = h[j];
    }
    std::vector<double> carry(H, 0.0);
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = step_t(s), bt = bi * T + t;
      const int64_t tp = c.reverse ? t + 1 : t - 1;
      std::vector<double> dg(2 * H), next(H);
      double da = 0;
      for (int64_t j = 0; j < H; ++j) {
        const double hp = s == 0 ? h0[bi * H + j] : r.out[(bi * T + tp) * H + j];
        const double dh = go[bt * H + j] + carry[j];
        const double rr = r.gates[bt * 3 * H + j], n = r.gates[bt * 3 * H + H + j];
        const double gn = r.gates[bt * 3 * H + 2 * H + j];
        da += dh * (n - hp);
        const double dpn = dh * a[bt] * (1 - n * n);
        const double dpr = dpn * gn * rr * (1 - rr);
        r.gx[bt * 2 * H + j] = dpr;
        r.gx[bt * 2 * H + H + j] = dpn;
        dg[j] = dpr;
        dg[H + j] = dpn * rr;
        next[j] = dh * (1 - a[bt]);
      }
      for (int64_t i = 0; i < 2 * H; ++i) {
        r.gg[bt * 2 * H + i] = dg[i];
        for (int64_t k = 0; k < H; ++k) next[k] += dg[i] * w[i * H + k];
      }
      r.ga[bt] = da;
      carry = next;
    }
    for (int64_t j = 0; j < H; ++j) r.gh0[bi * H + j] = carry[j];
  }
  return r;
}

template <typename T>
void test_agru(const AgruCase& c, double rtol, double atol, std::mt19937& rng) {
  const int64_t B = c.B, Tn = c.T, H = c.H;
  const auto xp = randn(B * Tn * 2 * H, 1.0, rng), w = randn(2 * H * H, 1.0 / std::sqrt(H), rng);
  const auto b = randn(2 * H, 0.1, rng), h0 = randn(B * H, 0.5, rng), go = randn(B * Tn * H, 1, rng);
  std::vector<double> a(B * Tn);
  std::uniform_real_distribution<double> u(0, 1);
  for (auto& x : a) x = u(rng);
  if (Tn > 1) a[0] = 0;  // a padded step
  const AgruRef ref = agru_naive(c, xp, a, w, b, h0, go);

  auto plan = aghmn::cpu::agru_plan<T>(B, Tn, H, c.reverse);
  std::vector<T> pf(aghmn::cpu::agru_forward_pack_size(plan)),
      pb(aghmn::cpu::agru_backward_pack_size(plan));
  const auto wT = cast<T>(w), bT = cast<T>(b), xT = cast<T>(xp), aT = cast<T>(a),
             h0T = cast<T>(h0), goT = cast<T>(go);
  aghmn::cpu::agru_pack_forward(plan, wT.data(), bT.data(), pf.data());
  aghmn::cpu::agru_pack_backward(plan, wT.data(), pb.data());
  for (int64_t rows : {int64_t(1), int64_t(3), B}) {  // tilings must agree (and cover B)
    auto out = poisoned<T>(B * Tn * H), gates = poisoned<T>(B * Tn * 3 * H);
    auto gx = poisoned<T>(B * Tn * 2 * H), ga = poisoned<T>(B * Tn),
         gg = poisoned<T>(B * Tn * 2 * H), gh0 = poisoned<T>(B * H);
    std::vector<T> scratch(aghmn::cpu::agru_scratch_size(plan, rows));
    for (int64_t b0 = 0; b0 < B; b0 += rows)
      aghmn::cpu::agru_forward_tile(plan, xT.data(), aT.data(), h0T.data(), out.data(),
                                    gates.data(), b0, std::min(rows, B - b0), scratch.data());
    for (int64_t b0 = 0; b0 < B; b0 += rows)
      aghmn::cpu::agru_backward_tile(plan, goT.data(), aT.data(), h0T.data(), out.data(),
                                     gates.data(), gx.data(), ga.data(), gg.data(), gh0.data(),
                                     b0, std::min(rows, B - b0), scratch.data());
    expect_close("agru output", out, ref.out, rtol, atol);
    expect_close("agru gates", gates, ref.gates, rtol, atol);
    expect_close("agru grad_xproj", gx, ref.gx, rtol, atol);
    expect_close("agru grad_attn", ga, ref.ga, rtol, atol * 10);
    expect_close("agru grad_ghh", gg, ref.gg, rtol, atol);
    expect_close("agru grad_h0", gh0, ref.gh0, rtol, atol * 10);
  }
}

// ---- window GRU --------------------------------------------------------------------------------

struct WindowRef {
  std::vector<double> out, gates, gproj, gpad, gghh;
};

WindowRef window_naive(int64_t D, int64_t Q, int64_t K, int64_t N, int64_t H,
                       const std::vector<int64_t>& win, const std::vector<double>& proj,
                       const std::vector<double>& pad, const std::vector<double>& w,
                       const std::vector<double>& b, const std::vector<double>& go) {
  WindowRef r;
  r.out.assign(D * Q * K * H, 0);
  r.gates.assign(D * Q * K * 4 * H, 0);
  r.gproj.assign(D * N * 3 * H, 0);
  r.gpad.assign(D * 3 * H, 0);
  r.gghh.assign(D * Q * K * 3 * H, 0);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t q = 0; q < Q; ++q) {
      auto slot_k = [&](int64_t s) { return d == 0 ? s : K - 1 - s; };
      std::vector<double> h(H, 0.0);
      for (int64_t s = 0; s < K; ++s) {
        const int64_t k = slot_k(s), slot = (d * Q + q) * K + k, idx = win[q * K + k];
        const double* p = idx < 0 ? &pad[d * 3 * H] : &proj[(d * N + idx) * 3 * H];
        std::vector<double> hn(H);
        for (int64_t j = 0; j < H; ++j) {
          double g[3];
          for (int gate = 0; gate < 3; ++gate) {
            g[gate] = b[d * 3 * H + gate * H + j];
            for (int64_t kk = 0; kk < H; ++kk)
              g[gate] += w[(d * 3 * H + gate * H + j) * H + kk] * h[kk];
          }
          const double rr = sig(p[j] + g[0]), z = sig(p[H + j] + g[1]);
          const double n = std::tanh(p[2 * H + j] + rr * g[2]);
          double* gt = &r.gates[slot * 4 * H];
          gt[j] = rr;
          gt[H + j] = z;
          gt[2 * H + j] = n;
          gt[3 * H + j] = g[2];
          hn[j] = (1 - z) * n + z * h[j];
        }
        h = hn;
        for (int64_t j = 0; j < H; ++j) r.out[slot * H + j] = h[j];
      }
      std::vector<double> carry(H, 0.0);
      for (int64_t s = K - 1; s >= 0; --s) {
        const int64_t k = slot_k(s), slot = (d * Q + q) * K + k, idx = win[q * K + k];
        std::vector<double> next(H), dg(3 * H);
        double* gp = idx < 0 ? &r.gpad[d * 3 * H] : &r.gproj[(d * N + idx) * 3 * H];
        for (int64_t j = 0; j < H; ++j) {
          const double hp = s == 0 ? 0.0 : r.out[((d * Q + q) * K + slot_k(s - 1)) * H + j];
          const double* gt = &r.gates[slot * 4 * H];
          const double rr = gt[j], z = gt[H + j], n = gt[2 * H + j], hn = gt[3 * H + j];
          const double dh = go[slot * H + j] + carry[j];
          const double dpn = dh * (1 - z) * (1 - n * n);
          const double dz = dh * (hp - n) * z * (1 - z);
          const double dr = dpn * hn * rr * (1 - rr);
          gp[j] += dr;
          gp[H + j] += dz;
          gp[2 * H + j] += dpn;
          dg[j] = dr;
          dg[H + j] = dz;
          dg[2 * H + j] = dpn * rr;
          next[j] = dh * z;
        }
        for (int64_t i = 0; i < 3 * H; ++i) {
          r.gghh[slot * 3 * H + i] = dg[i];
          for (int64_t kk = 0; kk < H; ++kk) next[kk] += dg[i] * w[(d * 3 * H + i) * H + kk];
        }
        carry = next;
      }
    }
  return r;
}

template <typename T>
void test_window(int64_t D, int64_t Q, int64_t K, int64_t N, int64_t H, double rtol, double atol,
                 std::mt19937& rng) {
  std::vector<int64_t> win(Q * K);
  std::uniform_int_distribution<int64_t> pick(-1, N - 1);
  for (auto& x : win) x = pick(rng);
  for (int64_t k = 0; k < K; ++k) win[k] = k < K / 2 ? -1 : 0;  // empty start, a repeated one
  const auto proj = randn(D * N * 3 * H, 1.0, rng), pad = randn(D * 3 * H, 0.1, rng);
  const auto w = randn(D * 3 * H * H, 1.0 / std::sqrt(H), rng), b = randn(D * 3 * H, 0.1, rng);
  const auto go = randn(D * Q * K * H, 1.0, rng);
  const WindowRef ref = window_naive(D, Q, K, N, H, win, proj, pad, w, b, go);

  auto plan = aghmn::cpu::window_gru_plan<T>(D, Q, K, N, H);
  std::vector<T> pf(aghmn::cpu::window_gru_forward_pack_size(plan)),
      pb(aghmn::cpu::window_gru_backward_pack_size(plan));
  const auto wT = cast<T>(w), bT = cast<T>(b), projT = cast<T>(proj), padT = cast<T>(pad),
             goT = cast<T>(go);
  aghmn::cpu::window_gru_pack_forward(plan, wT.data(), bT.data(), pf.data());
  aghmn::cpu::window_gru_pack_backward(plan, wT.data(), pb.data());
  for (int64_t rows : {int64_t(1), int64_t(5), Q}) {
    auto out = poisoned<T>(D * Q * K * H), gates = poisoned<T>(D * Q * K * 4 * H);
    auto gg = poisoned<T>(D * Q * K * 3 * H), dn = poisoned<T>(D * Q * K * H);
    auto gproj = poisoned<T>(D * N * 3 * H), gpad = poisoned<T>(D * 3 * H);
    std::vector<T> scratch(aghmn::cpu::window_gru_scratch_size(plan, rows));
    for (int64_t d = 0; d < D; ++d)
      for (int64_t q0 = 0; q0 < Q; q0 += rows)
        aghmn::cpu::window_gru_forward_tile(plan, projT.data(), padT.data(), win.data(),
                                            out.data(), gates.data(), d, q0,
                                            std::min(rows, Q - q0), scratch.data());
    for (int64_t d = 0; d < D; ++d)
      for (int64_t q0 = 0; q0 < Q; q0 += rows)
        aghmn::cpu::window_gru_backward_tile(plan, goT.data(), out.data(), gates.data(),
                                             gg.data(), dn.data(), d, q0,
                                             std::min(rows, Q - q0), scratch.data());
    std::vector<int64_t> offsets(N + 2), slots(Q * K);
    aghmn::cpu::window_inverse_index(win.data(), Q * K, N, offsets.data(), slots.data());
    for (int64_t s = 1; s < static_cast<int64_t>(slots.size()); ++s)  // increasing per bucket
      for (int64_t u = 0; u <= N; ++u)
        if (s > offsets[u] && s < offsets[u + 1]) check(slots[s - 1] < slots[s], "csr order", 0, 0, s);
    for (int64_t d = 0; d < D; ++d)
      aghmn::cpu::window_gru_scatter(plan, gg.data(), dn.data(), offsets.data(), slots.data(),
                                     gproj.data(), gpad.data(), d, 0, N + 1);
    expect_close("window output", out, ref.out, rtol, atol);
    expect_close("window gates", gates, ref.gates, rtol, atol);
    expect_close("window grad_ghh", gg, ref.gghh, rtol, atol);
    expect_close("window grad_proj", gproj, ref.gproj, rtol, atol * 10);
    expect_close("window grad_pad_proj", gpad, ref.gpad, rtol, atol * 10);
  }
}

void run_all(std::mt19937& rng) {
  const AgruCase cases[] = {{1, 1, 2, false}, {3, 5, 7, true}, {2, 9, 17, false},
                            {6, 4, 33, true}, {1, 12, 100, false}};
  for (const auto& c : cases) {
    test_agru<double>(c, 1e-10, 1e-12, rng);
    test_agru<float>(c, 2e-5, 2e-5, rng);
  }
  for (int64_t D : {1, 2}) {
    test_window<double>(D, 7, 5, 6, 9, 1e-10, 1e-12, rng);
    test_window<float>(D, 7, 5, 6, 9, 2e-5, 2e-5, rng);
    test_window<float>(D, 3, 1, 2, 20, 2e-5, 2e-5, rng);
    test_window<double>(D, 11, 4, 13, 33, 1e-10, 1e-12, rng);
  }
}

}  // namespace

int main() {
  test_activations();
  std::mt19937 rng(1234);
  using aghmn::cpu::IsaLevel;
  for (IsaLevel level : {IsaLevel::kAvx512, IsaLevel::kAvx2, IsaLevel::kBaseline}) {
    const IsaLevel used = aghmn::cpu::set_isa_limit(level);
    if (used != level) continue;  // the machine lacks it
    const int before = g_failures;
    run_all(rng);
    std::printf("instruction set level %d: %s\n", static_cast<int>(level),
                g_failures == before ? "ok" : "FAILED");
  }
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
