// bf16 storage for the CPU kernels (no torch headers): the one fp32 -> bf16 rounding (round to
// nearest, ties to even), and a small GEMM whose weights are bf16 with fp32 accumulation.
//
// The GEMM's weights are packed in pairs along the reduction axis: one 32-bit word per (k pair,
// column), bf16(A[2k][n]) in the low half and bf16(A[2k+1][n]) in the high half, the layout
// vdpbf16ps reads. Its inputs are rounded to bf16 too (that instruction multiplies two bf16
// operands), and every instruction set computes the same thing in the same order:
//     acc += A[2k+1][n] * in[2k+1];  acc += A[2k][n] * in[2k]     (k = 0, 1, ...)
// where each product of two bf16 values is exact in fp32, so an FMA, a multiply-add and
// vdpbf16ps round alike (vdpbf16ps flushes denormals: results differ only when one occurs).
// With avx512_bf16 (IsaAvx512Bf16) it is one vdpbf16ps per 16 columns and k pair; otherwise the
// pair word is split into two fp32 vectors by a shift and a mask (no conversion instruction).
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/gemm_cpu.h"

#ifdef AGHMN_X86_DISPATCH
#include <immintrin.h>
#endif

namespace aghmn {
namespace cpu {

// Storage tag of a bf16 tensor (its bits); the kernels compute in fp32.
struct Bf16 {
  uint16_t bits;
};

template <typename S>
constexpr bool is_bf16() { return std::is_same<S, Bf16>::value; }

// The float32 bits u rounded to bf16 (the result's low 16 bits are 0): round to nearest, ties
// to even; a NaN stays a (quiet) NaN of the same sign. Branch-free, so loops over it vectorise.
AGHMN_INLINE uint32_t bf16_round_u32(uint32_t u) {
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  const uint32_t quiet = (u & 0xffff0000u) | 0x00400000u;
  return (u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded;
}

// fp32 -> bf16 bits (bf16_round_u32).
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(bf16_round_u32(u) >> 16);
}

inline float bf16_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A value of the compute type T as stored in S, and back (identity when S is T).
template <typename S, typename T>
AGHMN_INLINE S to_storage(T x) {
  if constexpr (is_bf16<S>())
    return Bf16{bf16_bits(static_cast<float>(x))};
  else
    return static_cast<S>(x);
}

template <typename T, typename S>
AGHMN_INLINE T from_storage(S x) {
  if constexpr (is_bf16<S>())
    return static_cast<T>(bf16_float(x.bits));
  else
    return static_cast<T>(x);
}

// Elements (32-bit words for bf16) of a packed [K][Np] weight matrix stored as S. A bf16 matrix
// is its pair words [Kh][Np] (Kh = (K + 1) / 2), then the same values as floats [2 Kh][Np] in
// the order the sum takes them (row 2 k2: the pair's high half, 2 k2 + 1: its low half): the
// GEMM of a tile of rows without vdpbf16ps reads those, as the fp32 GEMM does, instead of
// splitting each pair word with two integer operations per vector (10% slower than fp32 on
// AVX2, whose fp32 GEMM is at its FMA floor). Three times the pair words' bytes in memory (1.5x
// the fp32 packed weights); the model file holds bf16 only.
template <typename S>
constexpr int64_t packed_matrix_size(int64_t K, int64_t Np) {
  return is_bf16<S>() ? 3 * ((K + 1) / 2) * Np : K * Np;
}

// A[k2][i] = the pair (W[i][2 k2], W[i][2 k2 + 1]) in bf16 (0 beyond column N or row K): W
// [N][K] transposed as pack_transposed does, in the pair layout above; then the float copy.
inline void pack_transposed_bf16(const float* W, int64_t N, int64_t K, int64_t Np, uint32_t* A) {
  const int64_t Kh = (K + 1) / 2;
  float* expanded = reinterpret_cast<float*>(A + Kh * Np);
  for (int64_t k2 = 0; k2 < Kh; ++k2) {
    uint32_t* __restrict a = A + k2 * Np;
    float* __restrict hi_row = expanded + 2 * k2 * Np;
    float* __restrict lo_row = hi_row + Np;
    const int64_t k = 2 * k2;
    for (int64_t i = 0; i < N; ++i) {
      const uint32_t lo = bf16_bits(W[i * K + k]);
      const uint32_t hi = k + 1 < K ? bf16_bits(W[i * K + k + 1]) : 0u;
      a[i] = lo | (hi << 16);
      hi_row[i] = bf16_float(static_cast<uint16_t>(hi));
      lo_row[i] = bf16_float(static_cast<uint16_t>(lo));
    }
    for (int64_t i = N; i < Np; ++i) a[i] = 0u, hi_row[i] = 0.0f, lo_row[i] = 0.0f;
  }
}

#ifdef AGHMN_X86_DISPATCH
// Not always_inline: GCC refuses to inline a function of a wider target into its callers (all
// templates without one); one call per register tile costs nothing next to its k loop.
template <int MR, int NV>
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16"))) void
gemm_tile_dpbf16(int64_t Kh, const uint32_t* in, int64_t ld_in, const uint32_t* A, int64_t lda,
                 const float* init, int64_t ld_init, float* out, int64_t ld_out) {
  __m512 acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_loadu_ps(init + m * ld_init + v * 16);
  for (int64_t k = 0; k < Kh; ++k) {
    __m512bh a[NV];
    for (int v = 0; v < NV; ++v)
      a[v] = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(A + k * lda + v * 16));
    for (int m = 0; m < MR; ++m) {
      const __m512bh s = (__m512bh)_mm512_set1_epi32(static_cast<int>(in[m * ld_in + k]));
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], a[v], s);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + m * ld_out + v * 16, acc[m][v]);
}
#endif

// out[m][0:NV vectors) = init_m + sum over k pairs. in: with vdpbf16ps the bf16 pair words
// [M][Kh]; otherwise the inputs rounded to bf16 as floats [M][2 Kh] (viewed as words: a
// broadcast from memory per value, as the fp32 GEMM does, and no conversion in the loop).
template <typename Isa, int MR, int NV>
AGHMN_INLINE void gemm_tile_bf16(int64_t Kh, const uint32_t* in, int64_t ld_in, const uint32_t* A,
                                 int64_t lda, const float* init, int64_t ld_init, float* out,
                                 int64_t ld_out) {
#ifdef AGHMN_X86_DISPATCH
  if constexpr (Isa::kBf16Dot) {
    gemm_tile_dpbf16<MR, NV>(Kh, in, ld_in, A, lda, init, ld_init, out, ld_out);
    return;
  }
#endif
#ifdef AGHMN_HAVE_VECTOR_EXT
  using V = typename VecOf<float, Isa::kBytes>::type;
  using VU = typename VecOf<uint32_t, Isa::kBytes>::type;
  constexpr int W = Isa::kBytes / 4;
  V acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = *reinterpret_cast<const V*>(init + m * ld_init + v * W);
  for (int64_t k = 0; k < Kh; ++k) {
    V lo[NV], hi[NV];
    for (int v = 0; v < NV; ++v) {
      const VU a = *reinterpret_cast<const VU*>(A + k * lda + v * W);
      lo[v] = (V)(a << 16);
      hi[v] = (V)(a & 0xffff0000u);
    }
    for (int m = 0; m < MR; ++m) {
      const float* pair = reinterpret_cast<const float*>(in + m * ld_in + 2 * k);
      const float s_lo = pair[0], s_hi = pair[1];
      for (int v = 0; v < NV; ++v) {
        acc[m][v] += hi[v] * s_hi;
        acc[m][v] += lo[v] * s_lo;
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V*>(out + m * ld_out + v * W) = acc[m][v];
#else
  constexpr int W = Isa::kBytes / 4;
  float acc[MR][NV * W];
  for (int m = 0; m < MR; ++m)
    for (int c = 0; c < NV * W; ++c) acc[m][c] = init[m * ld_init + c];
  for (int64_t k = 0; k < Kh; ++k)
    for (int m = 0; m < MR; ++m) {
      const float* pair = reinterpret_cast<const float*>(in + m * ld_in + 2 * k);
      for (int c = 0; c < NV * W; ++c) {
        const uint32_t a = A[k * lda + c];
        acc[m][c] += bf16_float(static_cast<uint16_t>(a >> 16)) * pair[1];
        acc[m][c] += bf16_float(static_cast<uint16_t>(a)) * pair[0];
      }
    }
  for (int m = 0; m < MR; ++m)
    for (int c = 0; c < NV * W; ++c) out[m * ld_out + c] = acc[m][c];
#endif
}

template <typename Isa, int MR, int NV>
AGHMN_INLINE void gemm_tile_bf16_nv(int nv, int64_t Kh, const uint32_t* in, int64_t ld_in,
                                    const uint32_t* A, int64_t lda, const float* init,
                                    int64_t ld_init, float* out, int64_t ld_out) {
  if constexpr (NV > 1) {
    if (nv < NV)
      return gemm_tile_bf16_nv<Isa, MR, NV - 1>(nv, Kh, in, ld_in, A, lda, init, ld_init, out,
                                                ld_out);
  }
  gemm_tile_bf16<Isa, MR, NV>(Kh, in, ld_in, A, lda, init, ld_init, out, ld_out);
}

template <typename Isa, int MR>
AGHMN_INLINE void gemm_tile_bf16_mr(int mr, int nv, int64_t Kh, const uint32_t* in,
                                    int64_t ld_in, const uint32_t* A, int64_t lda,
                                    const float* init, int64_t ld_init, float* out,
                                    int64_t ld_out) {
  if constexpr (MR > 1) {
    if (mr < MR)
      return gemm_tile_bf16_mr<Isa, MR - 1>(mr, nv, Kh, in, ld_in, A, lda, init, ld_init, out,
                                            ld_out);
  }
  gemm_tile_bf16_nv<Isa, MR, Isa::kVecs>(nv, Kh, in, ld_in, A, lda, init, ld_init, out, ld_out);
}

// gemm_rows (gemm_cpu.h) with A packed by pack_transposed_bf16: the same blocking (and the same
// `backwards` walk for a single row); in is fp32, rounded to bf16 pairs first. Without
// vdpbf16ps, a tile of at least kRows rows runs gemm_rows itself on the float copy of A, its
// inputs rounded and each pair swapped to the copy's order: the same products, added in the
// same order, so the same bits. A single row (one push: bound by the bytes of A) reads the pair
// words, half the bytes.
template <typename Isa>
AGHMN_INLINE void gemm_rows_bf16(int64_t M, int64_t K, int64_t Np, const float* in, int64_t ld_in,
                                 const uint32_t* A, const float* init, int64_t ld_init, float* out,
                                 int64_t ld_out, bool backwards = false) {
  constexpr int W = Isa::kBytes / 4;
  const int64_t nvec = Np / W, Kh = (K + 1) / 2;
  if (!Isa::kBf16Dot && M >= Isa::kRows) {
    static thread_local std::vector<float> swapped;
    if (static_cast<int64_t>(swapped.size()) < M * 2 * Kh) swapped.resize(M * 2 * Kh);
    float* sin = swapped.data();
    for (int64_t m = 0; m < M; ++m) {
      const float* x = in + m * ld_in;
      uint32_t* row = reinterpret_cast<uint32_t*>(sin + m * 2 * Kh);
      for (int64_t k = 0; k < K; ++k) {
        uint32_t u;
        std::memcpy(&u, x + k, 4);
        row[k] = bf16_round_u32(u);
      }
      if (K & 1) row[K] = 0;
      for (int64_t k2 = 0; k2 < Kh; ++k2) {  // the pair's high input first (two loops: both vectorise)
        const uint32_t lo = row[2 * k2];
        row[2 * k2] = row[2 * k2 + 1];
        row[2 * k2 + 1] = lo;
      }
    }
    gemm_rows<float, Isa>(M, 2 * Kh, Np, sin, 2 * Kh,
                          reinterpret_cast<const float*>(A + Kh * Np), init, ld_init, out, ld_out,
                          backwards);
    return;
  }
  // The inputs rounded once per call (vectorised loops): bf16 pair words for vdpbf16ps (ld Kh
  // words), else rounded floats (ld 2 Kh words); a padding column is 0.
  const int64_t ld = Isa::kBf16Dot ? Kh : 2 * Kh;
  static thread_local std::vector<uint32_t> pairs;
  if (static_cast<int64_t>(pairs.size()) < M * 2 * Kh) pairs.resize(M * 2 * Kh);
  uint32_t* pin = pairs.data();
  for (int64_t m = 0; m < M; ++m) {
    const float* x = in + m * ld_in;
    if constexpr (Isa::kBf16Dot) {
      uint16_t* row = reinterpret_cast<uint16_t*>(pin + m * ld);  // little-endian pair words
      for (int64_t k = 0; k < K; ++k) {
        uint32_t u;
        std::memcpy(&u, x + k, 4);
        row[k] = static_cast<uint16_t>(bf16_round_u32(u) >> 16);
      }
      if (K & 1) row[K] = 0;
    } else {
      uint32_t* row = pin + m * ld;
      for (int64_t k = 0; k < K; ++k) {
        uint32_t u;
        std::memcpy(&u, x + k, 4);
        row[k] = bf16_round_u32(u);
      }
      if (K & 1) row[K] = 0;
    }
  }
  gemm_blocks<Isa>(
      M, nvec, backwards,
      [&](int nv, int64_t c) AGHMN_LAMBDA_INLINE {
        gemm_tile_bf16_nv<Isa, 1, Isa::kVecs1>(nv, Kh, pin, ld, A + c * W, Np, init + c * W,
                                               ld_init, out + c * W, ld_out);
      },
      [&](int mr, int nv, int64_t m0, int64_t c) AGHMN_LAMBDA_INLINE {
        gemm_tile_bf16_mr<Isa, Isa::kRows>(mr, nv, Kh, pin + m0 * ld, ld, A + c * W, Np,
                                           init + m0 * ld_init + c * W, ld_init,
                                           out + m0 * ld_out + c * W, ld_out);
      });
}

// dispatch_isa for kernels storing S: the bf16 ones may use vdpbf16ps.
template <typename S, typename F>
void dispatch_isa_for(F&& f) {
  if constexpr (is_bf16<S>())
    dispatch_isa_bf16(f);
  else
    dispatch_isa(f);
}

}  // namespace cpu
}  // namespace aghmn
