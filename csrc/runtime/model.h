// A loaded .aghmn model (format version 1, docs/RUNTIME.md): sizes, labels, vocabulary, the
// embedding table, the stream kernel's packed weights and, for the CNN reader, its weights.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace aghmn {
namespace rt {

constexpr uint32_t kFormatVersion = 1;
constexpr int64_t kReaderBiGRU = 1, kReaderCNN = 2;

struct ModelDims {
  int64_t H, E, C, K, D, S, hops, max_len, reader, V, cnn_filters, pad_id, unk_id, packed_count;
};

struct Model {
  Model() = default;
  Model(Model&&) = default;  // moving keeps `bytes`' buffer, so embed and packed stay valid
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  ModelDims dims{};
  std::vector<unsigned char> bytes;  // the whole file: embed and packed point into it
  std::vector<std::string> labels;
  std::unordered_map<std::string, int64_t> vocab;
  const float* embed = nullptr;   // [V, E]
  const float* packed = nullptr;  // stream_pack's buffer
  // CNN reader (reader 2): per width k = 3, 4, 5 the conv weight re-laid as [k][E][F] (so the
  // inner loop runs over filters), its bias [F]; the projection [H, 3F] and bias [H].
  std::vector<float> conv_w[3], conv_b[3], proj_w, proj_b;
  uint64_t fingerprint = 0;   // the file's checksum: ties saved states to this model
};

// Parses and validates a whole model file held in memory, which the model keeps (its two big
// sections are used in place: no copy). Throws Error: FORMAT, VERSION.
Model parse_model(std::vector<unsigned char> bytes);

// Reads a file into memory (throws Error: IO).
std::vector<unsigned char> read_file(const char* path, const char* what);

}  // namespace rt
}  // namespace aghmn
