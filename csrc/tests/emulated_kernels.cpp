// The CUDA kernels and launchers of csrc/agru/ and csrc/window_gru/ built for the CPU SIMT
// emulator, with a C ABI for the tests (tests/test_cuda_ops.py loads it with ctypes). Not part of
// the extension: the tests compile it with the host C++ compiler, e.g.
//   g++ -std=c++20 -O2 -shared -fPIC -Icsrc csrc/tests/emulated_kernels.cpp
// Pointers are host pointers (the emulated device memory is the host's).
#define AGHMN_SIMT_EMULATION 1
#include "simt_emulator.h"
// clang-format off
#include "agru/agru_kernels.cu"
#include "window_gru/window_gru_kernels.cu"
// clang-format on

namespace {

namespace ac = aghmn::cuda;

// dtype codes of the C ABI
constexpr int kFloat32 = 0;
constexpr int kFloat64 = 1;

template <typename T>
const T* in(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T>
T* out(void* p) {
  return static_cast<T*>(p);
}

// Calls f(T{}) with T the scalar type of the dtype code.
template <class F>
int with_dtype(int dtype, F&& f) {
  if (dtype == kFloat32) return static_cast<int>(f(float{}));
  if (dtype == kFloat64) return static_cast<int>(f(double{}));
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace

extern "C" {

/// Device properties the launchers see, and the order in which ready threads run (0 identity,
/// 1 reversed, 2 shuffled with `seed`).
void emu_configure(int sm_count, int smem_optin, int smem_per_sm, int order, uint64_t seed) {
  auto& r = aghmn_emu::rt();
  r.settings = {sm_count, smem_optin, smem_per_sm, order, seed};
  r.rng.seed(seed);
  r.smem_attribute.clear();
}

/// First failure message since the last call ("" if none), then cleared.
const char* emu_take_message() {
  static std::string last;
  last = aghmn_emu::rt().message;
  aghmn_emu::rt().message.clear();
  return last.c_str();
}

/// Number of kernel launches recorded since the last emu_clear_launches.
int emu_launch_count() { return static_cast<int>(aghmn_emu::rt().launches.size()); }

/// Launch i as grid x, y, z, block x, y, z, dynamic shared bytes.
void emu_launch_record(int i, int64_t* seven) {
  const auto& l = aghmn_emu::rt().launches.at(i);
  const int64_t v[7] = {l.grid.x, l.grid.y, l.grid.z, l.block.x, l.block.y, l.block.z,
                        static_cast<int64_t>(l.smem)};
  std::copy(v, v + 7, seven);
}

void emu_clear_launches() { aghmn_emu::rt().launches.clear(); }

int emu_agru_forward(int dtype, const void* xproj, const void* attn, const void* weight_hh,
                     const void* bias_hh, const void* h0, void* output, void* gates, int64_t batch,
                     int64_t steps, int64_t hidden, int reverse) {
  return with_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    ac::AgruForwardParams<T> p;
    p.xproj = in<T>(xproj);
    p.attn = in<T>(attn);
    p.weight_hh = in<T>(weight_hh);
    p.bias_hh = in<T>(bias_hh);
    p.h0 = in<T>(h0);
    p.output = out<T>(output);
    p.gates = out<T>(gates);
    p.batch = batch;
    p.steps = steps;
    p.hidden = hidden;
    p.reverse = reverse != 0;
    return ac::agru_forward(p, nullptr);
  });
}

int emu_agru_backward(int dtype, const void* grad_output, const void* attn, const void* weight_hh,
                      const void* h0, const void* output, const void* gates, void* grad_xproj,
                      void* grad_attn, void* grad_ghh, void* grad_h0, int64_t batch, int64_t steps,
                      int64_t hidden, int reverse) {
  return with_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    ac::AgruBackwardParams<T> p;
    p.grad_output = in<T>(grad_output);
    p.attn = in<T>(attn);
    p.weight_hh = in<T>(weight_hh);
    p.h0 = in<T>(h0);
    p.output = in<T>(output);
    p.gates = in<T>(gates);
    p.grad_xproj = out<T>(grad_xproj);
    p.grad_attn = out<T>(grad_attn);
    p.grad_ghh = out<T>(grad_ghh);
    p.grad_h0 = out<T>(grad_h0);
    p.batch = batch;
    p.steps = steps;
    p.hidden = hidden;
    p.reverse = reverse != 0;
    return ac::agru_backward(p, nullptr);
  });
}

int emu_window_gru_forward(int dtype, const void* proj, const void* pad_proj,
                           const void* weight_hh, const void* bias_hh, const int64_t* windows,
                           void* output, void* gates, int64_t directions, int64_t num_utterances,
                           int64_t num_windows, int64_t window, int64_t hidden) {
  return with_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    ac::WindowGruForwardParams<T> p;
    p.proj = in<T>(proj);
    p.pad_proj = in<T>(pad_proj);
    p.weight_hh = in<T>(weight_hh);
    p.bias_hh = in<T>(bias_hh);
    p.windows = windows;
    p.output = out<T>(output);
    p.gates = out<T>(gates);
    p.directions = directions;
    p.num_utterances = num_utterances;
    p.num_windows = num_windows;
    p.window = window;
    p.hidden = hidden;
    return ac::window_gru_forward(p, nullptr);
  });
}

int64_t emu_window_gru_backward_workspace_bytes(int dtype, int64_t directions,
                                                int64_t num_utterances, int64_t num_windows,
                                                int64_t window, int64_t hidden) {
  if (dtype == kFloat32)
    return static_cast<int64_t>(ac::window_gru_backward_workspace_bytes<float>(
        directions, num_utterances, num_windows, window, hidden));
  return static_cast<int64_t>(ac::window_gru_backward_workspace_bytes<double>(
      directions, num_utterances, num_windows, window, hidden));
}

int emu_window_gru_backward(int dtype, const void* grad_output, const void* weight_hh,
                            const int64_t* windows, const void* output, const void* gates,
                            void* grad_proj, void* grad_pad_proj, void* grad_ghh, void* workspace,
                            int64_t workspace_bytes, int64_t directions, int64_t num_utterances,
                            int64_t num_windows, int64_t window, int64_t hidden) {
  return with_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    ac::WindowGruBackwardParams<T> p;
    p.grad_output = in<T>(grad_output);
    p.weight_hh = in<T>(weight_hh);
    p.windows = windows;
    p.output = in<T>(output);
    p.gates = in<T>(gates);
    p.grad_proj = out<T>(grad_proj);
    p.grad_pad_proj = out<T>(grad_pad_proj);
    p.grad_ghh = out<T>(grad_ghh);
    p.workspace = workspace;
    p.workspace_bytes = static_cast<size_t>(workspace_bytes);
    p.directions = directions;
    p.num_utterances = num_utterances;
    p.num_windows = num_windows;
    p.window = window;
    p.hidden = hidden;
    return ac::window_gru_backward(p, nullptr);
  });
}

}  // extern "C"
