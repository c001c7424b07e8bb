// A small CPU emulator of the CUDA subset the kernels in this folder use, so that the very kernel
// and launcher source can run (slowly) on a machine without a GPU and be tested against the
// reference. Include it before the kernel sources with AGHMN_SIMT_EMULATION defined.
//
// Every CUDA thread of a block is a cooperative fiber (ucontext) on one OS thread; fibers switch
// only at __syncthreads and warp shuffles, so a block is executed exactly as the barriers allow.
// Blocks run one after another. To expose data races between barriers, the order in which ready
// fibers run can be identity, reversed or shuffled (set_order): a race-free kernel gives
// bit-identical results in every order. Dynamic shared memory starts filled with 0xFF bytes (NaN
// for floating point), so reading shared memory before writing it shows up in the results.
// Checked at run time: block size, grid size, the dynamic shared-memory limit (including the
// cudaFuncSetAttribute opt-in above 48 KiB), full-warp shuffles, barriers reached by every thread.
// Each launch is recorded (grid, block, shared bytes and the kernel's name with its template
// arguments), so that tests can tell which kernel variant a launch plan picked.
#pragma once
#if !defined(AGHMN_SIMT_EMULATION)
#error "simt_emulator.h is only for the CPU emulation build (define AGHMN_SIMT_EMULATION)"
#endif

#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- the CUDA runtime surface the launchers use -------------------------------------------------
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
};
typedef enum cudaError cudaError_t;
struct CUstream_st;
typedef CUstream_st* cudaStream_t;

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace aghmn_emu {

enum class Wait { kReady, kBlock, kWarp, kDone };

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  dim3 tid;
  int linear = 0;
  Wait state = Wait::kReady;
  uint64_t exchange = 0;  // the value this lane offers to a warp shuffle
};

struct LaunchRecord {
  dim3 grid, block;
  size_t smem;
  std::string kernel;  // the launched function, as the compiler spells its template arguments
};

/// The name of kernel K with its template arguments (from the compiler's signature string).
template <auto K>
std::string kernel_name() {
  // GCC: "... [with auto K = NAME; std::string = ...]", Clang: "... [K = NAME]"
  const std::string sig = __PRETTY_FUNCTION__;
  const size_t at = sig.find("K = ");
  if (at == std::string::npos) return sig;
  size_t end = sig.find("; ", at);
  if (end == std::string::npos) end = sig.rfind(']');
  return sig.substr(at + 4, end == std::string::npos ? std::string::npos : end - at - 4);
}

/// Emulated device properties (defaults: an H100 SXM) and scheduler settings.
struct Settings {
  int sm_count = 132;
  int smem_optin = 232448;
  int smem_per_sm = 233472;
  int order = 0;  // 0 identity, 1 reversed, 2 shuffled
  uint64_t seed = 0;
};

struct Runtime {
  Settings settings;
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  dim3 block_idx, block_dim, grid_dim;
  std::vector<unsigned char> smem_storage;
  unsigned char* smem = nullptr;
  std::function<void()> body;
  cudaError_t last_error = cudaSuccess;
  std::string message;
  std::map<const void*, int> smem_attribute;
  std::vector<LaunchRecord> launches;
  std::mt19937_64 rng;
  static constexpr size_t kStackBytes = 256 * 1024;

  ~Runtime() {
    for (Fiber& f : fibers) std::free(f.stack);
  }
};

inline Runtime& rt() {
  static Runtime r;
  return r;
}

inline void fail(const std::string& why) {
  Runtime& r = rt();
  if (r.message.empty()) r.message = why;
  r.last_error = cudaErrorLaunchFailure;
}

inline void yield(Wait why) {
  Fiber* f = rt().current;
  f->state = why;
  swapcontext(&f->ctx, &rt().scheduler);
}

inline void fiber_entry() {
  Runtime& r = rt();
  r.body();
  r.current->state = Wait::kDone;
  // uc_link returns to the scheduler.
}

inline std::vector<int> run_order(int n) {
  Runtime& r = rt();
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (r.settings.order == 1) std::reverse(order.begin(), order.end());
  if (r.settings.order == 2) std::shuffle(order.begin(), order.end(), r.rng);
  return order;
}

// Releases the barrier every waiting fiber agrees on; false when the fibers are stuck (a
// divergent shuffle or barrier, which would hang or be undefined on a GPU).
inline bool release_barrier(int n) {
  Runtime& r = rt();
  bool released = false;
  for (int w = 0; w * 32 < n; ++w) {
    int lo = w * 32, hi = std::min(n, lo + 32), at_warp = 0;
    for (int i = lo; i < hi; ++i) at_warp += r.fibers[i].state == Wait::kWarp;
    if (at_warp == 0) continue;
    if (at_warp != hi - lo) {
      fail("warp shuffle not reached by every lane of warp " + std::to_string(w));
      return false;
    }
    for (int i = lo; i < hi; ++i) r.fibers[i].state = Wait::kReady;
    released = true;
  }
  if (released) return true;
  int at_block = 0, done = 0;
  for (int i = 0; i < n; ++i) {
    at_block += r.fibers[i].state == Wait::kBlock;
    done += r.fibers[i].state == Wait::kDone;
  }
  if (at_block == 0) return false;
  if (done != 0) {
    fail("__syncthreads reached after some threads of the block exited");
    return false;
  }
  for (int i = 0; i < n; ++i) r.fibers[i].state = Wait::kReady;
  return true;
}

inline bool run_block(int n) {
  Runtime& r = rt();
  if (static_cast<int>(r.fibers.size()) < n) r.fibers.resize(n);
  for (int i = 0; i < n; ++i) {
    Fiber& f = r.fibers[i];
    if (!f.stack) f.stack = static_cast<char*>(std::malloc(Runtime::kStackBytes));
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = Runtime::kStackBytes;
    f.ctx.uc_link = &r.scheduler;
    makecontext(&f.ctx, fiber_entry, 0);
    f.linear = i;
    f.tid = dim3(i % r.block_dim.x, (i / r.block_dim.x) % r.block_dim.y,
                 i / (r.block_dim.x * r.block_dim.y));
    f.state = Wait::kReady;
  }
  for (;;) {
    bool ran = false;
    for (int i : run_order(n)) {
      Fiber& f = r.fibers[i];
      if (f.state != Wait::kReady) continue;
      r.current = &f;
      swapcontext(&r.scheduler, &f.ctx);
      ran = true;
      if (r.last_error != cudaSuccess) return false;
    }
    if (ran) continue;
    bool all_done = true;
    for (int i = 0; i < n; ++i) all_done = all_done && r.fibers[i].state == Wait::kDone;
    if (all_done) return true;
    if (!release_barrier(n)) {
      fail(r.message.empty() ? "threads of a block wait at different barriers" : r.message);
      return false;
    }
  }
}

/// Runs `kernel(args...)` over the grid, block after block.
template <typename... P, typename... A>
cudaError_t launch_kernel(void (*kernel)(P...), std::string name, dim3 grid, dim3 block,
                          size_t smem, A&&... args) {
  Runtime& r = rt();
  r.launches.push_back({grid, block, smem, std::move(name)});
  const unsigned long threads = static_cast<unsigned long>(block.x) * block.y * block.z;
  auto reject = [&](cudaError_t e, const std::string& why) {
    r.last_error = e;
    if (r.message.empty()) r.message = why;
    return e;
  };
  if (threads == 0 || threads > 1024) return reject(cudaErrorInvalidConfiguration, "block size");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
    return reject(cudaErrorInvalidConfiguration, "grid size");
  int allowed = 48 * 1024;
  auto it = r.smem_attribute.find(reinterpret_cast<const void*>(kernel));
  if (it != r.smem_attribute.end()) allowed = std::max(allowed, it->second);
  if (smem > static_cast<size_t>(allowed) || smem > static_cast<size_t>(r.settings.smem_optin))
    return reject(cudaErrorInvalidValue, "dynamic shared memory above the kernel's limit");
  std::tuple<std::decay_t<P>...> bound(std::forward<A>(args)...);
  r.body = [&]() { std::apply(kernel, bound); };
  r.grid_dim = grid;
  r.block_dim = block;
  r.smem_storage.assign(smem + 16, 0xFF);
  uintptr_t base = reinterpret_cast<uintptr_t>(r.smem_storage.data());
  r.smem = reinterpret_cast<unsigned char*>((base + 15) & ~uintptr_t(15));
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        r.block_idx = dim3(x, y, z);
        std::fill(r.smem, r.smem + smem, 0xFF);
        if (!run_block(static_cast<int>(threads))) return r.last_error;
      }
  return cudaSuccess;
}

/// kernel<<<grid, block, smem>>>(args...), recorded under the kernel's name.
template <auto K, typename... A>
cudaError_t launch(dim3 grid, dim3 block, size_t smem, A&&... args) {
  return launch_kernel(K, kernel_name<K>(), grid, block, smem, std::forward<A>(args)...);
}

inline unsigned char* dynamic_smem() { return rt().smem; }

}  // namespace aghmn_emu

#define threadIdx (::aghmn_emu::rt().current->tid)
#define blockIdx (::aghmn_emu::rt().block_idx)
#define blockDim (::aghmn_emu::rt().block_dim)
#define gridDim (::aghmn_emu::rt().grid_dim)

inline void __syncthreads() { ::aghmn_emu::yield(::aghmn_emu::Wait::kBlock); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a wide type");
  auto& r = ::aghmn_emu::rt();
  ::aghmn_emu::Fiber* self = r.current;
  if (mask != 0xffffffffu || width != 32) ::aghmn_emu::fail("only full-warp shuffles are emulated");
  std::memcpy(&self->exchange, &value, sizeof(T));
  ::aghmn_emu::yield(::aghmn_emu::Wait::kWarp);
  int lane = self->linear % 32, partner = lane ^ lane_mask;
  T out = value;
  if (partner < 0 || partner >= 32)
    ::aghmn_emu::fail("shuffle partner outside the warp");
  else
    std::memcpy(&out, &r.fibers[self->linear - lane + partner].exchange, sizeof(T));
  // Nobody may overwrite its offer before every lane has read its partner's.
  ::aghmn_emu::yield(::aghmn_emu::Wait::kWarp);
  return out;
}

template <typename T>
T __ldg(const T* p) { return *p; }

inline int atomicAdd(int* address, int value) {
  int old = *address;  // fibers never switch inside this function: the update is atomic
  *address = old + value;
  return old;
}

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  const auto& s = ::aghmn_emu::rt().settings;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = s.sm_count; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = s.smem_per_sm; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = s.smem_optin; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

template <typename F>
cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  auto& r = ::aghmn_emu::rt();
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value > r.settings.smem_optin)
    return cudaErrorInvalidValue;
  r.smem_attribute[reinterpret_cast<const void*>(func)] = value;
  return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t = nullptr) {
  if (bytes) std::memset(ptr, value, bytes);
  return cudaSuccess;
}

inline cudaError_t cudaGetLastError() {
  auto& r = ::aghmn_emu::rt();
  cudaError_t e = r.last_error;
  r.last_error = cudaSuccess;
  return e;
}
