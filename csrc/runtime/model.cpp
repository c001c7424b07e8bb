// The .aghmn reader. The file is untrusted: the checksum is checked first, then every count,
// length, offset and size against the bytes that are really there, before anything is used.
#include "runtime/model.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include <sys/stat.h>

#include "runtime/runtime_internal.h"
#include "runtime/stream_calls.h"

namespace aghmn {
namespace rt {
namespace {

constexpr char kMagic[8] = {'A', 'G', 'H', 'M', 'N', 'R', 'T', '\0'};
constexpr uint32_t kMaxSections = 64;
constexpr int64_t kDimLimit = 1 << 16;  // any size beyond this is hostile, not a model
// K is the one size the file does not bound (the kernel's scratch and each conversation's store
// grow with it, the weights do not): a hostile K must not make a push allocate gigabytes.
constexpr int64_t kWindowLimit = 4096;

[[noreturn]] void bad(const std::string& what) { fail(AGHMN_ERR_FORMAT, "model file: " + what); }

struct Section {
  uint64_t offset, size;
};

// n * m * ... without overflow (all factors are small and non-negative after validation).
uint64_t floats_bytes(std::initializer_list<int64_t> factors) {
  uint64_t n = 4;
  for (int64_t f : factors) {
    if (f < 0 || (f > 0 && n > UINT64_MAX / static_cast<uint64_t>(f))) bad("a size overflows");
    n *= static_cast<uint64_t>(f);
  }
  return n;
}

std::vector<float> read_floats(const unsigned char* p, uint64_t bytes) {
  std::vector<float> v(bytes / 4);
  if (bytes) std::memcpy(v.data(), p, bytes);
  return v;
}

std::vector<std::string> read_strings(const unsigned char* p, uint64_t size, const char* tag,
                                      int64_t expected) {
  Reader r(p, size, AGHMN_ERR_FORMAT, std::string("model file: section ") + tag);
  const uint32_t count = r.read<uint32_t>("count");
  if (static_cast<int64_t>(count) != expected)
    bad(std::string("section ") + tag + " holds " + std::to_string(count) + " strings, dims say " +
        std::to_string(expected));
  std::vector<std::string> out;
  out.reserve(std::min<uint64_t>(count, size / 4));
  for (uint32_t i = 0; i < count; ++i) {
    out.push_back(r.read_string("string"));
    if (!utf8_valid(out.back().data(), out.back().size()))
      bad(std::string("section ") + tag + ": string " + std::to_string(i) + " is not valid UTF-8");
  }
  if (r.remaining() != 0) bad(std::string("section ") + tag + " has trailing bytes");
  return out;
}

void check_dims(const ModelDims& d) {
  auto in = [](int64_t v, int64_t lo, int64_t hi) { return v >= lo && v <= hi; };
  if (!in(d.H, 1, kDimLimit) || !in(d.E, 1, kDimLimit) || !in(d.C, 1, kDimLimit) ||
      !in(d.K, 1, kWindowLimit) || !in(d.hops, 1, 1024) || !in(d.max_len, 1, kDimLimit))
    bad("dims: H, E, C, K, hops, max_len must be positive and plausible");
  if (!in(d.D, 0, 2) || !in(d.S, 0, 2) || (d.D == 0 && d.S != 0))
    bad("dims: D and S must be in [0, 2], S = 0 when D = 0");
  if (d.reader != kReaderBiGRU && d.reader != kReaderCNN)
    bad("dims: reader must be 1 (BiGRU) or 2 (CNN), got " + std::to_string(d.reader));
  if (!in(d.V, 2, INT32_MAX)) bad("dims: V must be in [2, 2^31)");
  if (d.reader == kReaderCNN ? !in(d.cnn_filters, 1, kDimLimit) : d.cnn_filters != 0)
    bad("dims: cnn_filters must be positive for the CNN reader and 0 otherwise");
  if (d.pad_id != 0 || d.unk_id != 1) bad("dims: pad_id and unk_id must be 0 and 1");
  if (d.packed_count < 0) bad("dims: packed_count is negative");
}

}  // namespace

std::vector<unsigned char> read_file(const char* path, const char* what) {
  if (path == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, std::string(what) + " path is NULL");
  FILE* f = std::fopen(path, "rb");
  if (f == nullptr)
    fail(AGHMN_ERR_IO, std::string("cannot open ") + what + " " + path + ": " + std::strerror(errno));
  // One read into a buffer of the file's size (growing one in chunks costs copies and faults).
  std::vector<unsigned char> data;
  struct stat st;
  if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0)
    data.resize(static_cast<size_t>(st.st_size));
  size_t got = data.empty() ? 0 : std::fread(data.data(), 1, data.size(), f);
  data.resize(got);
  unsigned char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) data.insert(data.end(), buf, buf + n);
  const bool error = std::ferror(f) != 0;
  std::fclose(f);
  if (error) fail(AGHMN_ERR_IO, std::string("cannot read ") + what + " " + path);
  return data;
}

Model parse_model(std::vector<unsigned char> bytes) {
  const unsigned char* data = bytes.data();
  const size_t size = bytes.size();
  if (size < 8 || std::memcmp(data, kMagic, 8) != 0)
    fail(AGHMN_ERR_FORMAT, "not an .aghmn model file (no AGHMNRT magic)");
  if (size < 16 + 8) bad("truncated (" + std::to_string(size) + " bytes)");
  uint32_t version;
  std::memcpy(&version, data + 8, 4);
  if (version != kFormatVersion)
    fail(AGHMN_ERR_VERSION, "model file: format version " + std::to_string(version) +
                                ", this runtime reads version " + std::to_string(kFormatVersion));
  uint64_t stored;
  std::memcpy(&stored, data + size - 8, 8);
  const uint64_t checksum = fnv1a(data, size - 8);
  if (stored != checksum) bad("checksum mismatch (corrupt or truncated)");
  const uint64_t body = size - 8;  // payloads end before the checksum

  Reader head(data, body, AGHMN_ERR_FORMAT, "model file: header");
  head.take(12, "magic and version");
  const uint32_t count = head.read<uint32_t>("section_count");
  if (count < 1 || count > kMaxSections)
    bad("section_count " + std::to_string(count) + " is outside [1, 64]");
  static const char* const kTags[] = {"dims", "labels", "vocab", "embed", "packed", "cnn", "meta"};
  Section sections[7] = {};
  bool present[7] = {};
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (uint32_t i = 0; i < count; ++i) {
    char tag[9] = {};
    std::memcpy(tag, head.take(8, "section tag"), 8);
    const uint64_t offset = head.read<uint64_t>("section offset");
    const uint64_t sz = head.read<uint64_t>("section size");
    const size_t len = strnlen(tag, 8);
    for (size_t k = len; k < 8; ++k)
      if (tag[k] != '\0') bad("section " + std::to_string(i) + ": tag is not NUL-padded ASCII");
    int which = -1;
    for (int k = 0; k < 7; ++k)
      if (std::strcmp(tag, kTags[k]) == 0) which = k;
    if (which < 0) bad("section " + std::to_string(i) + ": unknown tag (format version 1 has "
                       "dims, labels, vocab, embed, packed, cnn, meta)");
    if (present[which]) bad(std::string("section ") + kTags[which] + " appears twice");
    if (offset % 64 != 0) bad(std::string("section ") + kTags[which] + ": offset not a multiple of 64");
    present[which] = true;
    sections[which] = {offset, sz};
    spans.emplace_back(offset, sz);
  }
  const uint64_t table_end = head.pos();
  for (int k = 0; k < 7; ++k) {
    const Section& s = sections[k];
    if (present[k] && (s.offset < table_end || s.offset > body || s.size > body - s.offset))
      bad(std::string("section ") + kTags[k] + " lies outside the file");
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].first < spans[i - 1].first + spans[i - 1].second) bad("sections overlap");
  for (int k : {0, 1, 2, 3, 4, 6})
    if (!present[k]) bad(std::string("no ") + kTags[k] + " section");

  Model m;
  m.fingerprint = checksum;
  const Section& ds = sections[0];
  if (ds.size != 14 * 8) bad("section dims must hold 14 int64");
  int64_t v[14];
  std::memcpy(v, data + ds.offset, sizeof v);
  ModelDims& d = m.dims;
  d = ModelDims{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13]};
  check_dims(d);
  if (present[5] != (d.reader == kReaderCNN))
    bad("a cnn section is required for the CNN reader (2) and only for it");

  m.labels = read_strings(data + sections[1].offset, sections[1].size, "labels", d.C);
  std::vector<std::string> itos =
      read_strings(data + sections[2].offset, sections[2].size, "vocab", d.V);
  if (itos[0] != "<pad>" || itos[1] != "<unk>") bad("vocab must start with <pad>, <unk>");
  m.vocab.reserve(itos.size());
  for (size_t i = 0; i < itos.size(); ++i)
    if (!m.vocab.emplace(std::move(itos[i]), static_cast<int64_t>(i)).second)
      bad("vocab has a duplicate token (id " + std::to_string(i) + ")");

  if (sections[3].size != floats_bytes({d.V, d.E}))
    bad("section embed must hold V x E float32");
  // Sections start at multiples of 64 from the buffer's start (malloc-aligned): floats are aligned.
  m.embed = reinterpret_cast<const float*>(data + sections[3].offset);

  const int64_t total = packed_floats(d);
  if (d.packed_count != total || sections[4].size != floats_bytes({d.packed_count}))
    bad("section packed holds " + std::to_string(sections[4].size / 4) + " floats (dims say " +
        std::to_string(d.packed_count) + "); the stream kernel's layout for these dims needs " +
        std::to_string(total));
  m.packed = reinterpret_cast<const float*>(data + sections[4].offset);

  if (d.reader == kReaderCNN) {
    const int64_t F = d.cnn_filters, E = d.E, H = d.H;
    const uint64_t need = floats_bytes({F, E, 3}) + floats_bytes({F}) + floats_bytes({F, E, 4}) +
                          floats_bytes({F}) + floats_bytes({F, E, 5}) + floats_bytes({F}) +
                          floats_bytes({H, 3 * F}) + floats_bytes({H});
    if (sections[5].size != need) bad("section cnn has the wrong size for its dims");
    const std::vector<float> all = read_floats(data + sections[5].offset, sections[5].size);
    const float* p = all.data();
    for (int w = 0; w < 3; ++w) {
      const int64_t k = 3 + w;
      m.conv_w[w].resize(k * E * F);
      for (int64_t f = 0; f < F; ++f)  // PyTorch [F][E][k] -> [k][E][F]
        for (int64_t c = 0; c < E; ++c)
          for (int64_t j = 0; j < k; ++j) m.conv_w[w][(j * E + c) * F + f] = p[(f * E + c) * k + j];
      p += F * E * k;
      m.conv_b[w].assign(p, p + F);
      p += F;
    }
    m.proj_w.assign(p, p + H * 3 * F);
    p += H * 3 * F;
    m.proj_b.assign(p, p + H);
  }
  m.bytes = std::move(bytes);  // the pointers above stay valid: the buffer moves, not its bytes
  return m;
}

}  // namespace rt
}  // namespace aghmn
