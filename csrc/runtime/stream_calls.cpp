// See stream_calls.h.
#include "runtime/stream_calls.h"

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <system_error>
#include <thread>
#include <vector>

#include "stream/stream_cpu.h"
#include "stream/stream_weights.h"

namespace aghmn {
namespace rt {
namespace {

cpu::StreamDims stream_dims(const ModelDims& d) {
  return cpu::StreamDims{d.H, d.E, d.C, d.K, d.D, d.S, d.hops, d.max_len, d.reader == kReaderBiGRU};
}

// Threads for a round: $AGHMN_RUNTIME_THREADS if set (>= 1), else the machine's cores.
int64_t round_threads() {
  static const int64_t threads = [] {
    const char* env = std::getenv("AGHMN_RUNTIME_THREADS");
    const long n = env ? std::strtol(env, nullptr, 10) : 0;
    if (n >= 1) return static_cast<int64_t>(std::min(n, 256L));
    return static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  }();
  return threads;
}

// Runs fn(first tile, end tile) over tiles [0, n) on up to round_threads() threads, at least
// kMinTilesPerThread tiles each (a thread costs tens of microseconds to start: one push stays on
// the caller's thread). Every row's arithmetic is the same whichever thread computes it.
constexpr int64_t kMinTilesPerThread = 4;
template <typename F>
void for_tiles(int64_t n, F&& fn) {
  const int64_t threads = std::min(round_threads(), std::max<int64_t>(1, n / kMinTilesPerThread));
  if (threads <= 1) return fn(int64_t{0}, n);
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(threads);
  const int64_t per = (n + threads - 1) / threads;
  auto run = [&](int64_t t) {
    try {
      fn(t * per, std::min(n, (t + 1) * per));
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  int64_t started = 1;
  try {
    for (; started < threads && started * per < n; ++started) pool.emplace_back(run, started);
  } catch (const std::system_error&) {  // no more threads: the caller does the rest
  }
  run(0);
  for (auto& th : pool) th.join();
  for (int64_t t = started; t < threads && t * per < n; ++t) run(t);
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace

int64_t packed_floats(const ModelDims& d) { return cpu::stream_layout<float>(stream_dims(d)).total; }

std::vector<KernelWeight> kernel_weights(const ModelDims& d) {
  std::vector<KernelWeight> out;
  for (const cpu::StreamWeightSpec& s : cpu::stream_weight_specs(stream_dims(d)))
    out.push_back({s.name, s.rows, s.cols});
  return out;
}

std::vector<float> pack_kernel_weights(const ModelDims& d, const std::vector<const float*>& w,
                                       bool bf16) {
  const cpu::StreamDims sd = stream_dims(d);
  if (bf16) {
    std::vector<float> packed(cpu::stream_layout<float, cpu::Bf16>(sd).total);
    cpu::stream_pack<float, cpu::Bf16>(sd, cpu::stream_weights_in_order(sd, w), packed.data());
    return packed;
  }
  std::vector<float> packed(cpu::stream_layout<float>(sd).total);
  cpu::stream_pack(sd, cpu::stream_weights_in_order(sd, w), packed.data());
  return packed;
}

namespace {

template <typename S>
void stream_round_as(const Model& m, const PushRound& r, const S* embedding) {
  const cpu::StreamDims d = stream_dims(m.dims);
  cpu::StreamBatch<float, S> in{};
  in.B = r.B;
  in.embedding = embedding;
  in.tokens = r.tokens;
  in.tok_offsets = r.tok_offsets;
  in.u_given = r.u_given;
  in.blocks = r.blocks;
  in.counts = r.counts;
  in.u_store = static_cast<S*>(r.u_store);
  in.proj_store = static_cast<S*>(r.proj_store);
  in.store_rows = r.store_rows;
  in.u_out = r.u_out;
  in.probs = r.probs;
  const float* w = m.packed;
  const int64_t R = cpu::kStreamTileRows, tiles = (r.B + R - 1) / R;
  // Every conversation's window is read before any slot is overwritten.
  for_tiles(tiles, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      cpu::stream_forward_tile(d, w, in, t * R, std::min(R, r.B - t * R));
  });
  for_tiles(tiles, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      cpu::stream_remember_tile(d, w, in, t * R, std::min(R, r.B - t * R));
  });
}

}  // namespace

void project_slots(const Model& m, const void* u, int64_t n, void* proj) {
  const cpu::StreamDims d = stream_dims(m.dims);
  if (m.bf16)
    cpu::stream_project_rows<float, cpu::Bf16>(d, m.packed, static_cast<const cpu::Bf16*>(u), n,
                                               static_cast<cpu::Bf16*>(proj));
  else
    cpu::stream_project_rows<float, float>(d, m.packed, static_cast<const float*>(u), n,
                                           static_cast<float*>(proj));
}

void stream_round(const Model& m, const PushRound& r) {
  if (m.bf16)
    stream_round_as<cpu::Bf16>(m, r, reinterpret_cast<const cpu::Bf16*>(m.embed_bf16.data()));
  else
    stream_round_as<float>(m, r, m.embed);
}

}  // namespace rt
}  // namespace aghmn
