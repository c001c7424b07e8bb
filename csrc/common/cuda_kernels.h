// Host launchers of the fused CUDA recurrences (sequential part of the ops in docs/OPS.md).
//
// Framework-free: raw device pointers, sizes and a stream; no torch header. Every tensor is dense
// and contiguous in the layout docs/OPS.md gives. Launchers never synchronise, allocate or copy to
// the host, so they can be captured into a CUDA graph. They return cudaSuccess, a launch error, or
// cudaErrorNotSupported when the hidden size does not fit the kernels' on-chip buffers on the
// current device (the caller then falls back to another backend), or cudaErrorInvalidValue for
// sizes that make no sense (negative, or too large for 32-bit slot indices).
#pragma once
#include <cstddef>
#include <cstdint>

#if !defined(AGHMN_SIMT_EMULATION)
#include <cuda_runtime_api.h>
#endif

namespace aghmn {
namespace cuda {

/// Arguments of agru_forward (one direction). Shapes use B = batch, T = steps, H = hidden.
template <typename T>
struct AgruForwardParams {
  const T* xproj = nullptr;      ///< [B, T, 2H]: x @ weight_ih^T + bias_ih, columns [xr | xn]
  const T* attn = nullptr;       ///< [B, T]
  const T* weight_hh = nullptr;  ///< [2H, H]: rows U_r then U
  const T* bias_hh = nullptr;    ///< [2H]
  const T* h0 = nullptr;         ///< [B, H]
  T* output = nullptr;           ///< [B, T, H]: state right after consuming position t
  T* gates = nullptr;            ///< [B, T, 3H]: per step [r | n | hn]
  int64_t batch = 0, steps = 0, hidden = 0;
  bool reverse = false;          ///< run t = T-1 .. 0
};

/// Arguments of agru_backward (one direction).
template <typename T>
struct AgruBackwardParams {
  const T* grad_output = nullptr;  ///< [B, T, H]
  const T* attn = nullptr;         ///< [B, T]
  const T* weight_hh = nullptr;    ///< [2H, H]
  const T* h0 = nullptr;           ///< [B, H]
  const T* output = nullptr;       ///< [B, T, H] from agru_forward
  const T* gates = nullptr;        ///< [B, T, 3H] from agru_forward
  T* grad_xproj = nullptr;         ///< [B, T, 2H] = [dpr | dpn]
  T* grad_attn = nullptr;          ///< [B, T]
  T* grad_ghh = nullptr;           ///< [B, T, 2H] = [dpr | dpn * r]
  T* grad_h0 = nullptr;            ///< [B, H]
  int64_t batch = 0, steps = 0, hidden = 0;
  bool reverse = false;
};

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

/// AGRU forward recurrence. float and double are instantiated.
template <typename T>
cudaError_t agru_forward(const AgruForwardParams<T>& p, cudaStream_t stream);

/// AGRU backward recurrence (reverse loop; the attention gradient is reduced in the kernel).
template <typename T>
cudaError_t agru_backward(const AgruBackwardParams<T>& p, cudaStream_t stream);

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
