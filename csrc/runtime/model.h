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
  ModelDims dims{};
  std::vector<std::string> labels;
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<float> embed;   // [V, E]
  std::vector<float> packed;  // stream_pack's buffer
  // CNN reader (reader 2): per width k = 3, 4, 5 the conv weight re-laid as [k][E][F] (so the
  // inner loop runs over filters), its bias [F]; the projection [H, 3F] and bias [H].
  std::vector<float> conv_w[3], conv_b[3], proj_w, proj_b;
  uint64_t fingerprint = 0;   // the file's checksum: ties saved states to this model
};

// Parses and validates a whole model file held in memory (throws Error: FORMAT, VERSION).
Model parse_model(const unsigned char* data, size_t size);

// Reads a file into memory (throws Error: IO).
std::vector<unsigned char> read_file(const char* path, const char* what);

}  // namespace rt
}  // namespace aghmn
