// A loaded .aghmn model (format version 2, docs/RUNTIME.md): sizes, labels, vocabulary, the
// embedding table, the stream kernel's weights (packed here, at load, from the file's named
// tensors) and, for the CNN reader, its weights.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/aghmn_runtime.h"

namespace aghmn {
namespace rt {

constexpr uint32_t kFormatVersion = AGHMN_MODEL_FORMAT_VERSION;
// The 8 bytes of AGHMN_MODEL_MAGIC: the string literal and its terminating NUL.
constexpr char kMagic[8] = AGHMN_MODEL_MAGIC;
static_assert(sizeof(AGHMN_MODEL_MAGIC) == sizeof(kMagic), "the magic is 8 bytes, NUL included");
constexpr int64_t kReaderBiGRU = 1, kReaderCNN = 2;
// Files larger than these are refused before a byte is read (a model of the MELD size is a few
// MB; a state holds K ring slots of every conversation).
constexpr uint64_t kMaxModelBytes = uint64_t{4} << 30;
constexpr uint64_t kMaxStateBytes = uint64_t{64} << 30;

// The model's sizes (those of aghmn::cpu::StreamDims, plus the reader and vocabulary). D: fusion
// directions (0, 1, 2); S: AGRU cells (0 soft attention, 1, 2); pad_id and unk_id are 0 and 1;
// packed_count: floats of the packed kernel weights.
struct ModelDims {
  int64_t H, E, C, K, D, S, hops, max_len, reader, V, cnn_filters, pad_id, unk_id, packed_count;
};

struct Model {
  Model() = default;
  Model(Model&&) = default;  // moving keeps the vectors' buffers, so embed and packed stay valid
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  ModelDims dims{};
  std::vector<std::string> labels;
  std::unordered_map<std::string, int64_t> vocab;
  // The file's buffer is not kept: its weights live on packed, so only the table is copied out.
  std::vector<float> embed_table;  // [V, E] (fp32, or the CNN reader's)
  const float* embed = nullptr;    // embed_table.data()
  // bf16 (metadata aghmn.precision "bf16"): the kernel's weight matrices, the BiGRU reader's
  // table (embed_bf16, bf16 bits; embed_table stays empty) and the ring store are bf16.
  bool bf16 = false;
  std::vector<uint16_t> embed_bf16;  // [V, E]
  std::vector<float> packed_weights;  // the stream kernel's layout, packed at load
  const float* packed = nullptr;      // packed_weights.data()
  // CNN reader (reader 2): per width k = 3, 4, 5 the conv weight re-laid as [k][E][F] (so the
  // inner loop runs over filters), its bias [F]; the projection [H, 3F] and bias [H].
  std::vector<float> conv_w[3], conv_b[3], proj_w, proj_b;
  uint64_t fingerprint = 0;   // the file's checksum: ties saved states to this model
};

// Parses and validates a whole model file held in memory and packs the kernel's weights; the
// model keeps nothing of the buffer. Throws Error: FORMAT, VERSION.
Model parse_model(const std::vector<unsigned char>& bytes);

// Reads a regular file into memory. Anything else (a FIFO, a device, a directory) and a file
// over max_bytes are refused at once, before a byte is read (throws Error: IO).
std::vector<unsigned char> read_file(const char* path, const char* what,
                                     uint64_t max_bytes = kMaxStateBytes);

}  // namespace rt
}  // namespace aghmn
