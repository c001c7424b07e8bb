// Host launchers of the fused CUDA window-GRU recurrences and their deterministic gradient
// gather (defined in window_gru_kernels.cu; the launcher contract is in common/cuda_kernels.h,
// the ops' in docs/OPS.md).
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/cuda_kernels.h"

namespace aghmn {
namespace cuda {

/// Arguments of window_gru_forward (D = 1 or 2 directions; direction 1 runs k = K-1 .. 0).
template <typename T>
struct WindowGruForwardParams {
  const T* proj = nullptr;         ///< [D, N, 3H]: per-utterance input projections [r | z | n]
  const T* pad_proj = nullptr;     ///< [D, 3H]: projection of an empty slot (bias_ih)
  const T* weight_hh = nullptr;    ///< [D, 3H, H]
  const T* bias_hh = nullptr;      ///< [D, 3H]
  const int64_t* windows = nullptr;  ///< [Q, K] in [-1, N); -1 = empty slot
  T* output = nullptr;             ///< [D, Q, K, H]
  T* gates = nullptr;              ///< [D, Q, K, 4H]: per step [r | z | n | hn]
  int64_t directions = 1, num_utterances = 0, num_windows = 0, window = 0, hidden = 0;
};

/// Arguments of window_gru_backward. `workspace` is device memory of at least
/// window_gru_backward_workspace_bytes(...) bytes; its content on entry does not matter.
template <typename T>
struct WindowGruBackwardParams {
  const T* grad_output = nullptr;  ///< [D, Q, K, H]
  const T* weight_hh = nullptr;    ///< [D, 3H, H]
  const int64_t* windows = nullptr;  ///< [Q, K]
  const T* output = nullptr;       ///< [D, Q, K, H] from window_gru_forward
  const T* gates = nullptr;        ///< [D, Q, K, 4H] from window_gru_forward
  T* grad_proj = nullptr;          ///< [D, N, 3H]: slot gradients summed onto utterances
  T* grad_pad_proj = nullptr;      ///< [D, 3H]: slot gradients summed over empty slots
  T* grad_ghh = nullptr;           ///< [D, Q, K, 3H]: gradient of h_prev @ weight_hh^T + bias_hh
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int64_t directions = 1, num_utterances = 0, num_windows = 0, window = 0, hidden = 0;
};

/// Window GRU forward over every window and direction in one launch.
template <typename T>
cudaError_t window_gru_forward(const WindowGruForwardParams<T>& p, cudaStream_t stream);

/// Bytes of device workspace window_gru_backward needs for these sizes.
template <typename T>
size_t window_gru_backward_workspace_bytes(int64_t directions, int64_t num_utterances,
                                           int64_t num_windows, int64_t window, int64_t hidden);

/// Window GRU backward: reverse loops, then a deterministic gather of slot gradients onto
/// utterances through an inverse index built on the device (no floating-point atomics).
template <typename T>
cudaError_t window_gru_backward(const WindowGruBackwardParams<T>& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace aghmn
