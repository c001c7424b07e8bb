// The window GRU's CUDA kernels and launchers built for the CPU SIMT emulator (tests only, never
// part of the extension): its raw ops' entry points of the emulator's C ABI
// (csrc/tests/emulated_abi.h), built with csrc/tests/emulated_kernels.cpp by
// tests/cuda_emulator.py.
#define AGHMN_SIMT_EMULATION 1
#include "tests/simt_emulator.h"
// clang-format off
#include "window_gru/window_gru_kernels.cu"
#include "tests/emulated_abi.h"
// clang-format on

#include <vector>

namespace ac = aghmn::cuda;

// window_gru_forward(proj, pad_proj, weight_hh, bias_hh, windows) -> (output, gates)
AGHMN_EMULATED(window_gru_forward) {
  return call.with_dtype([&](auto zero) {
    using T = decltype(zero);
    ac::WindowGruForwardParams<T> p;
    p.proj = call.in<T>(0);
    p.pad_proj = call.in<T>(1);
    p.weight_hh = call.in<T>(2);
    p.bias_hh = call.in<T>(3);
    p.windows = call.in<int64_t>(4);
    p.output = call.out<T>(5);
    p.gates = call.out<T>(6);
    p.directions = call.size(0, 0);
    p.num_utterances = call.size(0, 1);
    p.num_windows = call.size(4, 0);
    p.window = call.size(4, 1);
    p.hidden = call.size(0, 2) / 3;  // proj [D, N, 3H]
    return ac::window_gru_forward(p, nullptr);
  });
}

// window_gru_backward(grad_output, weight_hh, windows, output, gates, num_utterances)
//   -> (grad_proj, grad_pad_proj, grad_ghh)
// The workspace is allocated here, filled with 0xAB bytes: its content must not matter.
AGHMN_EMULATED(window_gru_backward) {
  return call.with_dtype([&](auto zero) {
    using T = decltype(zero);
    ac::WindowGruBackwardParams<T> p;
    p.grad_output = call.in<T>(0);
    p.weight_hh = call.in<T>(1);
    p.windows = call.in<int64_t>(2);
    p.output = call.in<T>(3);
    p.gates = call.in<T>(4);
    p.grad_proj = call.out<T>(5);
    p.grad_pad_proj = call.out<T>(6);
    p.grad_ghh = call.out<T>(7);
    p.directions = call.size(0, 0);
    p.num_windows = call.size(0, 1);
    p.window = call.size(0, 2);
    p.hidden = call.size(0, 3);
    p.num_utterances = call.scalar(0);
    const size_t bytes = ac::window_gru_backward_workspace_bytes<T>(
        p.directions, p.num_utterances, p.num_windows, p.window, p.hidden);
    if (bytes == 0) return cudaErrorInvalidValue;
    std::vector<unsigned char> workspace(bytes, 0xAB);
    p.workspace = workspace.data();
    p.workspace_bytes = bytes;
    return ac::window_gru_backward(p, nullptr);
  });
}
