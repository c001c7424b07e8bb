// The weights the stream kernel packs (stream_cpu.h: stream_pack), as one list: their names in
// the model's state dict, their shapes and their order. Both callers of the packing read it: the
// torch op `aghmn_fast::stream_pack` (a positional list of tensors in this order) and the native
// runtime (named tensors of a .aghmn file, format 2), so the model file stores the framework's
// own layout and the kernel's private one never leaves the process.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "stream/stream_cpu.h"

namespace aghmn {
namespace cpu {

// One weight: its state-dict name and shape ([rows] for a bias: cols = 0).
struct StreamWeightSpec {
  std::string name;
  int64_t rows, cols;
};

// The weights of a model of these sizes in stream_pack's order: the BiGRU reader's GRU
// (weight_ih, weight_hh, bias_ih, bias_hh) forward then reverse and its projection (when
// bigru_reader); the fusion GRU's four per direction; the AGRU cells' four per cell; the
// classifier (weight, bias).
inline std::vector<StreamWeightSpec> stream_weight_specs(const StreamDims& d) {
  const int64_t H = d.H;
  std::vector<StreamWeightSpec> specs;
  auto gru = [&](const std::string& prefix, const char* suffix, int64_t gates, int64_t in) {
    specs.push_back({prefix + "weight_ih_l0" + suffix, gates * H, in});
    specs.push_back({prefix + "weight_hh_l0" + suffix, gates * H, H});
    specs.push_back({prefix + "bias_ih_l0" + suffix, gates * H, 0});
    specs.push_back({prefix + "bias_hh_l0" + suffix, gates * H, 0});
  };
  static const char* const kSuffix[2] = {"", "_reverse"};
  if (d.bigru_reader) {
    for (int r = 0; r < 2; ++r) gru("reader.gru.", kSuffix[r], 3, d.E);
    specs.push_back({"reader.proj.weight", H, 2 * H});
    specs.push_back({"reader.proj.bias", H, 0});
  }
  for (int r = 0; r < d.D; ++r) gru("fusion.", kSuffix[r], 3, H);
  for (int r = 0; r < d.S; ++r) gru("agru.", kSuffix[r], 2, H);
  specs.push_back({"classifier.weight", d.C, H});
  specs.push_back({"classifier.bias", d.C, 0});
  return specs;
}

// The StreamWeights of pointers given in stream_weight_specs(d)'s order (w.size() equal to its
// length; the caller has checked every shape).
template <typename T>
StreamWeights<T> stream_weights_in_order(const StreamDims& d, const std::vector<const T*>& w) {
  StreamWeights<T> src{};
  size_t i = 0;
  if (d.bigru_reader) {
    for (int r = 0; r < 2; ++r) {
      src.reader_w_ih[r] = w[i++];
      src.reader_w_hh[r] = w[i++];
      src.reader_b_ih[r] = w[i++];
      src.reader_b_hh[r] = w[i++];
    }
    src.reader_proj_w = w[i++];
    src.reader_proj_b = w[i++];
  }
  for (int r = 0; r < d.D; ++r) {
    src.fusion_w_ih[r] = w[i++];
    src.fusion_w_hh[r] = w[i++];
    src.fusion_b_ih[r] = w[i++];
    src.fusion_b_hh[r] = w[i++];
  }
  for (int r = 0; r < d.S; ++r) {
    src.summary_w_ih[r] = w[i++];
    src.summary_w_hh[r] = w[i++];
    src.summary_b_ih[r] = w[i++];
    src.summary_b_hh[r] = w[i++];
  }
  src.cls_w = w[i++];
  src.cls_b = w[i++];
  return src;
}

}  // namespace cpu
}  // namespace aghmn
