// Window GRU (fusion layer of the memory bank): the cells plugged into recurrence.cuh, the
// deterministic gather of slot gradients onto utterances, and the launchers.
//
// Backward reduction without floating-point atomics: the recurrence writes every slot's
// gradient to its own place; an inverse index (utterance -> its slots, in increasing slot order)
// is built with integer counting, and one block per utterance adds that utterance's slot
// gradients in that fixed order. Integer atomics place slots in a row in arbitrary order, but a
// rank pass then sorts each row by slot id, so the index (and the sums) are the same every run.
#include "common/recurrence.cuh"
#include "window_gru/window_gru_kernels.h"

namespace aghmn {
namespace cuda {
namespace detail {

/// The utterance a window entry refers to, or -1 for an empty slot. Entries outside [-1, N)
/// (rejected by the Python layer) are read as empty slots rather than out of bounds.
__host__ __device__ inline int64_t utterance_of(int64_t entry, int64_t num_utterances) {
  return (entry >= 0 && entry < num_utterances) ? entry : -1;
}

template <typename T>
struct GruForwardCell : DirectionSteps {
  using Scalar = T;
  using Args = WindowGruForwardParams<T>;
  static constexpr int kGates = 3;
  static constexpr bool kSlotIndex = true;
  struct In {
    T pr, pz, pn;
  };

  AGHMN_CELL const T* weight(const Args& p, int dir) {
    return p.weight_hh + static_cast<int64_t>(dir) * 3 * p.hidden * p.hidden;
  }
  AGHMN_CELL const T* bias(const Args& p, int dir) { return p.bias_hh + dir * 3 * p.hidden; }
  AGHMN_CELL T initial(const Args&, int64_t, int) { return T(0); }
  AGHMN_CELL int slot(const Args& p, int64_t row, int t) {
    return static_cast<int>(utterance_of(p.windows[row * p.window + t], p.num_utterances));
  }

  AGHMN_CELL In load(const Args& p, const Geometry& geo, const int* idx_s, int dir, int64_t,
                            int bb, int t, int j) {
    const int64_t H = p.hidden;
    const int u = idx_s[bb * geo.steps + t];
    const T* x = u >= 0 ? p.proj + (dir * p.num_utterances + u) * 3 * H : p.pad_proj + dir * 3 * H;
    return {__ldg(x + j), __ldg(x + H + j), __ldg(x + 2 * H + j)};
  }

  AGHMN_CELL T finish(const Args& p, const Geometry&, int dir, int64_t row, int t, int j,
                             const In& in, const T (&hg)[kGates], T h) {
    const GruForward<T> o = gru_forward_unit(in.pr, in.pz, in.pn, hg[0], hg[1], hg[2], h);
    const int64_t H = p.hidden, pos = (dir * p.num_windows + row) * p.window + t;
    p.output[pos * H + j] = o.h_new;
    T* g = p.gates + pos * 4 * H;
    g[j] = o.r;
    g[H + j] = o.z;
    g[2 * H + j] = o.n;
    g[3 * H + j] = hg[2];
    return o.h_new;
  }
};

/// The backward recurrence writes grad_ghh = [dr | dz | dpn * r] and, into the workspace, dpn:
/// with them the slot's projection gradient [dr | dz | dpn] is known without storing it twice.
template <typename T>
struct GruBackwardArgs {
  WindowGruBackwardParams<T> p;
  T* dpn;  // [D, Q, K, H]
};

template <typename T>
struct GruBackwardCell : DirectionSteps {
  using Scalar = T;
  using Args = GruBackwardArgs<T>;
  static constexpr int kGates = 3;
  static constexpr bool kAttnGrad = false;
  static constexpr bool kInitialGrad = false;
  struct In {
    T go, r, z, n, hn, h_prev;
  };

  AGHMN_CELL const T* weight(const Args& a, int dir) {
    return a.p.weight_hh + static_cast<int64_t>(dir) * 3 * a.p.hidden * a.p.hidden;
  }

  AGHMN_CELL In load(const Args& a, const Geometry&, int dir, int64_t row, int t,
                            int t_prev, int j) {
    const WindowGruBackwardParams<T>& p = a.p;
    const int64_t H = p.hidden, seq = (dir * p.num_windows + row) * p.window;
    const T* g = p.gates + (seq + t) * 4 * H;
    const T h_prev = t_prev >= 0 ? __ldg(p.output + (seq + t_prev) * H + j) : T(0);
    return {__ldg(p.grad_output + (seq + t) * H + j), __ldg(g + j), __ldg(g + H + j),
            __ldg(g + 2 * H + j), __ldg(g + 3 * H + j), h_prev};
  }

  AGHMN_CELL UnitGrads<T, kGates> step(const Args& a, const Geometry&, int dir,
                                              int64_t row, int t, int j, const In& in, T carry) {
    const GruBackward<T> g = gru_backward_unit(in.go + carry, in.r, in.z, in.n, in.hn, in.h_prev);
    const int64_t H = a.p.hidden, pos = (dir * a.p.num_windows + row) * a.p.window + t;
    T* gh = a.p.grad_ghh + pos * 3 * H;
    gh[j] = g.dpr;
    gh[H + j] = g.dpz;
    gh[2 * H + j] = g.dhn;
    a.dpn[pos * H + j] = g.dpn;
    return {{g.dpr, g.dpz, g.dhn}, g.dh_direct, T(0)};
  }
};

/// Sizes that the launchers handle with 32-bit slot and utterance indices.
inline cudaError_t check_window_sizes(int64_t directions, int64_t num_utterances,
                                      int64_t num_windows, int64_t window) {
  if (directions < 1 || directions > 2 || num_utterances < 0 || num_windows < 0 || window < 0)
    return cudaErrorInvalidValue;
  if (num_utterances > INT32_MAX - 2 || (window > 0 && num_windows > INT32_MAX / window))
    return cudaErrorInvalidValue;
  return cudaSuccess;
}

// ---- inverse index: utterance (or the empty-slot key N) -> its slots in increasing order ----

__device__ inline int slot_key(const int64_t* windows, int64_t s, int64_t n) {
  const int64_t u = utterance_of(windows[s], n);
  return static_cast<int>(u >= 0 ? u : n);
}

__global__ void count_slots(const int64_t* windows, int64_t slots, int64_t n, int* counts) {
  for (int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; s < slots;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x)
    atomicAdd(counts + slot_key(windows, s, n), 1);
}

/// offsets[k] = sum of counts[< k] for k <= keys; one block, each thread scans a contiguous run.
__global__ void scan_counts(const int* counts, int keys, int* offsets) {
  int* sums = reinterpret_cast<int*>(dynamic_smem());  // [blockDim.x]
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int per = (keys + nthreads - 1) / nthreads;
  const int lo = tid * per < keys ? tid * per : keys;
  const int hi = lo + per < keys ? lo + per : keys;
  int local = 0;
  for (int k = lo; k < hi; ++k) local += counts[k];
  sums[tid] = local;
  __syncthreads();
  for (int off = 1; off < nthreads; off <<= 1) {  // inclusive Hillis-Steele scan of the runs
    const int add = tid >= off ? sums[tid - off] : 0;
    __syncthreads();
    sums[tid] += add;
    __syncthreads();
  }
  int run = sums[tid] - local;
  for (int k = lo; k < hi; ++k) {
    offsets[k] = run;
    run += counts[k];
  }
  if (tid == nthreads - 1) offsets[keys] = sums[tid];
}

__global__ void place_slots(const int64_t* windows, int64_t slots, int64_t n, const int* offsets,
                            int* cursor, int* unsorted) {
  for (int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; s < slots;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int key = slot_key(windows, s, n);
    unsorted[offsets[key] + atomicAdd(cursor + key, 1)] = static_cast<int>(s);
  }
}

/// A slot's place in its row is the number of smaller slot ids in that row: the rows end up
/// sorted whatever order place_slots left them in.
__global__ void rank_slots(const int64_t* windows, int64_t slots, int64_t n, const int* offsets,
                           const int* unsorted, int* sorted) {
  for (int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; s < slots;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int key = slot_key(windows, s, n);
    const int begin = offsets[key], end = offsets[key + 1];
    int rank = 0;
    for (int e = begin; e < end; ++e) rank += unsorted[e] < s;
    sorted[begin + rank] = static_cast<int>(s);
  }
}

/// Block (key, d): grad_proj[d, key] (or grad_pad_proj[d] for key N) = sum over the key's slots
/// in increasing order of [dr | dz | dpn].
template <typename T>
__global__ void gather_slot_grads(const int* offsets, const int* sorted, const T* grad_ghh,
                                  const T* dpn, int64_t slots, int64_t n, int hidden, T* grad_proj,
                                  T* grad_pad_proj) {
  const int64_t key = blockIdx.x;
  const int dir = blockIdx.y;
  const int begin = offsets[key], end = offsets[key + 1];
  const int64_t H = hidden;
  T* out = key < n ? grad_proj + (dir * n + key) * 3 * H : grad_pad_proj + dir * 3 * H;
  for (int c = threadIdx.x; c < 3 * hidden; c += blockDim.x) {
    T sum = T(0);
    for (int e = begin; e < end; ++e) {
      const int64_t s = dir * slots + sorted[e];
      sum += c < 2 * hidden ? grad_ghh[s * 3 * H + c] : dpn[s * H + (c - 2 * H)];
    }
    out[c] = sum;
  }
}

/// Where each piece of the backward workspace lives (base == nullptr: sizes only).
template <typename T>
struct Workspace {
  T* dpn;
  int *counts, *offsets, *cursor, *unsorted, *sorted;
  size_t bytes;

  Workspace(void* base, int64_t directions, int64_t n, int64_t slots, int64_t hidden) {
    size_t off = 0;
    auto take = [&](size_t bytes_needed) {
      unsigned char* at = base ? static_cast<unsigned char*>(base) + off : nullptr;
      off = (off + bytes_needed + 255) & ~static_cast<size_t>(255);
      return at;
    };
    dpn = reinterpret_cast<T*>(take(sizeof(T) * directions * slots * hidden));
    counts = reinterpret_cast<int*>(take(sizeof(int) * (n + 1)));
    offsets = reinterpret_cast<int*>(take(sizeof(int) * (n + 2)));
    cursor = reinterpret_cast<int*>(take(sizeof(int) * (n + 1)));
    unsorted = reinterpret_cast<int*>(take(sizeof(int) * slots));
    sorted = reinterpret_cast<int*>(take(sizeof(int) * slots));
    bytes = off;
  }
};

inline unsigned grid_for(int64_t items, int threads) {
  const int64_t blocks = (items + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

}  // namespace detail

template <typename T>
cudaError_t window_gru_forward(const WindowGruForwardParams<T>& p, cudaStream_t stream) {
  cudaError_t err =
      detail::check_window_sizes(p.directions, p.num_utterances, p.num_windows, p.window);
  if (err != cudaSuccess) return err;
  detail::Plan plan;
  const detail::Shape shape = detail::launch_shape<detail::GruForwardCell<T>, false>(
      p.num_windows, p.hidden, p.window, p.directions);
  err = detail::choose_plan<T>(shape, true, &plan);
  if (err != cudaSuccess || p.num_windows == 0 || p.window == 0) return err;
  return detail::run_recurrence<detail::GruForwardCell<T>, false>(plan, p, stream);
}

template <typename T>
size_t window_gru_backward_workspace_bytes(int64_t directions, int64_t num_utterances,
                                           int64_t num_windows, int64_t window, int64_t hidden) {
  if (detail::check_window_sizes(directions, num_utterances, num_windows, window) != cudaSuccess ||
      hidden <= 0)
    return 0;
  return detail::Workspace<T>(nullptr, directions, num_utterances, num_windows * window, hidden)
      .bytes;
}

template <typename T>
cudaError_t window_gru_backward(const WindowGruBackwardParams<T>& p, cudaStream_t stream) {
  using namespace detail;
  cudaError_t err = check_window_sizes(p.directions, p.num_utterances, p.num_windows, p.window);
  if (err != cudaSuccess) return err;
  Plan plan;
  const Shape shape =
      launch_shape<GruBackwardCell<T>, true>(p.num_windows, p.hidden, p.window, p.directions);
  err = choose_plan<T>(shape, false, &plan);
  if (err != cudaSuccess) return err;
  const int64_t n = p.num_utterances, slots = p.num_windows * p.window;
  Workspace<T> ws(p.workspace, p.directions, n, slots, p.hidden);
  if (p.workspace == nullptr || p.workspace_bytes < ws.bytes) return cudaErrorInvalidValue;

  constexpr int kThreads = 256, kScanThreads = 1024;
  const unsigned grid = grid_for(slots, kThreads);
  if ((err = cudaMemsetAsync(ws.counts, 0, sizeof(int) * (n + 1), stream)) != cudaSuccess ||
      (err = cudaMemsetAsync(ws.cursor, 0, sizeof(int) * (n + 1), stream)) != cudaSuccess)
    return err;
  if (slots > 0) {
    AGHMN_LAUNCH(count_slots, dim3(grid), dim3(kThreads), 0, stream, p.windows, slots, n,
                 ws.counts);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  AGHMN_LAUNCH(scan_counts, dim3(1), dim3(kScanThreads), kScanThreads * sizeof(int), stream,
               ws.counts, static_cast<int>(n + 1), ws.offsets);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (slots > 0) {
    AGHMN_LAUNCH(place_slots, dim3(grid), dim3(kThreads), 0, stream, p.windows, slots, n,
                 ws.offsets, ws.cursor, ws.unsorted);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    AGHMN_LAUNCH(rank_slots, dim3(grid), dim3(kThreads), 0, stream, p.windows, slots, n,
                 ws.offsets, ws.unsorted, ws.sorted);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    err = run_recurrence<GruBackwardCell<T>, true>(plan, GruBackwardArgs<T>{p, ws.dpn}, stream);
    if (err != cudaSuccess) return err;
  }
  const int64_t columns = 3 * p.hidden;
  const int threads = static_cast<int>(columns < kThreads ? (columns + 31) / 32 * 32 : kThreads);
  AGHMN_LAUNCH(gather_slot_grads<T>, dim3(static_cast<unsigned>(n + 1),
                                          static_cast<unsigned>(p.directions)),
               dim3(threads), 0, stream, ws.offsets, ws.sorted, p.grad_ghh, ws.dpn, slots, n,
               static_cast<int>(p.hidden), p.grad_proj, p.grad_pad_proj);
  return cudaGetLastError();
}

template cudaError_t window_gru_forward<float>(const WindowGruForwardParams<float>&, cudaStream_t);
template cudaError_t window_gru_forward<double>(const WindowGruForwardParams<double>&,
                                                cudaStream_t);
template size_t window_gru_backward_workspace_bytes<float>(int64_t, int64_t, int64_t, int64_t,
                                                           int64_t);
template size_t window_gru_backward_workspace_bytes<double>(int64_t, int64_t, int64_t, int64_t,
                                                            int64_t);
template cudaError_t window_gru_backward<float>(const WindowGruBackwardParams<float>&,
                                                cudaStream_t);
template cudaError_t window_gru_backward<double>(const WindowGruBackwardParams<double>&,
                                                 cudaStream_t);

}  // namespace cuda
}  // namespace aghmn
