// Batch tiling of the CPU bindings (torch header: at::get_num_threads).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace aghmn {

// Rows per batch tile: enough tiles for every thread, at most kMaxTile rows so that a tile's
// per-step state stays in L1 while the packed weights stream from L2. (at::parallel_for is a
// header template: it only runs tiles on several threads when the calling file is compiled with
// -fopenmp; otherwise it runs them all on the calling thread. Results do not depend on it:
// every tile computes its rows with the same per-element summation order.)
constexpr int64_t kMaxTile = 32;

/// Rows per tile for a batch of `batch` independent recurrences.
inline int64_t tile_rows(int64_t batch) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return std::clamp<int64_t>((batch + threads - 1) / threads, 1, kMaxTile);
}

}  // namespace aghmn
