// The .aghmn reader (format version 2, docs/RUNTIME.md). The file is untrusted: the checksum is
// checked first, then every count, length, offset, size, name and value against the bytes that
// are really there and against the model its metadata describes, before anything is used. The
// kernel's weights are packed here from the file's named tensors (the framework's layout).
#include "runtime/model.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "runtime/runtime_internal.h"
#include "common/bf16_cpu.h"
#include "runtime/stream_calls.h"

namespace aghmn {
namespace rt {
namespace {

constexpr uint32_t kMaxSections = 64;
constexpr uint32_t kFlagRequired = 1;
constexpr uint32_t kKvInt64 = 1, kKvString = 2, kKvStrings = 3;
constexpr uint32_t kDtypeF32 = 0, kDtypeBF16 = 1;
constexpr uint32_t kMaxTensorDims = 4;
constexpr uint64_t kMaxTensors = 4096;
constexpr uint64_t kAlign = 64;
constexpr const char* kTokenizer = "aghmn-words-1";  // aghmn_fast/data/text.py's rules
constexpr int64_t kDimLimit = 1 << 16;  // any size beyond this is hostile, not a model
// K is the one size the weights do not bound (the kernel's scratch and each conversation's store
// grow with it): a hostile K must not make a push allocate gigabytes.
constexpr int64_t kWindowLimit = 4096;

[[noreturn]] void bad(const std::string& what) { fail(AGHMN_ERR_FORMAT, "model file: " + what); }

struct Section {
  uint64_t offset = 0, size = 0;
  bool present = false;
};

// A u64 length, then that many bytes of valid UTF-8.
std::string read_text(Reader& r, const std::string& what) {
  const uint64_t n = r.read<uint64_t>(what.c_str());
  if (n > r.remaining()) bad(what + ": length " + std::to_string(n) + " exceeds its section");
  const unsigned char* p = r.take(static_cast<size_t>(n), what.c_str());
  std::string s(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  if (!utf8_valid(s.data(), s.size())) bad(what + " is not valid UTF-8");
  return s;
}

struct KvValue {
  uint32_t type = 0;
  int64_t i = 0;
  std::string s;
  std::vector<std::string> list;
};

std::map<std::string, KvValue> read_kv(const unsigned char* p, uint64_t size) {
  Reader r(p, size, AGHMN_ERR_FORMAT, "model file: section kv");
  const uint64_t count = r.read<uint64_t>("count");
  if (count > size / 12) bad("section kv: count " + std::to_string(count) + " exceeds the section");
  std::map<std::string, KvValue> kv;
  for (uint64_t k = 0; k < count; ++k) {
    std::string key = read_text(r, "metadata key " + std::to_string(k));
    KvValue v;
    v.type = r.read<uint32_t>("type");
    const std::string what = "metadata " + key;
    if (v.type == kKvInt64) {
      v.i = r.read<int64_t>("value");
    } else if (v.type == kKvString) {
      v.s = read_text(r, what);
    } else if (v.type == kKvStrings) {
      const uint64_t n = r.read<uint64_t>("count");
      if (n > r.remaining() / 8) bad(what + ": count " + std::to_string(n) + " exceeds the section");
      v.list.reserve(static_cast<size_t>(n));
      for (uint64_t i = 0; i < n; ++i) v.list.push_back(read_text(r, what + " item " + std::to_string(i)));
    } else {
      bad(what + ": unknown value type " + std::to_string(v.type));
    }
    if (!kv.emplace(std::move(key), std::move(v)).second) bad(what + " appears twice");
  }
  if (r.remaining() != 0) bad("section kv has trailing bytes");
  return kv;
}

const KvValue& kv_get(const std::map<std::string, KvValue>& kv, const std::string& key,
                      uint32_t type) {
  const auto it = kv.find(key);
  if (it == kv.end()) bad("metadata " + key + " is missing");
  if (it->second.type != type) bad("metadata " + key + " has the wrong type");
  return it->second;
}

// A tensor of the file: f32 values (data) or bf16 bits (bits); floats counts the elements.
struct TensorInfo {
  std::vector<int64_t> shape;
  uint32_t dtype;
  const float* data;
  const uint16_t* bits;
  uint64_t floats;
};

std::map<std::string, TensorInfo> read_tensors(const unsigned char* file, const Section& dir,
                                               const Section& data) {
  Reader r(file + dir.offset, dir.size, AGHMN_ERR_FORMAT, "model file: section tensors");
  const uint64_t count = r.read<uint64_t>("count");
  if (count > kMaxTensors) bad("section tensors: count " + std::to_string(count) + " is implausible");
  std::map<std::string, TensorInfo> tensors;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (uint64_t t = 0; t < count; ++t) {
    std::string name = read_text(r, "tensor name " + std::to_string(t));
    const std::string what = "tensor " + name;
    const uint32_t dtype = r.read<uint32_t>("dtype");
    const uint32_t ndim = r.read<uint32_t>("ndim");
    if (dtype != kDtypeF32 && dtype != kDtypeBF16)
      bad(what + ": dtype " + std::to_string(dtype) + " (this runtime reads f32, 0, and bf16, 1)");
    if (ndim < 1 || ndim > kMaxTensorDims) bad(what + ": " + std::to_string(ndim) + " dimensions");
    TensorInfo info{};
    uint64_t floats = 1;
    for (uint32_t i = 0; i < ndim; ++i) {
      const uint64_t n = r.read<uint64_t>("dim");
      if (n > static_cast<uint64_t>(INT32_MAX) || (n > 0 && floats > (uint64_t{1} << 40) / n))
        bad(what + ": a dimension is implausible");
      floats *= n;
      info.shape.push_back(static_cast<int64_t>(n));
    }
    const uint64_t offset = r.read<uint64_t>("offset");
    if (offset % kAlign != 0) bad(what + ": offset not a multiple of 64");
    const uint64_t bytes = floats * (dtype == kDtypeBF16 ? 2 : 4);
    if (offset > data.size || bytes > data.size - offset) bad(what + " lies outside section data");
    info.dtype = dtype;
    info.data = dtype == kDtypeF32 ? reinterpret_cast<const float*>(file + data.offset + offset) : nullptr;
    info.bits = dtype == kDtypeBF16 ? reinterpret_cast<const uint16_t*>(file + data.offset + offset) : nullptr;
    info.floats = floats;
    spans.emplace_back(offset, bytes);
    if (!tensors.emplace(std::move(name), std::move(info)).second) bad(what + " appears twice");
  }
  if (r.remaining() != 0) bad("section tensors has trailing bytes");
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].first < spans[i - 1].first + spans[i - 1].second) bad("tensors overlap");
  return tensors;
}

void check_dims(const ModelDims& d) {
  auto in = [](int64_t v, int64_t lo, int64_t hi) { return v >= lo && v <= hi; };
  if (!in(d.H, 1, kDimLimit) || !in(d.E, 1, kDimLimit) || !in(d.C, 1, kDimLimit) ||
      !in(d.K, 1, kWindowLimit) || !in(d.hops, 1, 1024) || !in(d.max_len, 1, kDimLimit))
    bad("metadata: hidden_size, embedding_dim, num_classes, window, hops and max_len must be "
        "positive and plausible");
  if (!in(d.V, 2, INT32_MAX)) bad("metadata: vocab_size must be in [2, 2^31)");
  if (d.reader == kReaderCNN && !in(d.cnn_filters, 1, kDimLimit))
    bad("metadata: cnn_filters must be positive and plausible for the CNN reader");
}

// The labels as the C API hands them out: NUL-terminated, so a NUL inside one would cut it, and
// two equal names would make a {label: probability} mapping lose a class.
void check_labels(const std::vector<std::string>& labels) {
  std::set<std::string> seen;
  for (size_t i = 0; i < labels.size(); ++i) {
    const std::string& l = labels[i];
    if (l.empty()) bad("label " + std::to_string(i) + " is empty");
    if (l.find('\0') != std::string::npos) bad("label " + std::to_string(i) + " holds a NUL byte");
    if (!seen.insert(l).second) bad("label \"" + l + "\" appears twice");
  }
}

// Whether every float is finite: its exponent bits not all set. No early exit, so the loop
// vectorises (the scan covers every weight of the file at each load).
bool all_finite(const float* p, uint64_t n) {
  const auto* bits = reinterpret_cast<const uint32_t*>(p);
  uint32_t non_finite = 0;
  for (uint64_t i = 0; i < n; ++i) non_finite |= (bits[i] & 0x7F800000u) == 0x7F800000u;
  return non_finite == 0;
}

int64_t code_of(const std::string& key, const std::string& value,
                std::initializer_list<std::pair<const char*, int64_t>> codes) {
  for (const auto& c : codes)
    if (value == c.first) return c.second;
  bad("metadata " + key + " = \"" + value + "\" is not one this runtime knows");
}

}  // namespace

std::vector<unsigned char> read_file(const char* path, const char* what, uint64_t max_bytes) {
  if (path == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, std::string(what) + " path is NULL");
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
  const int fd = ::open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0)
    fail(AGHMN_ERR_IO, std::string("cannot open ") + what + " " + path + ": " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0)
    fail(AGHMN_ERR_IO, std::string("cannot stat ") + what + " " + path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) {
    const char* kind = S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISCHR(st.st_mode) ? "a character device" : S_ISBLK(st.st_mode) ? "a block device"
                       : S_ISSOCK(st.st_mode) ? "a socket" : "not a file";
    fail(AGHMN_ERR_IO, std::string(what) + " " + path + " is " + kind + ", not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > max_bytes)
    fail(AGHMN_ERR_IO, std::string(what) + " " + path + " is " + std::to_string(size) +
                           " bytes, over the limit of " + std::to_string(max_bytes));
  // One read into a buffer of the file's size; a file that grows meanwhile is read to its size
  // at open (its checksum then tells), one that shrinks to what is there.
  std::vector<unsigned char> data(static_cast<size_t>(size));
  size_t got = 0;
  while (got < data.size()) {
    const ssize_t n = ::read(fd, data.data() + got, data.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(AGHMN_ERR_IO, std::string("cannot read ") + what + " " + path + ": " + std::strerror(errno));
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  data.resize(got);
  return data;
}

Model parse_model(const std::vector<unsigned char>& bytes) {
  const unsigned char* data = bytes.data();
  const size_t size = bytes.size();
  if (size < 8 || std::memcmp(data, kMagic, 8) != 0)
    fail(AGHMN_ERR_FORMAT, "not an .aghmn model file (no AGHMNRT magic)");
  if (size < 16 + 8) bad("truncated (" + std::to_string(size) + " bytes)");
  if (size > kMaxModelBytes) bad("larger than the limit of " + std::to_string(kMaxModelBytes) + " bytes");
  uint32_t version;
  std::memcpy(&version, data + 8, 4);
  if (version == 1)
    fail(AGHMN_ERR_VERSION, "model file: format version 1 (the kernel's private weight layout) is "
                            "no longer read: re-export its checkpoint with `aghmn-fast export "
                            "--checkpoint best.pt --out model.aghmn`");
  if (version != kFormatVersion)
    fail(AGHMN_ERR_VERSION, "model file: format version " + std::to_string(version) +
                                ", this runtime reads version " + std::to_string(kFormatVersion));
  uint64_t stored;
  std::memcpy(&stored, data + size - 8, 8);
  const uint64_t checksum = xxh64(data, size - 8);
  if (stored != checksum) bad("checksum mismatch (corrupt or truncated)");
  const uint64_t body = size - 8;  // payloads end before the checksum

  Reader head(data, body, AGHMN_ERR_FORMAT, "model file: header");
  head.take(12, "magic and version");
  const uint32_t count = head.read<uint32_t>("section_count");
  if (count < 1 || count > kMaxSections)
    bad("section_count " + std::to_string(count) + " is outside [1, 64]");
  static const char* const kTags[] = {"kv", "tensors", "data"};
  Section sections[3];
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  std::set<std::string> tags;
  for (uint32_t i = 0; i < count; ++i) {
    char tag[9] = {};
    std::memcpy(tag, head.take(8, "section tag"), 8);
    const uint32_t flags = head.read<uint32_t>("section flags");
    head.take(4, "reserved");
    const uint64_t offset = head.read<uint64_t>("section offset");
    const uint64_t sz = head.read<uint64_t>("section size");
    const size_t len = strnlen(tag, 8);
    bool ascii = len > 0;
    for (size_t k = 0; k < 8; ++k)
      ascii = ascii && (k < len ? (tag[k] > 0x20 && tag[k] < 0x7F) : tag[k] == '\0');
    if (!ascii) bad("section " + std::to_string(i) + ": tag is not NUL-padded printable ASCII");
    if (!tags.insert(tag).second) bad(std::string("section ") + tag + " appears twice");
    if (offset % kAlign != 0) bad(std::string("section ") + tag + ": offset not a multiple of 64");
    if (offset < 16 + 32 * uint64_t{count} || offset > body || sz > body - offset)
      bad(std::string("section ") + tag + " lies outside the file");
    spans.emplace_back(offset, sz);
    int which = -1;
    for (int k = 0; k < 3; ++k)
      if (std::strcmp(tag, kTags[k]) == 0) which = k;
    if (which < 0) {
      if (flags & kFlagRequired)
        bad(std::string("section ") + tag + " is marked required and this runtime does not know "
            "it (written by a newer exporter? upgrade the runtime)");
      continue;  // an optional section this runtime does not know: skipped
    }
    sections[which] = {offset, sz, true};
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].first < spans[i - 1].first + spans[i - 1].second) bad("sections overlap");
  for (int k = 0; k < 3; ++k)
    if (!sections[k].present) bad(std::string("no ") + kTags[k] + " section");

  const std::map<std::string, KvValue> kv = read_kv(data + sections[0].offset, sections[0].size);
  if (kv_get(kv, "general.architecture", kKvString).s != "aghmn")
    bad("metadata general.architecture is not \"aghmn\"");
  const std::string tokenizer = kv_get(kv, "tokenizer.kind", kKvString).s;
  if (tokenizer != kTokenizer)
    bad("tokenizer.kind \"" + tokenizer + "\" is not the one this runtime applies (" + kTokenizer + ")");
  auto integer = [&](const char* key) { return kv_get(kv, key, kKvInt64).i; };
  auto text = [&](const char* key) { return kv_get(kv, key, kKvString).s; };

  Model m;
  m.fingerprint = checksum;
  ModelDims& d = m.dims;
  d.reader = code_of("aghmn.reader", text("aghmn.reader"), {{"bigru", kReaderBiGRU}, {"cnn", kReaderCNN}});
  d.D = code_of("aghmn.fusion", text("aghmn.fusion"), {{"none", 0}, {"unif", 1}, {"bif", 2}});
  const std::string summary = text("aghmn.summary");
  d.S = code_of("aghmn.summary", summary, {{"none", 0}, {"att", 0}, {"agru", 1}, {"biagru", 2}});
  if ((d.D == 0) != (summary == "none")) bad("metadata: fusion and summary must both be none or both set");
  d.H = integer("aghmn.hidden_size");
  d.E = integer("aghmn.embedding_dim");
  d.C = integer("aghmn.num_classes");
  d.K = integer("aghmn.window");
  d.hops = integer("aghmn.hops");
  d.max_len = integer("aghmn.max_len");
  d.V = integer("aghmn.vocab_size");
  d.cnn_filters = d.reader == kReaderCNN ? integer("aghmn.cnn_filters") : 0;
  d.pad_id = 0;
  d.unk_id = 1;
  check_dims(d);

  m.labels = kv_get(kv, "aghmn.labels", kKvStrings).list;
  if (static_cast<int64_t>(m.labels.size()) != d.C)
    bad("metadata aghmn.labels names " + std::to_string(m.labels.size()) + " labels, num_classes is " +
        std::to_string(d.C));
  check_labels(m.labels);
  const std::vector<std::string>& itos = kv_get(kv, "tokenizer.tokens", kKvStrings).list;
  if (static_cast<int64_t>(itos.size()) != d.V)
    bad("metadata tokenizer.tokens holds " + std::to_string(itos.size()) + " tokens, vocab_size is " +
        std::to_string(d.V));
  if (itos[0] != "<pad>" || itos[1] != "<unk>") bad("the vocabulary must start with <pad>, <unk>");
  m.vocab.reserve(itos.size());
  for (size_t i = 0; i < itos.size(); ++i)
    if (!m.vocab.emplace(itos[i], static_cast<int64_t>(i)).second)
      bad("the vocabulary has a duplicate token (id " + std::to_string(i) + ")");

  // Every tensor the model needs, with its shape; nothing else.
  std::map<std::string, TensorInfo> tensors = read_tensors(data, sections[1], sections[2]);
  // bf16 tensors widened (exactly) to fp32 for the checks and the packing, which rounds them
  // back to the same bits.
  std::map<std::string, std::vector<float>> widened;
  for (auto& t : tensors)
    if (t.second.dtype == kDtypeBF16) {
      std::vector<float>& w = widened[t.first];
      w.resize(t.second.floats);
      for (uint64_t i = 0; i < t.second.floats; ++i) w[i] = cpu::bf16_float(t.second.bits[i]);
      t.second.data = w.data();
    }
  const auto precision = kv.find("aghmn.precision");
  if (precision != kv.end()) {
    if (precision->second.type != kKvString) bad("metadata aghmn.precision has the wrong type");
    if (precision->second.s != "fp32" && precision->second.s != "bf16")
      bad("metadata aghmn.precision \"" + precision->second.s + "\" is not fp32 or bf16");
    m.bf16 = precision->second.s == "bf16";
  }
  std::map<std::string, std::vector<int64_t>> expected;
  expected["embedding.weight"] = {d.V, d.E};
  const std::vector<KernelWeight> kernel = kernel_weights(d);
  for (const KernelWeight& w : kernel)
    expected[w.name] = w.cols ? std::vector<int64_t>{w.rows, w.cols} : std::vector<int64_t>{w.rows};
  const int64_t F = d.cnn_filters, E = d.E, H = d.H;
  if (d.reader == kReaderCNN) {
    for (int w = 0; w < 3; ++w) {
      const std::string conv = "reader.convs." + std::to_string(w);
      expected[conv + ".weight"] = {F, E, 3 + w};
      expected[conv + ".bias"] = {F};
    }
    expected["reader.proj.weight"] = {H, 3 * F};
    expected["reader.proj.bias"] = {H};
  }
  for (const auto& t : tensors)
    if (expected.find(t.first) == expected.end())
      bad("tensor " + t.first + " is not part of this model (reader " + text("aghmn.reader") +
          ", fusion " + text("aghmn.fusion") + ", summary " + summary + ")");
  auto shape_text = [](const std::vector<int64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  };
  for (const auto& e : expected) {
    const auto it = tensors.find(e.first);
    if (it == tensors.end()) bad("tensor " + e.first + " is missing");
    if (it->second.shape != e.second)
      bad("tensor " + e.first + " has shape " + shape_text(it->second.shape) + ", the metadata says " +
          shape_text(e.second));
    if (!all_finite(it->second.data, it->second.floats))
      bad("tensor " + e.first + " holds a non-finite value (NaN or Inf)");
  }
  auto ptr = [&](const std::string& name) { return tensors.at(name).data; };

  // Tensors start at multiples of 64 from the buffer's start (malloc-aligned): floats are aligned.
  const float* table = ptr("embedding.weight");
  if (m.bf16 && d.reader == kReaderBiGRU) {
    m.embed_bf16.resize(d.V * d.E);
    for (int64_t i = 0; i < d.V * d.E; ++i) m.embed_bf16[i] = cpu::bf16_bits(table[i]);
  } else {
    m.embed_table.assign(table, table + d.V * d.E);
    m.embed = m.embed_table.data();
  }
  std::vector<const float*> ordered;
  for (const KernelWeight& w : kernel) ordered.push_back(ptr(w.name));
  m.packed_weights = pack_kernel_weights(d, ordered, m.bf16);
  m.packed = m.packed_weights.data();
  d.packed_count = static_cast<int64_t>(m.packed_weights.size());

  if (d.reader == kReaderCNN) {
    for (int w = 0; w < 3; ++w) {
      const int64_t k = 3 + w;
      const std::string conv = "reader.convs." + std::to_string(w);
      const float* p = ptr(conv + ".weight");
      m.conv_w[w].resize(k * E * F);
      for (int64_t f = 0; f < F; ++f)  // PyTorch [F][E][k] -> [k][E][F]
        for (int64_t c = 0; c < E; ++c)
          for (int64_t j = 0; j < k; ++j) m.conv_w[w][(j * E + c) * F + f] = p[(f * E + c) * k + j];
      const float* b = ptr(conv + ".bias");
      m.conv_b[w].assign(b, b + F);
    }
    const float* pw = ptr("reader.proj.weight");
    m.proj_w.assign(pw, pw + H * 3 * F);
    const float* pb = ptr("reader.proj.bias");
    m.proj_b.assign(pb, pb + H);
  }
  return m;
}

}  // namespace rt
}  // namespace aghmn
