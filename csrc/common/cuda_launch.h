// What the CUDA bindings share around a launcher call (torch and CUDA headers): the current
// stream, and turning the launcher's status into the op's exception. A size the kernels cannot
// hold, or a GPU the binary has no code for, raises NotImplementedError (and nothing else does);
// the Python registry (aghmn_fast/ops/registry.py) catches that type and tries the next backend.
#pragma once
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace aghmn {

/// The stream the launchers run on (so CUDA graphs capture them).
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

/// Raise the exception for a launcher's status `err` (`hidden`: the op's hidden size).
inline void check_launch(const char* op, cudaError_t err, int64_t hidden) {
  if (err == cudaErrorNotSupported)
    TORCH_CHECK_NOT_IMPLEMENTED(false, op, " (CUDA): unsupported size: hidden size ", hidden,
                                " does not fit the kernels' shared-memory buffers on this "
                                "device; use backend='triton' or backend='reference'");
  // No code in the binary this GPU can run (an architecture newer than the embedded PTX
  // allows, or older than the SASS): not the caller's fault, the next backend takes it.
  // These launch errors are not sticky, so the context stays usable.
  if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidKernelImage ||
      err == cudaErrorUnsupportedPtxVersion || err == cudaErrorInvalidDeviceFunction)
    TORCH_CHECK_NOT_IMPLEMENTED(false, op, " (CUDA): no kernel image for this GPU (",
                                cudaGetErrorString(err),
                                "); use backend='triton' or backend='reference'");
  TORCH_CHECK(err == cudaSuccess, op, " (CUDA): ", cudaGetErrorString(err));
}

}  // namespace aghmn
