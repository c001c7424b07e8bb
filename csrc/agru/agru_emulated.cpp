// The AGRU's CUDA kernels and launchers built for the CPU SIMT emulator (tests only, never part
// of the extension): its raw ops' entry points of the emulator's C ABI (csrc/tests/emulated_abi.h),
// built with csrc/tests/emulated_kernels.cpp by tests/cuda_emulator.py.
#define AGHMN_SIMT_EMULATION 1
#include "tests/simt_emulator.h"
// clang-format off
#include "agru/agru_kernels.cu"
#include "tests/emulated_abi.h"
// clang-format on

namespace ac = aghmn::cuda;

// agru_forward(xproj, attn, weight_hh, bias_hh, h0, reverse) -> (output, gates)
AGHMN_EMULATED(agru_forward) {
  return call.with_dtype([&](auto zero) {
    using T = decltype(zero);
    ac::AgruForwardParams<T> p;
    p.xproj = call.in<T>(0);
    p.attn = call.in<T>(1);
    p.weight_hh = call.in<T>(2);
    p.bias_hh = call.in<T>(3);
    p.h0 = call.in<T>(4);
    p.output = call.out<T>(5);
    p.gates = call.out<T>(6);
    p.batch = call.size(0, 0);
    p.steps = call.size(0, 1);
    p.hidden = call.size(0, 2) / 2;  // xproj [B, T, 2H]
    p.reverse = call.scalar(0) != 0;
    return ac::agru_forward(p, nullptr);
  });
}

// agru_backward(grad_output, attn, weight_hh, h0, output, gates, reverse)
//   -> (grad_xproj, grad_attn, grad_ghh, grad_h0)
AGHMN_EMULATED(agru_backward) {
  return call.with_dtype([&](auto zero) {
    using T = decltype(zero);
    ac::AgruBackwardParams<T> p;
    p.grad_output = call.in<T>(0);
    p.attn = call.in<T>(1);
    p.weight_hh = call.in<T>(2);
    p.h0 = call.in<T>(3);
    p.output = call.in<T>(4);
    p.gates = call.in<T>(5);
    p.grad_xproj = call.out<T>(6);
    p.grad_attn = call.out<T>(7);
    p.grad_ghh = call.out<T>(8);
    p.grad_h0 = call.out<T>(9);
    p.batch = call.size(0, 0);
    p.steps = call.size(0, 1);
    p.hidden = call.size(0, 2);
    p.reverse = call.scalar(0) != 0;
    return ac::agru_backward(p, nullptr);
  });
}
