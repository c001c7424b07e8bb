// Host launchers of the fused CUDA AGRU recurrences (defined in agru_kernels.cu; the launcher
// contract is in common/cuda_kernels.h, the ops' in docs/OPS.md).
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/cuda_kernels.h"

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

/// AGRU forward recurrence. float and double are instantiated.
template <typename T>
cudaError_t agru_forward(const AgruForwardParams<T>& p, cudaStream_t stream);

/// AGRU backward recurrence (reverse loop; the attention gradient is reduced in the kernel).
template <typename T>
cudaError_t agru_backward(const AgruBackwardParams<T>& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace aghmn
