// What every framework-free CUDA launcher header (csrc/<op>/<op>_kernels.h) shares: the CUDA
// runtime types, or the SIMT emulator's stand-ins for them in the CPU emulation build.
//
// The launchers' contract: raw device pointers, sizes and a stream; no torch header. Every tensor
// is dense and contiguous in the layout docs/OPS.md gives. Launchers never synchronise, allocate or
// copy to the host, so they can be captured into a CUDA graph. They return cudaSuccess, a launch
// error, or cudaErrorNotSupported when the hidden size does not fit the kernels' on-chip buffers
// on the current device (the caller then falls back to another backend), or
// cudaErrorInvalidValue for sizes that make no sense (negative, or too large for 32-bit slot
// indices).
#pragma once
#include <cstddef>
#include <cstdint>

#if !defined(AGHMN_SIMT_EMULATION)
#include <cuda_runtime_api.h>
#endif
