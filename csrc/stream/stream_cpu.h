// The streaming recognizer's whole per-utterance step on the CPU (inference only, no torch
// headers): BiGRU reader + max-pool + Linear/tanh, the incremental memory update (fusion GRU over
// the stored projections of the window), attention hops with the AGRU / BiAGRU / soft-attention
// summary, the classifier and softmax; then the new utterance's reader vector and fusion input
// projections are written into the conversation's ring of K slots.
//
// Weights are packed once (stream_pack) into one flat buffer, transposed and padded for the
// register-blocked small GEMM of gemm_cpu.h, so a push does no packing. Arithmetic is that of the
// training kernels (gate_math.h), so predictions match the offline model within fp32 rounding.
//
// Work that cannot change a prediction is skipped, exactly: a window slot before a
// conversation's first utterance (a pad) has attention weight exactly 0, so the AGRU leaves its
// state unchanged there (h' = 0 * n + 1 * h) and its memory-bank row is never read; the backward
// fusion direction reaches the pads last. Only the forward fusion direction feeds pads into real
// slots, and from h_0 = 0 with the constant pad input that prefix is the same for every
// conversation: its K + 1 states are computed once, at packing time.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/bf16_cpu.h"
#include "common/gate_math.h"
#include "common/gate_rows_cpu.h"
#include "common/gemm_cpu.h"

namespace aghmn {
namespace cpu {

// Model sizes. D: fusion directions (0: context-free baseline, 1: UniF, 2: BiF); S: summary
// cells (0: soft attention, 1: AGRU, 2: BiAGRU); bigru_reader false: reader vectors are given.
struct StreamDims {
  int64_t H, E, C, K, D, S, hops, max_len;
  bool bigru_reader;
};

// Element offsets of every packed block in the flat buffer (each a multiple of the vector width).
// With bf16 storage (S = Bf16) the weight matrices are pair words (bf16_cpu.h), half the
// elements; biases and the pad states stay T.
struct StreamLayout {
  int64_t W3, W2, Hp, Cp;  // padded row lengths: 3H, 2H, H, C
  int64_t reader_ih[2], reader_bih[2], reader_hh[2], reader_bhh[2], reader_proj, reader_projb;
  int64_t fusion_ih[2], fusion_bih[2], fusion_hh[2], fusion_bhh[2], pad_states;
  int64_t summary_ih[2], summary_bih[2], summary_hh[2], summary_bhh[2];
  int64_t cls, cls_b, total;
};

template <typename T, typename S = T>
inline StreamLayout stream_layout(const StreamDims& d) {
  const int64_t pw = pad_width<T>();
  StreamLayout L{};
  L.W3 = round_up(3 * d.H, pw);
  L.W2 = round_up(2 * d.H, pw);
  L.Hp = round_up(d.H, pw);
  L.Cp = round_up(d.C, pw);
  int64_t at = 0;
  auto take = [&at](int64_t n) {
    const int64_t o = at;
    at += n;
    return o;
  };
  auto mat = [](int64_t k, int64_t np) { return packed_matrix_size<S>(k, np); };
  if (d.bigru_reader) {
    for (int i = 0; i < 2; ++i) {
      L.reader_ih[i] = take(mat(d.E, L.W3));
      L.reader_bih[i] = take(L.W3);
      L.reader_hh[i] = take(mat(d.H, L.W3));
      L.reader_bhh[i] = take(L.W3);
    }
    L.reader_proj = take(mat(2 * d.H, L.Hp));
    L.reader_projb = take(L.Hp);
  }
  for (int i = 0; i < d.D; ++i) {
    L.fusion_ih[i] = take(mat(d.H, L.W3));
    L.fusion_bih[i] = take(L.W3);
    L.fusion_hh[i] = take(mat(d.H, L.W3));
    L.fusion_bhh[i] = take(L.W3);
  }
  L.pad_states = take(d.D > 0 ? (d.K + 1) * L.Hp : 0);
  for (int i = 0; i < d.S; ++i) {
    L.summary_ih[i] = take(mat(d.H, L.W2));
    L.summary_bih[i] = take(L.W2);
    L.summary_hh[i] = take(mat(d.H, L.W2));
    L.summary_bhh[i] = take(L.W2);
  }
  L.cls = take(mat(d.H, L.Cp));
  L.cls_b = take(L.Cp);
  L.total = at;
  return L;
}

// The model's weights in PyTorch layouts (contiguous). Reader and fusion GRUs: w_ih [3H, in],
// w_hh [3H, H], b_ih, b_hh [3H] per direction; AGRU cells: w_ih, w_hh [2H, H], b_ih, b_hh [2H];
// reader_proj [H, 2H]; classifier [C, H].
template <typename T>
struct StreamWeights {
  const T* reader_w_ih[2];
  const T* reader_w_hh[2];
  const T* reader_b_ih[2];
  const T* reader_b_hh[2];
  const T* reader_proj_w;
  const T* reader_proj_b;
  const T* fusion_w_ih[2];
  const T* fusion_w_hh[2];
  const T* fusion_b_ih[2];
  const T* fusion_b_hh[2];
  const T* summary_w_ih[2];
  const T* summary_w_hh[2];
  const T* summary_b_ih[2];
  const T* summary_b_hh[2];
  const T* cls_w;
  const T* cls_b;
};

// gemm_rows over a packed weight matrix of storage S (A: its offset in the T buffer).
template <typename T, typename S, typename Isa>
AGHMN_INLINE void stream_gemm(int64_t M, int64_t K, int64_t Np, const T* in, int64_t ld_in,
                              const T* A, const T* init, int64_t ld_init, T* out, int64_t ld_out,
                              bool backwards = false) {
  if constexpr (is_bf16<S>()) {
    static_assert(std::is_same<T, float>::value, "bf16 storage computes in float");
    gemm_rows_bf16<Isa>(M, K, Np, in, ld_in, reinterpret_cast<const uint32_t*>(A), init, ld_init,
                        out, ld_out, backwards);
  } else {
    gemm_rows<T, Isa>(M, K, Np, in, ld_in, A, init, ld_init, out, ld_out, backwards);
  }
}

// Packs W [N][K] (PyTorch layout) transposed into the T buffer at A, as storage S.
template <typename T, typename S>
inline void stream_pack_matrix(const T* W, int64_t N, int64_t K, int64_t Np, T* A) {
  if constexpr (is_bf16<S>())
    pack_transposed_bf16(W, N, K, Np, reinterpret_cast<uint32_t*>(A));
  else
    pack_transposed(W, N, K, Np, A);
}

// ---- one step of a tile of recurrences (no gates kept: inference) ------------------------
template <typename T>
AGHMN_INLINE void gru_infer_row(int64_t H, const T* __restrict x, const T* __restrict g,
                                const T* __restrict hp, T* __restrict out) {
  for (int64_t j = 0; j < H; ++j)
    out[j] = gru_forward_unit_vec(x[j], x[H + j], x[2 * H + j], g[j], g[H + j], g[2 * H + j],
                                  hp[j]).h_new;
}

template <typename T>
AGHMN_INLINE void gru_infer_row_max(int64_t H, const T* __restrict x, const T* __restrict g,
                                    const T* __restrict hp, T* __restrict out,
                                    T* __restrict pool) {
  for (int64_t j = 0; j < H; ++j) {
    const T h = gru_forward_unit_vec(x[j], x[H + j], x[2 * H + j], g[j], g[H + j], g[2 * H + j],
                                     hp[j]).h_new;
    out[j] = h;
    pool[j] = pool[j] < h ? h : pool[j];
  }
}

template <typename T>
AGHMN_INLINE void agru_infer_row(int64_t H, const T* __restrict x, const T* __restrict g,
                                 const T* __restrict hp, T a, T* __restrict out) {
  for (int64_t j = 0; j < H; ++j)
    out[j] = agru_forward_unit_vec(x[j], x[H + j], g[j], g[H + j], a, hp[j]).h_new;
}

// One GRU (AGRU) step of one row in a kernel storing S: the bf16 kernels run the rational
// activations on whole rows of gate_rows_cpu.h (x may be a bf16 ring row, widened as it is
// read), the others the loops above (gate_math.h), unchanged.
template <typename T, typename S, typename Isa, typename X>
AGHMN_INLINE void stream_gru_row(int64_t H, const X* __restrict x, const T* __restrict g,
                                 const T* __restrict hp, T* __restrict out,
                                 T* __restrict pool = nullptr) {
  if constexpr (is_bf16<S>()) {
    gru_row_rational<Isa>(H, x, g, hp, out, pool);
  } else if (pool != nullptr) {
    gru_infer_row_max(H, x, g, hp, out, pool);
  } else {
    gru_infer_row(H, x, g, hp, out);
  }
}

template <typename T, typename S, typename Isa>
AGHMN_INLINE void stream_agru_row(int64_t H, const T* __restrict x, const T* __restrict g,
                                  const T* __restrict hp, T a, T* __restrict out) {
  if constexpr (is_bf16<S>())
    agru_row_rational<Isa>(H, x, g, hp, a, out);
  else
    agru_infer_row(H, x, g, hp, a, out);
}

template <typename T>
AGHMN_INLINE void add_row(int64_t n, const T* __restrict x, T* __restrict y) {
  for (int64_t j = 0; j < n; ++j) y[j] += x[j];
}

// p[0:n) = softmax(z[0:n)); p may be z. n = 0 writes nothing.
template <typename T>
AGHMN_INLINE void softmax_row(int64_t n, const T* z, T* p) {
  if (n == 0) return;
  T mx = z[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, z[i]);
  T sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += (p[i] = std::exp(z[i] - mx));
  for (int64_t i = 0; i < n; ++i) p[i] /= sum;
}

// Precomputes the forward fusion direction's states over j = 0..K leading pads.
template <typename T, typename S, typename Isa>
AGHMN_INLINE void stream_pad_states_impl(const StreamDims& d, const StreamLayout& L, T* w) {
  const int64_t H = d.H, Hp = L.Hp;
  T* states = w + L.pad_states;
  std::vector<T> g(L.W3);
  for (int64_t j = 0; j < Hp; ++j) states[j] = T(0);
  for (int64_t s = 0; s < d.K; ++s) {
    const T* hp = states + s * Hp;
    T* out = states + (s + 1) * Hp;
    stream_gemm<T, S, Isa>(1, H, L.W3, hp, Hp, w + L.fusion_hh[0], w + L.fusion_bhh[0], 0,
                           g.data(), L.W3);
    stream_gru_row<T, S, Isa>(H, w + L.fusion_bih[0], g.data(), hp, out);
    for (int64_t j = H; j < Hp; ++j) out[j] = T(0);
  }
}

// Packs the weights into w (stream_layout<T, S>(d).total elements); S = Bf16 rounds the weight
// matrices to bf16 (bf16_bits).
template <typename T, typename S = T>
inline void stream_pack(const StreamDims& d, const StreamWeights<T>& src, T* w) {
  const StreamLayout L = stream_layout<T, S>(d);
  const int64_t H = d.H;
  if (d.bigru_reader) {
    for (int i = 0; i < 2; ++i) {
      stream_pack_matrix<T, S>(src.reader_w_ih[i], 3 * H, d.E, L.W3, w + L.reader_ih[i]);
      pack_bias(src.reader_b_ih[i], 3 * H, L.W3, w + L.reader_bih[i]);
      stream_pack_matrix<T, S>(src.reader_w_hh[i], 3 * H, H, L.W3, w + L.reader_hh[i]);
      pack_bias(src.reader_b_hh[i], 3 * H, L.W3, w + L.reader_bhh[i]);
    }
    stream_pack_matrix<T, S>(src.reader_proj_w, H, 2 * H, L.Hp, w + L.reader_proj);
    pack_bias(src.reader_proj_b, H, L.Hp, w + L.reader_projb);
  }
  for (int i = 0; i < d.D; ++i) {
    stream_pack_matrix<T, S>(src.fusion_w_ih[i], 3 * H, H, L.W3, w + L.fusion_ih[i]);
    pack_bias(src.fusion_b_ih[i], 3 * H, L.W3, w + L.fusion_bih[i]);
    stream_pack_matrix<T, S>(src.fusion_w_hh[i], 3 * H, H, L.W3, w + L.fusion_hh[i]);
    pack_bias(src.fusion_b_hh[i], 3 * H, L.W3, w + L.fusion_bhh[i]);
  }
  for (int i = 0; i < d.S; ++i) {
    stream_pack_matrix<T, S>(src.summary_w_ih[i], 2 * H, H, L.W2, w + L.summary_ih[i]);
    pack_bias(src.summary_b_ih[i], 2 * H, L.W2, w + L.summary_bih[i]);
    stream_pack_matrix<T, S>(src.summary_w_hh[i], 2 * H, H, L.W2, w + L.summary_hh[i]);
    pack_bias(src.summary_b_hh[i], 2 * H, L.W2, w + L.summary_bhh[i]);
  }
  stream_pack_matrix<T, S>(src.cls_w, d.C, H, L.Cp, w + L.cls);
  pack_bias(src.cls_b, d.C, L.Cp, w + L.cls_b);
  if (d.D > 0)
    dispatch_isa_for<S>([&](auto isa) { stream_pad_states_impl<T, S, decltype(isa)>(d, L, w); });
}

// One push of B conversations. Conversation b is at ring block blocks[b] (store rows
// blocks[b] * K .. + K) and has counts[b] earlier utterances; its tokens are
// tokens[tok_offsets[b] .. tok_offsets[b + 1]) (1..max_len of them), or its reader vector is
// u_given[b] when the reader is not the BiGRU. Blocks are distinct. S: the storage of the
// embedding table and the ring (T, or Bf16: bf16_bits rounds what is written).
template <typename T, typename S = T>
struct StreamBatch {
  int64_t B;
  const S* embedding;           // [V, E]
  const int64_t* tokens;        // token ids, concatenated
  const int64_t* tok_offsets;   // [B + 1]
  const T* u_given;             // [B, H] or nullptr
  const int64_t* blocks;        // [B]
  const int64_t* counts;        // [B]
  S* u_store;                   // [rows, H]
  // [max(D, 1), rows, 3H], the fusion input projections of the stored u; nullptr: no
  // projection cache: the forward tile recomputes them from u_store (stream_slot_projections),
  // bit for bit what the cache would hold, for a seventh of the state bytes (BiF).
  S* proj_store;
  int64_t store_rows;
  T* u_out;                     // [B, H]: the new utterances' reader vectors
  T* probs;                     // [B, C]
};

// Scratch of one tile, reused across calls (per thread) so a push allocates nothing.
template <typename T>
inline T* stream_scratch(int64_t n) {
  static thread_local std::vector<T> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// Reader vectors of rows b0 .. b0 + rows into u [rows][Hp].
template <typename T, typename S, typename Isa>
AGHMN_INLINE void stream_reader(const StreamDims& d, const StreamLayout& L, const T* w,
                                const StreamBatch<T, S>& in, int64_t b0, int64_t rows, T* u,
                                T* scratch) {
  const int64_t H = d.H, E = d.E, W3 = L.W3, Hp = L.Hp;
  const int64_t tok0 = in.tok_offsets[b0], ntok = in.tok_offsets[b0 + rows] - tok0;
  int64_t steps = 0;
  for (int64_t m = 0; m < rows; ++m)
    steps = std::max(steps, in.tok_offsets[b0 + m + 1] - in.tok_offsets[b0 + m]);
  T* x = scratch;                    // [ntok][E] embedded tokens
  T* proj = x + ntok * E;            // [ntok][W3] input projections of one direction
  T* g = proj + ntok * W3;           // [rows][W3]
  T* h = g + rows * W3;              // [2][rows][Hp] (double buffer)
  T* pool = h + 2 * rows * Hp;       // [rows][2H]
  for (int64_t t = 0; t < ntok; ++t) {
    const S* e = in.embedding + in.tokens[tok0 + t] * E;
    for (int64_t j = 0; j < E; ++j) x[t * E + j] = from_storage<T>(e[j]);
  }
  for (int64_t i = 0; i < rows * 2 * H; ++i) pool[i] = -std::numeric_limits<T>::infinity();
  for (int dir = 0; dir < 2; ++dir) {
    stream_gemm<T, S, Isa>(ntok, E, W3, x, E, w + L.reader_ih[dir], w + L.reader_bih[dir], 0, proj,
                           W3);
    for (int64_t i = 0; i < 2 * rows * Hp; ++i) h[i] = T(0);
    for (int64_t s = 0; s < steps; ++s) {
      T* hp = h + (s & 1) * rows * Hp;
      T* hn = h + ((s + 1) & 1) * rows * Hp;
      stream_gemm<T, S, Isa>(rows, H, W3, hp, Hp, w + L.reader_hh[dir], w + L.reader_bhh[dir], 0,
                             g, W3, s & 1);
      for (int64_t m = 0; m < rows; ++m) {
        const int64_t off = in.tok_offsets[b0 + m] - tok0;
        const int64_t len = in.tok_offsets[b0 + m + 1] - in.tok_offsets[b0 + m];
        if (s >= len) continue;  // finished: its state is never read again
        const int64_t t = dir == 0 ? s : len - 1 - s;
        stream_gru_row<T, S, Isa>(H, proj + (off + t) * W3, g + m * W3, hp + m * Hp, hn + m * Hp,
                                  pool + m * 2 * H + dir * H);
      }
    }
  }
  // The authors pad the GRU outputs to max_len with zeros before the max.
  for (int64_t m = 0; m < rows; ++m) {
    const int64_t len = in.tok_offsets[b0 + m + 1] - in.tok_offsets[b0 + m];
    if (len < d.max_len)
      for (int64_t j = 0; j < 2 * H; ++j) pool[m * 2 * H + j] = std::max(pool[m * 2 * H + j], T(0));
  }
  stream_gemm<T, S, Isa>(rows, 2 * H, Hp, pool, 2 * H, w + L.reader_proj, w + L.reader_projb, 0,
                         u, Hp);
  for (int64_t i = 0; i < rows * Hp; ++i) u[i] = tanh_vec(u[i]);
}

// Without a projection cache, a tile of fewer rows than this (the GEMM's register tile, 4 rows
// on every ISA) projects each row's whole window in one GEMM per direction, M = its real slots
// (the weights are read once per 4 slots instead of once per slot: a single push); a wider tile
// projects slot by slot, M = its rows, which needs no [rows][K][3H] buffer.
constexpr int64_t kWindowProjectionRows = 4;

template <typename T>
inline int64_t stream_scratch_size(const StreamDims& d, const StreamLayout& L, int64_t rows,
                                   int64_t ntok, bool recompute) {
  const int64_t reader = ntok * (d.E + L.W3) + rows * (L.W3 + 2 * L.Hp + 2 * d.H);
  int64_t projections = 0;
  if (recompute)
    projections = rows < kWindowProjectionRows ? d.K * (L.Hp + rows * L.W3) : rows * (L.Hp + L.W3);
  const int64_t context = rows * (d.K * L.Hp + d.K * L.W2 + L.W3 + 3 * L.Hp + d.K + L.Hp) +
                          rows * L.Cp + projections;
  return rows * L.Hp + std::max(reader, context) + 64;
}

// Largest tile: weight reuse across rows vs scratch size (and the size of `first` below).
constexpr int64_t kStreamTileRows = 16;

// The fusion input projections out [n][W3] (direction dir, bias included) of n reader vectors
// x [n][ldx]: the one GEMM behind the projection cache, its recompute and the state files. A
// row's result depends neither on n nor on the row's position (each output is the bias plus the
// products in k order, in every ISA's tile shape), so all of them give the same bits.
template <typename T, typename S, typename Isa>
AGHMN_INLINE void stream_fusion_input_projections(const StreamDims& d, const StreamLayout& L,
                                                  const T* w, int dir, int64_t n, const T* x,
                                                  int64_t ldx, T* out) {
  stream_gemm<T, S, Isa>(n, d.H, L.W3, x, ldx, w + L.fusion_ih[dir], w + L.fusion_bih[dir], 0, out,
                         L.W3);
}

// x [n] rounded in place to the storage type S, as a value read back from a store of S is.
template <typename T, typename S>
AGHMN_INLINE void round_through_storage(T* x, int64_t n) {
  if constexpr (is_bf16<S>())
    for (int64_t i = 0; i < n; ++i) x[i] = from_storage<T>(to_storage<S>(x[i]));
}

// Without a projection cache: the fusion input projections [3H] (direction dir) of slot k of
// every row whose slot k is real (k >= first[m]), into xg [nreal][W3] in row order, from the
// stored u gathered into ug [nreal][Hp]. The cache's GEMM and storage rounding (bf16: the GEMM
// rounds its input to bf16, which the stored u already is), so the result equals the cached
// projection bit for bit.
template <typename T, typename S, typename Isa, typename RowFn>
AGHMN_INLINE void stream_slot_projections(const StreamDims& d, const StreamLayout& L, const T* w,
                                          const StreamBatch<T, S>& in, int dir, int64_t rows,
                                          const int64_t* first, int64_t k, RowFn&& store_row,
                                          T* ug, T* xg) {
  const int64_t H = d.H, Hp = L.Hp, W3 = L.W3;
  int64_t n = 0;
  for (int64_t m = 0; m < rows; ++m) {
    if (k < first[m]) continue;
    const S* u = in.u_store + store_row(m, k) * H;
    for (int64_t j = 0; j < H; ++j) ug[n * Hp + j] = from_storage<T>(u[j]);
    ++n;
  }
  if (n == 0) return;
  stream_fusion_input_projections<T, S, Isa>(d, L, w, dir, n, ug, Hp, xg);
  round_through_storage<T, S>(xg, n * W3);
}

// stream_slot_projections for every real slot of each row at once (kWindowProjectionRows):
// row m's slot k into xw [rows][K][W3] at m * K + k, its window's u gathered into uw [K][Hp].
template <typename T, typename S, typename Isa, typename RowFn>
AGHMN_INLINE void stream_window_projections(const StreamDims& d, const StreamLayout& L, const T* w,
                                            const StreamBatch<T, S>& in, int dir, int64_t rows,
                                            const int64_t* first, RowFn&& store_row, T* uw,
                                            T* xw) {
  const int64_t H = d.H, K = d.K, Hp = L.Hp, W3 = L.W3;
  for (int64_t m = 0; m < rows; ++m) {
    const int64_t n = K - first[m];
    if (n == 0) continue;
    for (int64_t k = first[m]; k < K; ++k) {
      const S* u = in.u_store + store_row(m, k) * H;
      for (int64_t j = 0; j < H; ++j) uw[(k - first[m]) * Hp + j] = from_storage<T>(u[j]);
    }
    T* x = xw + (m * K + first[m]) * W3;
    stream_fusion_input_projections<T, S, Isa>(d, L, w, dir, n, uw, Hp, x);
    round_through_storage<T, S>(x, n * W3);
  }
}

// Probabilities of rows b0 .. b0 + rows (rows <= kStreamTileRows), and their reader vectors
// into in.u_out.
template <typename T, typename S, typename Isa>
AGHMN_INLINE void stream_forward_tile_impl(const StreamDims& d, const StreamLayout& L, const T* w,
                                           const StreamBatch<T, S>& in, int64_t b0, int64_t rows) {
  const int64_t H = d.H, K = d.K, Hp = L.Hp, W3 = L.W3, W2 = L.W2, C = d.C;
  const int64_t ntok = in.tok_offsets[b0 + rows] - in.tok_offsets[b0];
  const bool recompute = in.proj_store == nullptr;
  const bool whole_windows = recompute && rows < kWindowProjectionRows;
  T* const base = stream_scratch<T>(stream_scratch_size<T>(d, L, rows, ntok, recompute));
  T* e = base;                   // [rows][Hp]: the query u, then e over the hops
  T* scratch = e + rows * Hp;
  if (d.bigru_reader) {
    stream_reader<T, S, Isa>(d, L, w, in, b0, rows, e, scratch);
  } else {
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t j = 0; j < Hp; ++j) e[m * Hp + j] = j < H ? in.u_given[(b0 + m) * H + j] : T(0);
  }
  for (int64_t m = 0; m < rows; ++m) std::copy(e + m * Hp, e + m * Hp + H, in.u_out + (b0 + m) * H);

  T* logits = scratch;  // [rows][Cp] (reused after the context part)
  if (d.D > 0) {
    T* mem = scratch;                  // [rows][K][Hp]: memory bank (real slots only)
    T* xp = mem + rows * K * Hp;       // [rows][K][W2]: AGRU input projections
    T* g = xp + rows * K * W2;         // [rows][W3]
    T* h = g + rows * W3;              // [2][rows][Hp]
    T* o = h + 2 * rows * Hp;          // [rows][Hp]
    T* attn = o + rows * Hp;           // [rows][K]
    // No projection cache: u gathered and the projections, [rows][Hp] and [rows][W3] slot by
    // slot, or [K][Hp] and [rows][K][W3] for whole windows (as stream_scratch_size counts them).
    T* ug = attn + rows * K;
    T* xg = ug + (recompute ? (whole_windows ? K : rows) * Hp : 0);
    logits = xg + (recompute ? (whole_windows ? rows * K : rows) * W3 : 0);
    // First real slot of each row (K: no history), and of the tile.
    int64_t first[kStreamTileRows];
    int64_t s0 = K;
    for (int64_t m = 0; m < rows; ++m) {
      first[m] = K - std::min(in.counts[b0 + m], K);
      s0 = std::min(s0, first[m]);
    }
    auto store_row = [&](int64_t m, int64_t k) {  // store row of slot k (k >= first[m])
      const int64_t n = in.counts[b0 + m];
      return in.blocks[b0 + m] * K + (n - K + k) % K;
    };
    const int64_t P = in.store_rows * 3 * H;  // one direction of proj_store
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t k = s0; k < K; ++k) {
        T* row = mem + (m * K + k) * Hp;
        if (k >= first[m]) {
          const S* u = in.u_store + store_row(m, k) * H;
          for (int64_t j = 0; j < Hp; ++j) row[j] = j < H ? from_storage<T>(u[j]) : T(0);
        } else {
          for (int64_t j = 0; j < Hp; ++j) row[j] = T(0);
        }
      }
    if (s0 < K) {
      // Forward fusion from the shared pad prefix; rows with more pads run them as inputs.
      const T* pad_state = w + L.pad_states + s0 * Hp;
      for (int64_t m = 0; m < rows; ++m) std::copy(pad_state, pad_state + Hp, h + m * Hp);
      for (int dir = 0; dir < d.D; ++dir) {
        if (dir == 1)
          for (int64_t i = 0; i < rows * Hp; ++i) h[i] = T(0);
        if (whole_windows)
          stream_window_projections<T, S, Isa>(d, L, w, in, dir, rows, first, store_row, ug, xg);
        for (int64_t s = 0; s < K - s0; ++s) {
          const int64_t k = dir == 0 ? s0 + s : K - 1 - s;
          T* hp = h + (s & 1) * rows * Hp;
          T* hn = h + ((s + 1) & 1) * rows * Hp;
          stream_gemm<T, S, Isa>(rows, H, W3, hp, Hp, w + L.fusion_hh[dir], w + L.fusion_bhh[dir],
                                 0, g, W3, s & 1);
          if (recompute && !whole_windows)
            stream_slot_projections<T, S, Isa>(d, L, w, in, dir, rows, first, k, store_row, ug, xg);
          for (int64_t m = 0, n = 0; m < rows; ++m) {
            const bool real = k >= first[m];
            if (!real && dir == 1) continue;  // a pad after the real slots: never read
            // the ring's bf16 projections are widened inside the gate loop; recomputed ones
            // are already T (rounded through bf16 as the ring stores them)
            if (real && recompute)
              stream_gru_row<T, S, Isa>(H, whole_windows ? xg + (m * K + k) * W3 : xg + (n++) * W3,
                                        g + m * W3, hp + m * Hp, hn + m * Hp);
            else if (real)
              stream_gru_row<T, S, Isa>(H, in.proj_store + dir * P + store_row(m, k) * 3 * H,
                                        g + m * W3, hp + m * Hp, hn + m * Hp);
            else
              stream_gru_row<T, S, Isa>(H, w + L.fusion_bih[dir], g + m * W3, hp + m * Hp,
                                        hn + m * Hp);
            if (real) add_row(H, hn + m * Hp, mem + (m * K + k) * Hp);
          }
        }
      }
    }
    for (int64_t hop = 0; hop < d.hops; ++hop) {
      // Attention: a = softmax over the real slots of e . m_k (pads get exactly 0).
      for (int64_t m = 0; m < rows; ++m) {
        T* a = attn + m * K;
        for (int64_t k = 0; k < K; ++k) {
          a[k] = T(0);
          if (k < first[m]) continue;
          const T* mk = mem + (m * K + k) * Hp;
          T score = 0;
          for (int64_t j = 0; j < H; ++j) score += e[m * Hp + j] * mk[j];
          a[k] = score;
        }
        softmax_row(K - first[m], a + first[m], a + first[m]);
      }
      for (int64_t i = 0; i < rows * Hp; ++i) o[i] = T(0);
      if (d.S == 0) {
        for (int64_t m = 0; m < rows; ++m)
          for (int64_t k = first[m]; k < K; ++k) {
            const T a = attn[m * K + k];
            const T* mk = mem + (m * K + k) * Hp;
            for (int64_t j = 0; j < H; ++j) o[m * Hp + j] += a * mk[j];
          }
      }
      for (int cell = 0; cell < d.S && s0 < K; ++cell) {
        for (int64_t m = 0; m < rows; ++m)
          stream_gemm<T, S, Isa>(K - s0, H, W2, mem + (m * K + s0) * Hp, Hp,
                                 w + L.summary_ih[cell], w + L.summary_bih[cell], 0,
                                 xp + (m * K + s0) * W2, W2);
        for (int64_t i = 0; i < rows * Hp; ++i) h[i] = T(0);
        for (int64_t s = 0; s < K - s0; ++s) {
          const int64_t k = cell == 0 ? s0 + s : K - 1 - s;
          T* hp = h + (s & 1) * rows * Hp;
          T* hn = h + ((s + 1) & 1) * rows * Hp;
          stream_gemm<T, S, Isa>(rows, H, W2, hp, Hp, w + L.summary_hh[cell],
                                 w + L.summary_bhh[cell], 0, g, W2, s & 1);
          for (int64_t m = 0; m < rows; ++m) {
            if (k < first[m]) {  // a pad: a = 0 leaves the state as it is
              std::copy(hp + m * Hp, hp + m * Hp + Hp, hn + m * Hp);
              continue;
            }
            stream_agru_row<T, S, Isa>(H, xp + (m * K + k) * W2, g + m * W2, hp + m * Hp,
                                       attn[m * K + k], hn + m * Hp);
          }
        }
        add_row(rows * Hp, h + ((K - s0) & 1) * rows * Hp, o);
      }
      add_row(rows * Hp, o, e);
    }
  }
  stream_gemm<T, S, Isa>(rows, H, L.Cp, e, Hp, w + L.cls, w + L.cls_b, 0, logits, L.Cp);
  for (int64_t m = 0; m < rows; ++m) softmax_row(C, logits + m * L.Cp, in.probs + (b0 + m) * C);
}

// Computes rows b0 .. b0 + rows in tiles of at most kStreamTileRows.
template <typename T, typename S>
inline void stream_forward_tile(const StreamDims& d, const T* w, const StreamBatch<T, S>& in,
                                int64_t b0, int64_t rows) {
  const StreamLayout L = stream_layout<T, S>(d);
  dispatch_isa_for<S>([&](auto isa) {
    for (int64_t r = 0; r < rows; r += kStreamTileRows)
      stream_forward_tile_impl<T, S, decltype(isa)>(d, L, w, in, b0 + r,
                                                 std::min(kStreamTileRows, rows - r));
  });
}

// Writes rows b0 .. b0 + rows of in.u_out, and their fusion input projections, into the slot
// after each conversation's last utterance. Run after every forward tile (it overwrites the
// oldest slot of a full window, which the forward step reads).
template <typename T, typename S, typename Isa>
AGHMN_INLINE void stream_remember_tile_impl(const StreamDims& d, const StreamLayout& L,
                                            const T* w, const StreamBatch<T, S>& in, int64_t b0,
                                            int64_t rows) {
  const int64_t H = d.H, K = d.K, W3 = L.W3;
  T* g = stream_scratch<T>(rows * W3);
  for (int64_t m = 0; m < rows; ++m) {
    const int64_t slot = in.blocks[b0 + m] * K + in.counts[b0 + m] % K;
    for (int64_t j = 0; j < H; ++j)
      in.u_store[slot * H + j] = to_storage<S>(in.u_out[(b0 + m) * H + j]);
  }
  for (int dir = 0; dir < d.D && in.proj_store != nullptr; ++dir) {
    stream_fusion_input_projections<T, S, Isa>(d, L, w, dir, rows, in.u_out + b0 * H, H, g);
    for (int64_t m = 0; m < rows; ++m) {
      const int64_t slot = in.blocks[b0 + m] * K + in.counts[b0 + m] % K;
      S* dst = in.proj_store + (dir * in.store_rows + slot) * 3 * H;
      for (int64_t j = 0; j < 3 * H; ++j) dst[j] = to_storage<S>(g[m * W3 + j]);
    }
  }
}

template <typename T, typename S>
inline void stream_remember_tile(const StreamDims& d, const T* w, const StreamBatch<T, S>& in,
                                 int64_t b0, int64_t rows) {
  const StreamLayout L = stream_layout<T, S>(d);
  dispatch_isa_for<S>(
      [&](auto isa) { stream_remember_tile_impl<T, S, decltype(isa)>(d, L, w, in, b0, rows); });
}

// The fusion input projections proj [D][n][3H] of n stored reader vectors u [n][H], as
// stream_remember_tile caches them (same GEMM, same storage rounding): what a store without the
// projection cache saves in a state file, so that files do not depend on the mode.
template <typename T, typename S>
inline void stream_project_rows(const StreamDims& d, const T* w, const S* u, int64_t n, S* proj) {
  if (d.D == 0 || n == 0) return;
  const StreamLayout L = stream_layout<T, S>(d);
  const int64_t H = d.H, W3 = L.W3;
  std::vector<T> x(n * H), g(n * W3);
  for (int64_t i = 0; i < n * H; ++i) x[i] = from_storage<T>(u[i]);
  dispatch_isa_for<S>([&](auto isa) {
    for (int dir = 0; dir < d.D; ++dir) {
      stream_fusion_input_projections<T, S, decltype(isa)>(d, L, w, dir, n, x.data(), H, g.data());
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < 3 * H; ++j)
          proj[(dir * n + r) * 3 * H + j] = to_storage<S>(g[r * W3 + j]);
    }
  });
}

}  // namespace cpu
}  // namespace aghmn
