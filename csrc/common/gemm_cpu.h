// CPU building blocks shared by the recurrent kernels (no torch headers): a register-blocked small
// GEMM for one time step of a batch tile, weight packing, and run-time selection of the widest
// instruction set the machine has (AVX-512, AVX2+FMA, or the baseline), so that a portable build
// (no -march=native) still runs the AVX-512 code on machines that have it.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace aghmn {
namespace cpu {

#if defined(__GNUC__) || defined(__clang__)
#define AGHMN_INLINE inline __attribute__((always_inline))
// The same for a lambda's call operator. The kernels run inside run_avx512 & co., whose target
// attribute reaches only what is inlined into them: GCC's flatten inlines every call, Clang's
// (14) not a lambda passed down, which then ran as a separate function without FMA, so the same
// sum gave other bits on one path than on another (a ring store with and without its projection
// cache differed in the last place).
#define AGHMN_LAMBDA_INLINE __attribute__((always_inline))
#else
#define AGHMN_INLINE inline
#define AGHMN_LAMBDA_INLINE
#endif

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Register-blocking parameters per instruction set. kRows x kVecs accumulators (kVecs1 for a
// single row: one dependency chain per vector, so it needs more of them to hide FMA latency)
// must fit the register file: 32 zmm on AVX-512, 16 ymm/xmm otherwise.
// kBf16Dot: the bf16 GEMM (gemm_rows_bf16) uses vdpbf16ps instead of converting to fp32.
struct IsaBaseline {
  static constexpr int kBytes = 16, kRows = 4, kVecs = 2, kVecs1 = 6;
  static constexpr bool kBf16Dot = false;
};
struct IsaAvx2 {
  static constexpr int kBytes = 32, kRows = 4, kVecs = 2, kVecs1 = 6;
  static constexpr bool kBf16Dot = false;
};
struct IsaAvx512 {
  static constexpr int kBytes = 64, kRows = 4, kVecs = 4, kVecs1 = 4;
  static constexpr bool kBf16Dot = false;
};
// AVX-512 with avx512_bf16: only the bf16 kernels run it (dispatch_isa_bf16); fp32 code runs
// IsaAvx512 on such a machine, so its results do not depend on the extension.
struct IsaAvx512Bf16 : IsaAvx512 {
  static constexpr bool kBf16Dot = true;
};

// Vector width (elements) the kernels pad their packed weights to: the widest one, so a buffer
// packed once serves whichever instruction set runs.
template <typename T>
constexpr int64_t pad_width() { return 64 / static_cast<int64_t>(sizeof(T)); }

#if defined(__GNUC__) || defined(__clang__)
#define AGHMN_HAVE_VECTOR_EXT 1
// Loads and stores go through pointers to this type (unaligned, may alias T). memcpy into a
// vector local instead made GCC split 32-byte moves into 16-byte halves through the stack under
// target("avx2"), a store-forwarding stall that made the AVX2 kernels several times slower
// (docs/RESULTS.md, "Measurements behind code comments").
template <typename T, int kBytes>
struct VecOf {
  typedef T type __attribute__((vector_size(kBytes), aligned(sizeof(T)), may_alias));
};
#endif

// out[m][0:n) = init[m * ld_init + 0:n) + sum_{k<K} in[m * ld_in + k] * A[k * lda + 0:n)
// for m < MR, with n = NV vectors (a register tile). ld_init = 0 broadcasts one init row (a bias).
// init and out may alias: the whole tile is loaded before anything is stored.
template <typename T, typename Isa, int MR, int NV>
AGHMN_INLINE void gemm_tile(int64_t K, const T* in, int64_t ld_in, const T* A, int64_t lda,
                            const T* init, int64_t ld_init, T* out, int64_t ld_out) {
#ifdef AGHMN_HAVE_VECTOR_EXT
  using V = typename VecOf<T, Isa::kBytes>::type;
  constexpr int W = Isa::kBytes / sizeof(T);
  V acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v)
      acc[m][v] = *reinterpret_cast<const V*>(init + m * ld_init + v * W);
  for (int64_t k = 0; k < K; ++k) {
    V a[NV];
    for (int v = 0; v < NV; ++v) a[v] = *reinterpret_cast<const V*>(A + k * lda + v * W);
    for (int m = 0; m < MR; ++m) {
      const T s = in[m * ld_in + k];
      for (int v = 0; v < NV; ++v) acc[m][v] += a[v] * s;
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V*>(out + m * ld_out + v * W) = acc[m][v];
#else
  constexpr int W = Isa::kBytes / sizeof(T);
  T acc[MR][NV * W];
  for (int m = 0; m < MR; ++m)
    for (int c = 0; c < NV * W; ++c) acc[m][c] = init[m * ld_init + c];
  for (int64_t k = 0; k < K; ++k)
    for (int m = 0; m < MR; ++m)
      for (int c = 0; c < NV * W; ++c) acc[m][c] += in[m * ld_in + k] * A[k * lda + c];
  for (int m = 0; m < MR; ++m)
    for (int c = 0; c < NV * W; ++c) out[m * ld_out + c] = acc[m][c];
#endif
}

template <typename T, typename Isa, int MR, int NV>
AGHMN_INLINE void gemm_tile_nv(int nv, int64_t K, const T* in, int64_t ld_in, const T* A,
                               int64_t lda, const T* init, int64_t ld_init, T* out,
                               int64_t ld_out) {
  if constexpr (NV > 1) {
    if (nv < NV)
      return gemm_tile_nv<T, Isa, MR, NV - 1>(nv, K, in, ld_in, A, lda, init, ld_init, out,
                                               ld_out);
  }
  gemm_tile<T, Isa, MR, NV>(K, in, ld_in, A, lda, init, ld_init, out, ld_out);
}

template <typename T, typename Isa, int MR>
AGHMN_INLINE void gemm_tile_mr(int mr, int nv, int64_t K, const T* in, int64_t ld_in,
                               const T* A, int64_t lda, const T* init, int64_t ld_init, T* out,
                               int64_t ld_out) {
  if constexpr (MR > 1) {
    if (mr < MR)
      return gemm_tile_mr<T, Isa, MR - 1>(mr, nv, K, in, ld_in, A, lda, init, ld_init, out,
                                           ld_out);
  }
  gemm_tile_nv<T, Isa, MR, Isa::kVecs>(nv, K, in, ld_in, A, lda, init, ld_init, out, ld_out);
}

// out[m][0:Np) = init_m + in[m][0:K) @ A[0:K)[0:Np) for m < M, Np a multiple of pad_width<T>().
// Rows go in blocks of Isa::kRows, columns in blocks of at most kVecs vectors sized evenly so
// that no block is left with a single latency-bound accumulator chain; each column block of A
// is reused from L1 by every row block. The order of the sum over k is fixed (deterministic).
//
// A single row is bound by reading A from L2 (A is 80 KB for the AGRU at H = 100, L1 32-48 KB):
// `backwards` walks its column blocks last to first, so that a caller alternating it from step
// to step starts each step on the block the previous step left in L1 (fewer cycles at B = 1:
// docs/RESULTS.md, "Measurements behind code comments").
//
// The blocking alone, for any tile kernel: row(nv, c) computes the single row's vectors
// [c, c + nv); tile(mr, nv, m0, c) rows [m0, m0 + mr) of vectors [c, c + nv).
template <typename Isa, typename RowFn, typename TileFn>
AGHMN_INLINE void gemm_blocks(int64_t M, int64_t nvec, bool backwards, RowFn&& row, TileFn&& tile) {
  if (M == 1) {
    const int64_t blocks = (nvec + Isa::kVecs1 - 1) / Isa::kVecs1;
    for (int64_t i = 0; i < blocks; ++i) {
      const int64_t blk = backwards ? blocks - 1 - i : i;
      // Block blk spans vectors [nvec * blk / blocks, nvec * (blk + 1) / blocks): even sizes.
      const int64_t c = nvec * blk / blocks;
      row(static_cast<int>(nvec * (blk + 1) / blocks - c), c);
    }
    return;
  }
  const int64_t blocks = (nvec + Isa::kVecs - 1) / Isa::kVecs;
  int64_t c = 0;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int nv = static_cast<int>((nvec - c) / (blocks - blk));
    for (int64_t m0 = 0; m0 < M; m0 += Isa::kRows)
      tile(static_cast<int>(std::min<int64_t>(Isa::kRows, M - m0)), nv, m0, c);
    c += nv;
  }
}

template <typename T, typename Isa>
AGHMN_INLINE void gemm_rows(int64_t M, int64_t K, int64_t Np, const T* in, int64_t ld_in,
                            const T* A, const T* init, int64_t ld_init, T* out, int64_t ld_out,
                            bool backwards = false) {
  constexpr int W = Isa::kBytes / sizeof(T);
  gemm_blocks<Isa>(
      M, Np / W, backwards,
      [&](int nv, int64_t c) AGHMN_LAMBDA_INLINE {
        gemm_tile_nv<T, Isa, 1, Isa::kVecs1>(nv, K, in, ld_in, A + c * W, Np, init + c * W,
                                             ld_init, out + c * W, ld_out);
      },
      [&](int mr, int nv, int64_t m0, int64_t c) AGHMN_LAMBDA_INLINE {
        gemm_tile_mr<T, Isa, Isa::kRows>(mr, nv, K, in + m0 * ld_in, ld_in, A + c * W, Np,
                                         init + m0 * ld_init + c * W, ld_init,
                                         out + m0 * ld_out + c * W, ld_out);
      });
}

// Horizontal sum of x[0:n) (n a multiple of the vector width, zero-padded): vector partial sums
// then a fixed-order scalar sum, so a reduction over hidden units needs no -ffast-math.
template <typename T, typename Isa>
AGHMN_INLINE T sum_padded(const T* x, int64_t n) {
#ifdef AGHMN_HAVE_VECTOR_EXT
  using V = typename VecOf<T, Isa::kBytes>::type;
  constexpr int W = Isa::kBytes / sizeof(T);
  V acc = {};
  for (int64_t j = 0; j < n; j += W) acc += *reinterpret_cast<const V*>(x + j);
  T s = 0;
  for (int i = 0; i < W; ++i) s += acc[i];
  return s;
#else
  T s = 0;
  for (int64_t j = 0; j < n; ++j) s += x[j];
  return s;
#endif
}

// A[k][i] = W[i][k] (A is [K][Np], zero beyond column N): W [N][K] transposed for the forward
// step g = h @ W^T, whose inner loop then runs over contiguous columns. Row by row of A (strided
// reads, contiguous writes) measured faster than 16x16 blocking for these sizes (docs/RESULTS.md,
// "Measurements behind code comments").
template <typename T>
inline void pack_transposed(const T* W, int64_t N, int64_t K, int64_t Np, T* A) {
  for (int64_t k = 0; k < K; ++k) {
    T* __restrict a = A + k * Np;
    for (int64_t i = 0; i < N; ++i) a[i] = W[i * K + k];
    for (int64_t i = N; i < Np; ++i) a[i] = T(0);
  }
}

// A[i][0:Kp) = W[i][0:K), zero-padded: W [N][K] as is, for the backward step dg @ W.
template <typename T>
inline void pack_padded(const T* W, int64_t N, int64_t K, int64_t Kp, T* A) {
  for (int64_t i = 0; i < N; ++i) {
    std::memcpy(A + i * Kp, W + i * K, sizeof(T) * K);
    for (int64_t k = K; k < Kp; ++k) A[i * Kp + k] = T(0);
  }
}

// out[0:np) = b[0:n), zero beyond: a bias padded to the packed row length.
template <typename T>
inline void pack_bias(const T* b, int64_t n, int64_t np, T* out) {
  for (int64_t i = 0; i < np; ++i) out[i] = i < n ? b[i] : T(0);
}

// ---- run-time instruction-set dispatch ----------------------------------------------------
// dispatch_isa(f) calls f(IsaAvx512{}), f(IsaAvx2{}) or f(IsaBaseline{}). On x86 with GCC or
// Clang each variant is compiled inside a function with the matching target attribute, and
// `flatten` inlines the whole kernel into it, so the one portable binary holds all three.
enum class IsaLevel { kBaseline = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define AGHMN_X86_DISPATCH 1

inline IsaLevel detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return __builtin_cpu_supports("avx512bf16") ? IsaLevel::kAvx512Bf16 : IsaLevel::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return IsaLevel::kAvx2;
  return IsaLevel::kBaseline;
}

template <typename F>
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2"), flatten)) void
run_avx512(F& f) {
  f(IsaAvx512{});
}

template <typename F>
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma,bmi2"), flatten)) void
run_avx512bf16(F& f) {
  f(IsaAvx512Bf16{});
}

template <typename F>
__attribute__((target("avx2,fma,bmi2"), flatten)) void run_avx2(F& f) {
  f(IsaAvx2{});
}
#else
inline IsaLevel detect_isa() { return IsaLevel::kBaseline; }
#endif

template <typename F>
#if defined(__GNUC__) || defined(__clang__)
__attribute__((flatten))
#endif
void run_baseline(F& f) {
  f(IsaBaseline{});
}

inline IsaLevel machine_isa() {
  static const IsaLevel level = detect_isa();
  return level;
}

// The level in use: the machine's best, lowered by the environment variable AGHMN_CPU_ISA
// ("avx512": AVX-512 without the bf16 dot product, "avx2" or "baseline") or by set_isa_limit,
// so tests can run every variant on one machine.
inline IsaLevel& isa_limit() {
  static IsaLevel limit = [] {
    const char* env = std::getenv("AGHMN_CPU_ISA");
    IsaLevel want = IsaLevel::kAvx512Bf16;
    if (env != nullptr && std::strcmp(env, "avx512") == 0) want = IsaLevel::kAvx512;
    if (env != nullptr && std::strcmp(env, "avx2") == 0) want = IsaLevel::kAvx2;
    if (env != nullptr && std::strcmp(env, "baseline") == 0) want = IsaLevel::kBaseline;
    return std::min(want, machine_isa());
  }();
  return limit;
}

// Caps the level (never above what the machine has); returns the level now in use.
inline IsaLevel set_isa_limit(IsaLevel level) {
  isa_limit() = std::min(level, machine_isa());
  return isa_limit();
}

template <typename F>
void dispatch_isa(F&& f) {
#ifdef AGHMN_X86_DISPATCH
  switch (isa_limit()) {
    case IsaLevel::kAvx512Bf16:
    case IsaLevel::kAvx512:
      return run_avx512(f);
    case IsaLevel::kAvx2:
      return run_avx2(f);
    default:
      break;
  }
#endif
  run_baseline(f);
}

// dispatch_isa for the bf16 kernels: as dispatch_isa, plus IsaAvx512Bf16 where the machine has
// avx512_bf16 (and the limit allows it).
template <typename F>
void dispatch_isa_bf16(F&& f) {
#ifdef AGHMN_X86_DISPATCH
  if (isa_limit() == IsaLevel::kAvx512Bf16) return run_avx512bf16(f);
#endif
  dispatch_isa(f);
}

}  // namespace cpu
}  // namespace aghmn
