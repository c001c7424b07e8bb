// See stream_calls.h.
#include "runtime/stream_calls.h"

#include <algorithm>

#include "stream/stream_cpu.h"

namespace aghmn {
namespace rt {
namespace {

cpu::StreamDims stream_dims(const ModelDims& d) {
  return cpu::StreamDims{d.H, d.E, d.C, d.K, d.D, d.S, d.hops, d.max_len, d.reader == kReaderBiGRU};
}

}  // namespace

int64_t packed_floats(const ModelDims& d) { return cpu::stream_layout<float>(stream_dims(d)).total; }

void stream_round(const Model& m, const PushRound& r) {
  const cpu::StreamDims d = stream_dims(m.dims);
  cpu::StreamBatch<float> in{};
  in.B = r.B;
  in.embedding = m.embed.data();
  in.tokens = r.tokens;
  in.tok_offsets = r.tok_offsets;
  in.u_given = r.u_given;
  in.blocks = r.blocks;
  in.counts = r.counts;
  in.u_store = r.u_store;
  in.proj_store = r.proj_store;
  in.store_rows = r.store_rows;
  in.u_out = r.u_out;
  in.probs = r.probs;
  const float* w = m.packed.data();
  const int64_t R = cpu::kStreamTileRows;
  // Every conversation's window is read before any slot is overwritten.
  for (int64_t b = 0; b < r.B; b += R) cpu::stream_forward_tile(d, w, in, b, std::min(R, r.B - b));
  for (int64_t b = 0; b < r.B; b += R) cpu::stream_remember_tile(d, w, in, b, std::min(R, r.B - b));
}

}  // namespace rt
}  // namespace aghmn
