// Unit test of common/gate_rows_cpu.h, the bf16 stream kernels' gate math: the rational tanh and
// sigmoid against the exact functions (largest absolute error, range, symmetry, saturation,
// NaN), and the whole-row GRU / AGRU steps on every instruction-set variant against the same
// formula one unit at a time, bit for bit (rows shorter than, equal to and longer than a vector,
// the overlapping last vector, bf16 inputs widened in the loop, the max-pool). Prints
// "gate_rows: N checks passed" and exits 0, or prints the failures and exits 1. Built by CMake
// (ctest) and by tests/test_bf16_kernels_cpp.py.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/gate_rows_cpu.h"

namespace {

int g_checks = 0, g_failures = 0;

void check(bool ok, const char* what, double got, double want) {
  ++g_checks;
  if (ok) return;
  if (++g_failures <= 20) std::printf("FAIL %s: got %.9g want %.9g\n", what, got, want);
}

float tanh_r(float x) {
  aghmn::cpu::tanh_rational(x);
  return x;
}

float sigmoid_r(float x) {
  aghmn::cpu::sigmoid_rational(x);
  return x;
}

// The error bounds the header states (3.7e-7, 1.9e-7), over [-20, 20] in steps of 2^-12 and at
// every 4,099th float bit pattern; tanh odd, both within their ranges, the limits reached.
void test_activations() {
  double worst_tanh = 0, worst_sigmoid = 0;
  auto at = [&](float x) {
    const float t = tanh_r(x), s = sigmoid_r(x);
    if (std::isnan(x)) {
      check(std::isnan(t) && std::isnan(s), "NaN stays NaN", t, x);
      return;
    }
    worst_tanh = std::max(worst_tanh, std::fabs(t - std::tanh(static_cast<double>(x))));
    worst_sigmoid = std::max(worst_sigmoid,
                             std::fabs(s - 1.0 / (1.0 + std::exp(-static_cast<double>(x)))));
    if (!(t >= -1.0f && t <= 1.0f && s >= 0.0f && s <= 1.0f && tanh_r(-x) == -t)) {
      check(false, "tanh in [-1, 1], odd; sigmoid in [0, 1]", t, x);
    }
  };
  for (int i = -20 * 4096; i <= 20 * 4096; ++i) at(static_cast<float>(i) / 4096.0f);
  for (uint64_t bits = 0; bits < (uint64_t(1) << 32); bits += 4099) {
    float x;
    const uint32_t b = static_cast<uint32_t>(bits);
    std::memcpy(&x, &b, 4);
    at(x);
  }
  check(worst_tanh <= 3.7e-7, "tanh_rational largest absolute error", worst_tanh, 3.7e-7);
  check(worst_sigmoid <= 1.9e-7, "sigmoid_rational largest absolute error", worst_sigmoid, 1.9e-7);
  const float inf = std::numeric_limits<float>::infinity();  // saturate, within the bounds
  check(std::fabs(tanh_r(inf) - 1.0) <= 3.7e-7 && tanh_r(-inf) == -tanh_r(inf), "tanh(+-inf)",
        tanh_r(inf), 1);
  check(std::fabs(sigmoid_r(inf) - 1.0) <= 1.9e-7 && sigmoid_r(-inf) >= 0.0f &&
            sigmoid_r(-inf) <= 1.9e-7, "sigmoid(+-inf)", sigmoid_r(-inf), 0);
  check(tanh_r(0.0f) == 0.0f && std::signbit(tanh_r(-0.0f)), "tanh(+-0) = +-0", tanh_r(-0.0f), 0);
}

bool same_bits(float a, float b) {
  return std::memcmp(&a, &b, 4) == 0 || (std::isnan(a) && std::isnan(b));
}

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// The rows of one draw: inputs and, per instruction set, the outputs.
struct RowCase {
  int H;
  float a;
  std::vector<float> x, g, hp, pool, x_rounded;
  std::vector<aghmn::cpu::Bf16> x16;
};

struct RowOut {
  std::vector<float> gru, pool, gru16, gru_rounded, agru;
};

// The row functions of Isa on c; a guard value after each output must stay untouched.
template <typename Isa>
RowOut run_rows(const RowCase& c) {
  using namespace aghmn::cpu;
  const int H = c.H;
  const float guard = -12345.0f;
  RowOut o{std::vector<float>(H + 1, guard), c.pool, std::vector<float>(H + 1, guard),
           std::vector<float>(H + 1, guard), std::vector<float>(H + 1, guard)};
  gru_row_rational<Isa>(H, c.x.data(), c.g.data(), c.hp.data(), o.gru.data(), o.pool.data());
  gru_row_rational<Isa>(H, c.x16.data(), c.g.data(), c.hp.data(), o.gru16.data(), nullptr);
  gru_row_rational<Isa>(H, c.x_rounded.data(), c.g.data(), c.hp.data(), o.gru_rounded.data(),
                        nullptr);
  agru_row_rational<Isa>(H, c.x.data(), c.g.data(), c.hp.data(), c.a, o.agru.data());
  check(o.gru[H] == guard && o.gru16[H] == guard && o.agru[H] == guard, "no write past H", H, 0);
  return o;
}

// Against the exact formulas in double (finite inputs of moderate size): within 2e-6 (1 + |h|),
// the activations' error (3.7e-7) times the gates' reach (|n - h| <= 1 + |h|) plus roundings.
void check_close(const RowCase& c, const RowOut& o, const char* isa) {
  const int H = c.H;
  double worst = 0;
  for (int j = 0; j < H; ++j) {
    const double r = sig(double(c.x[j]) + c.g[j]), z = sig(double(c.x[H + j]) + c.g[H + j]);
    const double n = std::tanh(double(c.x[2 * H + j]) + r * c.g[2 * H + j]);
    const double h = (1 - z) * n + z * c.hp[j];
    const double na = std::tanh(double(c.x[H + j]) + r * c.g[H + j]);
    const double ha = c.a * na + (1 - c.a) * c.hp[j];
    const double scale = 1.0 + std::fabs(c.hp[j]);
    worst = std::max({worst, std::fabs(o.gru[j] - h) / scale, std::fabs(o.agru[j] - ha) / scale});
    check(o.pool[j] == std::max(c.pool[j], o.gru[j]), "pool = max(pool, h')", o.pool[j], j);
    check(same_bits(o.gru16[j], o.gru_rounded[j]), "bf16 input widened = its float value", j, H);
  }
  if (worst > 2e-6) std::printf("row of H = %d on %s: largest scaled error %.3g\n", H, isa, worst);
  check(worst <= 2e-6, "rows within 2e-6 (1 + |h|) of the exact GRU / AGRU step", worst, 2e-6);
}

void check_same(const RowOut& a, const RowOut& b, int H, const char* what) {
  bool same = true;
  for (int j = 0; j < H; ++j)
    same = same && same_bits(a.gru[j], b.gru[j]) && same_bits(a.pool[j], b.pool[j]) &&
           same_bits(a.gru16[j], b.gru16[j]) && same_bits(a.agru[j], b.agru[j]);
  if (!same) std::printf("row of H = %d differs: %s\n", H, what);
  check(same, what, H, 0);
}

#ifdef AGHMN_X86_DISPATCH
__attribute__((target("avx2,fma"))) RowOut rows_avx2(const RowCase& c) {
  return run_rows<aghmn::cpu::IsaAvx2>(c);
}
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))) RowOut rows_avx512(
    const RowCase& c) {
  return run_rows<aghmn::cpu::IsaAvx512>(c);
}
#endif

// Rows shorter than 4, shorter than a vector, a multiple of one and not: every instruction set
// close to the exact step; AVX-512 (16 lanes, 4 for H < 16) and AVX2 (8 lanes, 4 for H < 8)
// bit for bit equal, the promise of gate_rows_cpu.h.
void test_rows(std::mt19937& rng) {
  using namespace aghmn::cpu;
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int H : {1, 3, 4, 5, 8, 12, 13, 16, 17, 31, 40, 64, 100, 129}) {
    for (int rep = 0; rep < 40; ++rep) {
      RowCase c{H, rep % 5 == 0 ? 0.0f : std::fabs(normal(rng)) / 8.0f, std::vector<float>(3 * H),
                std::vector<float>(3 * H), std::vector<float>(H), std::vector<float>(H),
                std::vector<float>(3 * H), std::vector<Bf16>(3 * H)};
      const bool wild = rep == 7;  // any bit pattern: huge, tiny, infinite and NaN inputs
      for (auto* v : {&c.x, &c.g, &c.hp, &c.pool})
        for (float& e : *v) {
          e = normal(rng) * (rep % 4 == 0 ? 20.0f : 1.0f);
          if (wild) {
            const uint32_t b = any_bits(rng);
            std::memcpy(&e, &b, 4);
          }
        }
      for (int i = 0; i < 3 * H; ++i) {
        c.x16[i] = Bf16{bf16_bits(c.x[i])};
        c.x_rounded[i] = bf16_float(c.x16[i].bits);
      }
      const RowOut base = run_rows<IsaBaseline>(c);
      if (!wild) check_close(c, base, "baseline");
#ifdef AGHMN_X86_DISPATCH
      if (machine_isa() >= IsaLevel::kAvx2) {
        const RowOut avx2 = rows_avx2(c);
        if (!wild) check_close(c, avx2, "avx2");
        if (machine_isa() >= IsaLevel::kAvx512) {
          const RowOut avx512 = rows_avx512(c);
          if (!wild) check_close(c, avx512, "avx512");
          check_same(avx2, avx512, H, "AVX-512 rows equal AVX2 rows bit for bit");
        }
      }
#endif
    }
  }
}

}  // namespace

int main() {
  test_activations();
  std::mt19937 rng(5);
  test_rows(rng);
  if (g_failures != 0) {
    std::printf("gate_rows: %d of %d checks failed\n", g_failures, g_checks);
    return 1;
  }
  std::printf("gate_rows: %d checks passed\n", g_checks);
  return 0;
}
