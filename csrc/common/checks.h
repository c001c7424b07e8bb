// Argument checks of the raw ops, one set shared by the CPU and the CUDA bindings (torch headers;
// the kernel headers next to the bindings stay framework-free). The Python layer validates each
// public call once (aghmn_fast/ops/validation.py); these checks guard direct callers of
// torch.ops.aghmn_fast.*, so that bad input raises an error naming the op and the argument
// instead of reading out of bounds.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace aghmn {

/// Checks of one raw op's arguments against its first tensor, which fixes dtype and device.
struct Checks {
  const char* op;
  const at::Tensor& first;

  /// The first tensor: defined, on the binding's device, float32 or float64, `dim`-D, contiguous.
  void first_tensor(const char* name, int64_t dim, c10::DeviceType device) const {
    TORCH_CHECK(first.defined(), op, ": ", name, " is undefined");
    const char* where = device == c10::DeviceType::CUDA ? " (CUDA)" : " (CPU)";
    TORCH_CHECK(first.device().type() == device, op, where, ": ", name, " must be a ",
                c10::DeviceTypeName(device), " tensor, got ", first.device());
    dtype(first.scalar_type() == at::kFloat || first.scalar_type() == at::kDouble, op, where,
          ": ", name, " must be float32 or float64, got ", first.scalar_type());
    TORCH_CHECK(first.dim() == dim, op, ": ", name, " must be ", dim, "-D, got shape ",
                first.sizes());
    TORCH_CHECK(first.is_contiguous(), op, ": ", name, " must be contiguous");
  }

  /// Another float tensor: defined, the first tensor's dtype and device, `shape`, contiguous.
  void same(const at::Tensor& t, const char* name, at::IntArrayRef shape) const {
    TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
    dtype(t.scalar_type() == first.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
          " but the first input has dtype ", first.scalar_type());
    TORCH_CHECK(t.device() == first.device(), op, ": ", name, " is on ", t.device(),
                " but the first input is on ", first.device());
    TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ",
                t.sizes());
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  }

  /// The window index tensor [Q, K] (int64, -1 = padding) of `num_utterances` utterances. The
  /// index range is checked only on the CPU: on CUDA it would cost a device-to-host copy and a
  /// synchronisation per call (and break CUDA-graph capture); there the Python validation rejects
  /// such indices and the kernels read them as empty slots (docs/OPS.md).
  void windows(const at::Tensor& w, int64_t num_utterances) const {
    TORCH_CHECK(w.defined(), op, ": windows is undefined");
    dtype(w.scalar_type() == at::kLong, op, ": windows must be int64, got ", w.scalar_type());
    TORCH_CHECK(w.device() == first.device(), op, ": windows is on ", w.device(),
                " but the first input is on ", first.device());
    TORCH_CHECK(w.dim() == 2, op, ": windows must be 2-D [Q, K], got shape ", w.sizes());
    TORCH_CHECK(w.is_contiguous(), op, ": windows must be contiguous");
    if (!w.device().is_cpu()) return;
    const int64_t* idx = w.const_data_ptr<int64_t>();
    for (int64_t i = 0, n = w.numel(); i < n; ++i)
      TORCH_CHECK(idx[i] >= -1 && idx[i] < num_utterances, op, ": windows holds index ", idx[i],
                  " at flat position ", i, ", outside [-1, ", num_utterances, ") (",
                  num_utterances, " utterances)");
  }

 private:
  // A wrong dtype has always been a TypeError from the CUDA binding and a RuntimeError from the
  // CPU binding; both are kept so that no caller sees its exception type change.
  template <typename... Args>
  void dtype(bool ok, const Args&... message) const {
    if (ok) return;
    if (first.defined() && first.is_cuda()) TORCH_CHECK_TYPE(false, message...);
    TORCH_CHECK(false, message...);
  }
};

}  // namespace aghmn
