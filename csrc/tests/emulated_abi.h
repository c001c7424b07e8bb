// The one C ABI of every raw op's entry point in the SIMT emulator build (the op's
// csrc/<op>/<op>_emulated.cpp), so that tests/cuda_emulator.py calls each of them the same way
// and names no op:
//
//   int emu_<raw op>(int dtype, void* const* data, const int64_t* shapes, const int64_t* scalars)
//
// data: the raw op's tensor arguments in schema order (docs/OPS.md), then its outputs, allocated
// by the caller with the shapes of the op folder's OpSpec.output_shapes; shapes: each of those
// tensors' sizes, kEmuMaxDims per tensor (unused trailing dims 0); scalars: the op's non-tensor
// arguments in schema order (bool as 0 / 1); dtype: a kEmu* code (the floating-point inputs'
// type). Returns the launcher's cudaError_t. Pointers are host pointers (the emulated device
// memory is the host's). Include after simt_emulator.h and the op's kernels.
#pragma once
#include <cstdint>

namespace aghmn_emu {

constexpr int kEmuMaxDims = 8;
// dtype codes of the C ABI
constexpr int kEmuFloat32 = 0;
constexpr int kEmuFloat64 = 1;

/// The arguments of one call, read by position.
struct Call {
  int dtype;
  void* const* data;
  const int64_t* shapes;
  const int64_t* scalars;

  template <typename T>
  const T* in(int i) const {
    return static_cast<const T*>(data[i]);
  }
  template <typename T>
  T* out(int i) const {
    return static_cast<T*>(data[i]);
  }
  /// Size `dim` of tensor `i`.
  int64_t size(int i, int dim) const { return shapes[i * kEmuMaxDims + dim]; }
  int64_t scalar(int i) const { return scalars[i]; }

  /// f(T{}) with T the scalar type of `dtype`; cudaErrorInvalidValue for an unknown code.
  template <class F>
  int with_dtype(F&& f) const {
    if (dtype == kEmuFloat32) return static_cast<int>(f(float{}));
    if (dtype == kEmuFloat64) return static_cast<int>(f(double{}));
    return static_cast<int>(cudaErrorInvalidValue);
  }
};

}  // namespace aghmn_emu

/// Defines the entry point emu_<raw_op> of the ABI above; the body reads `call`
/// (an aghmn_emu::Call) and returns a cudaError_t.
#define AGHMN_EMULATED(raw_op)                                                             \
  static int raw_op##_emulated(const ::aghmn_emu::Call& call);                             \
  extern "C" int emu_##raw_op(int dtype, void* const* data, const int64_t* shapes,         \
                              const int64_t* scalars) {                                    \
    return raw_op##_emulated(::aghmn_emu::Call{dtype, data, shapes, scalars});             \
  }                                                                                        \
  static int raw_op##_emulated(const ::aghmn_emu::Call& call)
