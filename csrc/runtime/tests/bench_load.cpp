// Load-time costs of a model file (benchmarks/runtime_bench.py --load-bench runs it): reading the
// file, the whole parse (checksum, validation, the finiteness scan, packing), the checksum alone
// (XXH64 over the file) and the packing of
// the kernel's weights alone (pack_kernel_weights on weights of the model's shapes), each the
// median of REPS runs, as one JSON line.
//
//   bench_load MODEL.aghmn [REPS]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "runtime/model.h"
#include "runtime/runtime_internal.h"
#include "runtime/stream_calls.h"

namespace {

template <typename F>
double median_ms(int reps, F&& f) {
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_load MODEL.aghmn [REPS]\n");
    return 2;
  }
  const int reps = argc > 2 ? std::max(1, std::atoi(argv[2])) : 50;
  using namespace aghmn::rt;
  try {
    const std::vector<unsigned char> bytes = read_file(argv[1], "model", kMaxModelBytes);
    const Model model = parse_model(bytes);
    const ModelDims d = model.dims;
    // Weights of the model's shapes (values do not change the cost of packing).
    std::vector<std::vector<float>> store;
    std::vector<const float*> ptrs;
    for (const KernelWeight& w : kernel_weights(d)) {
      store.emplace_back(static_cast<size_t>(w.rows * std::max<int64_t>(w.cols, 1)), 0.01f);
      ptrs.push_back(store.back().data());
    }
    size_t sink = 0;
    const double read = median_ms(reps, [&] { sink += read_file(argv[1], "model", kMaxModelBytes).size(); });
    const double parse = median_ms(reps, [&] { sink += parse_model(bytes).dims.packed_count; });
    const double pack = median_ms(reps, [&] { sink += pack_kernel_weights(d, ptrs).size(); });
    const double checksum = median_ms(reps, [&] { sink += xxh64(bytes.data(), bytes.size() - 8); });
    std::printf("{\"file_bytes\": %zu, \"H\": %lld, \"E\": %lld, \"V\": %lld, \"K\": %lld, "
                "\"packed_floats\": %lld, \"reps\": %d, \"read_ms\": %.3f, "
                "\"parse_validate_pack_ms\": %.3f, \"checksum_ms\": %.3f, \"pack_ms\": %.3f, "
                "\"sink\": %zu}\n",
                bytes.size(), static_cast<long long>(d.H), static_cast<long long>(d.E),
                static_cast<long long>(d.V), static_cast<long long>(d.K),
                static_cast<long long>(d.packed_count), reps, read, parse, checksum, pack, sink % 10);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_load: %s\n", e.what());
    return 1;
  }
  return 0;
}
