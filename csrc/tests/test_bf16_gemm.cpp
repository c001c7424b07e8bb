// Unit test of the bf16 GEMM of common/bf16_cpu.h (gemm_rows_bf16) on every instruction-set
// variant the machine has: vdpbf16ps, the split pair words (a single row), the float copy of a
// tile of rows (pack_transposed_bf16 writes both), all equal bit for bit to the sum written out
// in float: init, then for each k pair the high product and the low one (each product of two
// bf16 is exact in float). Odd K (a zero pad in the last pair), tiles below, at and above kRows,
// a -0 input and bias. Prints "bf16_gemm: N checks passed" and exits 0, or the failures and 1.
// Built by CMake (ctest) and by tests/test_bf16_kernels_cpp.py.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "common/bf16_cpu.h"

namespace {

int g_checks = 0, g_failures = 0;

using namespace aghmn::cpu;

float rounded(float x) { return bf16_float(bf16_bits(x)); }

// out[m][n] = init[n] + sum over k pairs of (W[n][2k+1] in[m][2k+1] then W[n][2k] in[m][2k]),
// weights and inputs rounded to bf16.
std::vector<float> reference(const std::vector<float>& W, const std::vector<float>& in,
                             const std::vector<float>& init, int M, int N, int K, int Np) {
  std::vector<float> out(M * Np);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < Np; ++n) {
      float acc = init[n];
      for (int k = 0; k < K; k += 2) {
        const float w_hi = n < N && k + 1 < K ? rounded(W[n * K + k + 1]) : 0.0f;
        const float x_hi = k + 1 < K ? rounded(in[m * K + k + 1]) : 0.0f;
        const float w_lo = n < N ? rounded(W[n * K + k]) : 0.0f;
        acc += w_hi * x_hi;
        acc += w_lo * rounded(in[m * K + k]);
      }
      out[m * Np + n] = acc;
    }
  return out;
}

template <typename Run>
void compare(const char* isa, Run&& run, int M, int K, const std::vector<float>& want) {
  const std::vector<float> got = run();
  ++g_checks;
  if (std::memcmp(got.data(), want.data(), 4 * want.size()) != 0) {
    ++g_failures;
    std::printf("FAIL %s: M = %d, K = %d differs from the written-out sum\n", isa, M, K);
  }
}

}  // namespace

int main() {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int N = 37, Np = 48;
  for (int K : {1, 2, 3, 7, 24, 25, 100})
    for (int M : {1, 3, 4, 5, 16, 17}) {
      std::vector<float> W(N * K), in(M * K), init(Np);
      for (auto* v : {&W, &in, &init})
        for (float& e : *v) e = normal(rng);
      in[0] = -0.0f;
      init[1] = -0.0f;
      std::vector<uint32_t> A(packed_matrix_size<Bf16>(K, Np));
      pack_transposed_bf16(W.data(), N, K, Np, A.data());
      const std::vector<float> want = reference(W, in, init, M, N, K, Np);
      auto with = [&](auto isa) {
        std::vector<float> out(M * Np);
        gemm_rows_bf16<decltype(isa)>(M, K, Np, in.data(), K, A.data(), init.data(), 0,
                                      out.data(), Np);
        return out;
      };
      compare("baseline", [&] { return with(IsaBaseline{}); }, M, K, want);
#ifdef AGHMN_X86_DISPATCH
      std::vector<float> got;
      auto keep = [&](auto isa) { got = with(isa); };
      if (machine_isa() >= IsaLevel::kAvx2) compare("avx2", [&] { run_avx2(keep); return got; }, M, K, want);
      if (machine_isa() >= IsaLevel::kAvx512)
        compare("avx512", [&] { run_avx512(keep); return got; }, M, K, want);
      if (machine_isa() >= IsaLevel::kAvx512Bf16)
        compare("vdpbf16ps", [&] { run_avx512bf16(keep); return got; }, M, K, want);
#endif
    }
  if (g_failures != 0) {
    std::printf("bf16_gemm: %d of %d checks failed\n", g_failures, g_checks);
    return 1;
  }
  std::printf("bf16_gemm: %d checks passed\n", g_checks);
  return 0;
}
