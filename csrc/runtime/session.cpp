// See session.h. State file (little-endian): magic "AGHMNST\0", u32 version (1), u32 0, u64 model
// fingerprint, u64 K, H, width, n; n x (u32 id length, id bytes, u64 count); then per
// conversation its K ring slots of u [K, H] and proj [width, K, 3H] (ring order, as the counts
// index them); last 8 bytes FNV-1a 64 of everything before.
#include "runtime/session.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <new>

#include "runtime/cnn_reader.h"
#include "runtime/runtime_internal.h"
#include "common/bf16_cpu.h"
#include "runtime/stream_calls.h"
#include "runtime/tokenizer.h"

namespace aghmn {
namespace rt {
namespace {

constexpr char kStateMagic[8] = {'A', 'G', 'H', 'M', 'N', 'S', 'T', '\0'};
constexpr uint32_t kStateVersion = 1;

std::string item_id(const char* const* ids, const size_t* id_lens, size_t i) {
  if (ids[i] == nullptr && id_lens[i] > 0)
    fail(AGHMN_ERR_INVALID_ARGUMENT, "id of item " + std::to_string(i) + " is NULL");
  std::string id(ids[i] ? ids[i] : "", id_lens[i]);
  // Ids are UTF-8 so that every state file loads and every binding can hand them out as text.
  if (!utf8_valid(id.data(), id.size()))
    fail(AGHMN_ERR_INVALID_ARGUMENT, "id of item " + std::to_string(i) + " is not valid UTF-8");
  return id;
}

template <typename T>
void put(std::vector<unsigned char>& out, const T& v) {
  const auto* p = reinterpret_cast<const unsigned char*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}

// n store elements of es bytes (4: float, 2: bf16 bits) as floats: a state file holds fp32
// whatever the model's precision (bf16 widens exactly).
void put_floats(std::vector<unsigned char>& out, const unsigned char* p, size_t n, int64_t es) {
  if (es == 4) {
    out.insert(out.end(), p, p + n * sizeof(float));
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    uint16_t b;
    std::memcpy(&b, p + 2 * i, 2);
    put(out, cpu::bf16_float(b));
  }
}

// n floats of a state file into store elements of es bytes (bf16: rounded, exact for values
// a bf16 store saved).
void get_floats(unsigned char* dst, const unsigned char* src, size_t n, int64_t es) {
  if (es == 4) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    float f;
    std::memcpy(&f, src + 4 * i, 4);
    const uint16_t b = cpu::bf16_bits(f);
    std::memcpy(dst + 2 * i, &b, 2);
  }
}

constexpr int64_t kMinCapacity = 4;  // blocks

}  // namespace

PageBuffer::PageBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes_ == 0) return;
  void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  data_ = static_cast<unsigned char*>(p);
}

PageBuffer::~PageBuffer() {
  if (data_ != nullptr) munmap(data_, bytes_);
}

size_t conversation_bytes(const Model& model, bool projection_cache) {
  const ModelDims& d = model.dims;
  const size_t width = projection_cache ? static_cast<size_t>(std::max<int64_t>(d.D, 1)) : 0;
  const size_t elem = model.bf16 ? 2 : sizeof(float);
  return static_cast<size_t>(d.K) * static_cast<size_t>(d.H) * elem * (1 + 3 * width);
}

Session::Session(std::shared_ptr<const Model> model, bool projection_cache)
    : model_(std::move(model)), projection_cache_(projection_cache) {
  reallocate(kMinCapacity);
}

void Session::reserve(int64_t conversations) {
  int64_t cap = std::max<int64_t>(capacity_, kMinCapacity);
  while (cap < conversations) cap *= 2;
  if (cap != capacity_) reallocate(cap);
}

void Session::reallocate(int64_t cap) {
  const ModelDims& d = model_->dims;
  const int64_t K = d.K, H = d.H, W = cached_width(), es = elem();
  const int64_t old_rows = capacity_ * K, rows = cap * K;
  PageBuffer u(static_cast<size_t>(rows * H * es)), proj(static_cast<size_t>(W * rows * 3 * H * es));
  // Open conversation i moves to block i (only blocks in use hold anything): after a shrink the
  // blocks beyond the open ones are free, and the store's tail is never touched again.
  for (size_t i = 0; i < convs_.size(); ++i) {
    const int64_t from = convs_[i].block * K, to = static_cast<int64_t>(i) * K;
    std::memcpy(u.get() + to * H * es, u_.get() + from * H * es, K * H * es);
    for (int64_t w = 0; w < W; ++w)
      std::memcpy(proj.get() + (w * rows + to) * 3 * H * es,
                  proj_.get() + (w * old_rows + from) * 3 * H * es, K * 3 * H * es);
  }
  free_.clear();
  free_.reserve(cap);
  for (int64_t b = cap - 1; b >= static_cast<int64_t>(convs_.size()); --b)
    free_.push_back(b);  // the lowest is taken first
  for (size_t i = 0; i < convs_.size(); ++i) convs_[i].block = static_cast<int64_t>(i);
  u_.swap(u);
  proj_.swap(proj);
  capacity_ = cap;
}

int64_t Session::open(const std::string& id) {
  const int64_t block = free_.back();
  free_.pop_back();
  const int64_t K = model_->dims.K, H = model_->dims.H, rows = capacity_ * K, es = elem();
  std::memset(u_.get() + block * K * H * es, 0, K * H * es);  // +0.0 in float and in bf16
  for (int64_t w = 0; w < cached_width(); ++w)
    std::memset(proj_.get() + (w * rows + block * K) * 3 * H * es, 0, K * 3 * H * es);
  index_.emplace(id, convs_.size());
  convs_.push_back({id, block, 0});
  return static_cast<int64_t>(convs_.size() - 1);
}

void Session::push_many(size_t n, const char* const* ids, const size_t* id_lens,
                        const char* const* texts, const size_t* text_lens, float* probs,
                        int64_t* indices) {
  if (n == 0) return;
  if (!ids || !id_lens || !texts || !text_lens || !probs)
    fail(AGHMN_ERR_INVALID_ARGUMENT, "ids, id_lens, texts, text_lens and probs must not be NULL");
  const Model& m = *model_;
  const ModelDims& d = m.dims;
  // Validate and tokenize everything first: nothing changes on a bad item.
  std::vector<std::string> keys(n);
  std::vector<int64_t> tokens, offsets(n + 1, 0);
  for (size_t i = 0; i < n; ++i) {
    keys[i] = item_id(ids, id_lens, i);
    if (texts[i] == nullptr && text_lens[i] > 0)
      fail(AGHMN_ERR_INVALID_ARGUMENT, "text of item " + std::to_string(i) + " is NULL");
    bool blank = false;
    try {
      blank = is_blank(texts[i], text_lens[i]);
      if (!blank) encode(texts[i], text_lens[i], d.max_len, m.vocab, d.unk_id, tokens);
    } catch (const Error& e) {
      fail(e.status(), "text of item " + std::to_string(i) + ": " + e.what());
    }
    if (blank)
      fail(AGHMN_ERR_INVALID_ARGUMENT,
           "text of item " + std::to_string(i) + " is empty or whitespace only");
    offsets[i + 1] = static_cast<int64_t>(tokens.size());
  }
  // Rounds: the r-th occurrence of a conversation in this call goes to round r.
  std::vector<std::vector<size_t>> rounds;
  std::unordered_map<std::string, size_t> occurrences;
  size_t fresh = 0;
  for (size_t i = 0; i < n; ++i) {
    size_t& r = occurrences[keys[i]];
    if (r == 0 && index_.find(keys[i]) == index_.end()) ++fresh;
    if (r == rounds.size()) rounds.emplace_back();
    rounds[r++].push_back(i);
  }
  reserve(static_cast<int64_t>(convs_.size() + fresh));

  const int64_t H = d.H, C = d.C;
  const size_t widest = rounds[0].size();
  std::vector<int64_t> blocks(widest), counts(widest), conv(widest), rtokens, roffsets(widest + 1);
  std::vector<float> u_given(d.reader == kReaderCNN ? widest * H : 0), u_out(widest * H),
      rprobs(widest * C);
  rtokens.reserve(tokens.size());
  for (const auto& members : rounds) {
    const int64_t B = static_cast<int64_t>(members.size());
    rtokens.clear();
    for (int64_t b = 0; b < B; ++b) {
      const size_t i = members[b];
      const auto it = index_.find(keys[i]);
      conv[b] = it == index_.end() ? open(keys[i]) : static_cast<int64_t>(it->second);
      blocks[b] = convs_[conv[b]].block;
      counts[b] = convs_[conv[b]].count;
      rtokens.insert(rtokens.end(), tokens.begin() + offsets[i], tokens.begin() + offsets[i + 1]);
      roffsets[b + 1] = static_cast<int64_t>(rtokens.size());
      if (d.reader == kReaderCNN)
        cnn_reader(m, tokens.data() + offsets[i], offsets[i + 1] - offsets[i], u_given.data() + b * H);
    }
    PushRound round{B, rtokens.data(), roffsets.data(),
                    d.reader == kReaderCNN ? u_given.data() : nullptr, blocks.data(),
                    counts.data(), u_.get(), projection_cache_ ? proj_.get() : nullptr,
                    capacity_ * d.K, u_out.data(),
                    rprobs.data()};
    stream_round(m, round);
    for (int64_t b = 0; b < B; ++b) {
      const size_t i = members[b];
      std::copy(rprobs.begin() + b * C, rprobs.begin() + (b + 1) * C, probs + i * C);
      if (indices) indices[i] = counts[b];
      convs_[conv[b]].count += 1;
    }
  }
}

void Session::close(const std::string& id) {
  const auto it = index_.find(id);
  if (it == index_.end()) fail(AGHMN_ERR_UNKNOWN_CONVERSATION, "unknown conversation id");
  const size_t at = it->second;
  free_.push_back(convs_[at].block);
  index_.erase(it);
  if (at + 1 != convs_.size()) {
    convs_[at] = std::move(convs_.back());
    index_[convs_[at].id] = at;
  }
  convs_.pop_back();
  // Give memory back once at most a quarter of the store is open: half the store, the open
  // conversations compacted into its first quarter, so that neither growing again (it takes
  // twice as many) nor shrinking again (half as many) follows soon; the copies cost O(1) per
  // close, amortised.
  const int64_t open = static_cast<int64_t>(convs_.size());
  if (capacity_ > kMinCapacity && open <= capacity_ / 4) {
    try {
      reallocate(std::max<int64_t>(kMinCapacity, capacity_ / 2));
    } catch (const std::bad_alloc&) {
      // no memory for the smaller store: keep the larger one (the close itself succeeded)
    }
  }
}

int64_t Session::utterances_seen(const std::string& id) const {
  const auto it = index_.find(id);
  return it == index_.end() ? 0 : convs_[it->second].count;
}

std::vector<unsigned char> Session::save_bytes() const {
  const ModelDims& d = model_->dims;
  const int64_t K = d.K, H = d.H, W = width(), rows = capacity_ * K, es = elem();
  // The exact size up front: one allocation, no copies while the store is appended (a state
  // file holds float32 whatever the model's precision).
  size_t size = 8 + 4 + 4 + 8 + 4 * 8 + 8;
  for (const Conversation& c : convs_) size += 4 + c.id.size() + 8;
  size += convs_.size() * static_cast<size_t>(K * H * (1 + 3 * W)) * sizeof(float);
  std::vector<unsigned char> out(kStateMagic, kStateMagic + 8);
  out.reserve(size);
  put(out, kStateVersion);
  put(out, uint32_t{0});
  put(out, model_->fingerprint);
  for (int64_t v : {K, H, W, static_cast<int64_t>(convs_.size())}) put(out, static_cast<uint64_t>(v));
  for (const Conversation& c : convs_) {
    put(out, static_cast<uint32_t>(c.id.size()));
    out.insert(out.end(), c.id.begin(), c.id.end());
    put(out, static_cast<uint64_t>(c.count));
  }
  for (const Conversation& c : convs_) {
    put_floats(out, u_.get() + c.block * K * H * es, K * H, es);
    if (!projection_cache_) {
      put_floats(out, saved_projections(c).data(), W * K * 3 * H, es);
      continue;
    }
    for (int64_t w = 0; w < W; ++w)
      put_floats(out, proj_.get() + (w * rows + c.block * K) * 3 * H * es, K * 3 * H, es);
  }
  put(out, fnv1a(out.data(), out.size()));
  return out;
}

std::vector<unsigned char> Session::saved_projections(const Conversation& c) const {
  const ModelDims& d = model_->dims;
  const int64_t K = d.K, H = d.H, es = elem();
  std::vector<unsigned char> proj(static_cast<size_t>(width() * K * 3 * H * es), 0);
  project_slots(*model_, u_.get() + c.block * K * H * es, K, proj.data());
  // Slots never written (count < K) hold zeros in the cache: +0.0 in float and in bf16.
  for (int64_t w = 0; w < width(); ++w)
    for (int64_t k = c.count; k < K; ++k)
      std::memset(proj.data() + (w * K + k) * 3 * H * es, 0, 3 * H * es);
  return proj;
}

void Session::save(const char* path) const {
  if (path == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, "path is NULL");
  const std::vector<unsigned char> out = save_bytes();
  // Unique per process and call: two sessions saving to one path never share a temporary file.
  static std::atomic<uint64_t> serial{0};
  const std::string tmp = std::string(path) + ".tmp." + std::to_string(getpid()) + "." +
                          std::to_string(serial++);
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) fail(AGHMN_ERR_IO, std::string("cannot write ") + tmp + ": " + std::strerror(errno));
  bool ok = std::fwrite(out.data(), 1, out.size(), f) == out.size() && std::fflush(f) == 0 &&
            fsync(fileno(f)) == 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    fail(AGHMN_ERR_IO, std::string("cannot write state ") + path + ": " + why);
  }
}

void Session::load(const char* path) {
  const std::vector<unsigned char> data = read_file(path, "state");
  load_bytes(data.data(), data.size(), std::string("state ") + path);
}

void Session::load_bytes(const unsigned char* data, size_t size, const std::string& where) {
  auto bad = [&](const std::string& what) { fail(AGHMN_ERR_FORMAT, where + ": " + what); };
  if (size < 8 || std::memcmp(data, kStateMagic, 8) != 0)
    bad("not an aghmn runtime state (no AGHMNST magic)");
  if (size < 16 + 8) bad("truncated");
  uint32_t version;
  std::memcpy(&version, data + 8, 4);
  if (version != kStateVersion)
    fail(AGHMN_ERR_VERSION, where + ": version " + std::to_string(version) +
                                ", this runtime reads version " + std::to_string(kStateVersion));
  uint64_t stored;
  std::memcpy(&stored, data + size - 8, 8);
  if (stored != fnv1a(data, size - 8)) bad("checksum mismatch (corrupt or truncated)");
  Reader r(data, size - 8, AGHMN_ERR_FORMAT, where);
  r.take(16, "header");
  if (r.read<uint64_t>("fingerprint") != model_->fingerprint)
    bad("saved by another model (the model file differs)");
  const ModelDims& d = model_->dims;
  const int64_t K = d.K, H = d.H, W = width();
  if (r.read<uint64_t>("K") != static_cast<uint64_t>(K) ||
      r.read<uint64_t>("H") != static_cast<uint64_t>(H) ||
      r.read<uint64_t>("width") != static_cast<uint64_t>(W))
    bad("sizes differ from the model's");
  const uint64_t n = r.read<uint64_t>("conversation count");
  const uint64_t per_conv = static_cast<uint64_t>(K) * H * 4 * (1 + 3 * W) + 12;
  if (n > r.remaining() / per_conv) bad("conversation count exceeds the file");
  std::vector<Conversation> convs;
  std::unordered_map<std::string, size_t> index;
  convs.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    std::string id = r.read_string("conversation id");
    if (!utf8_valid(id.data(), id.size())) bad("conversation id " + std::to_string(i) + " is not valid UTF-8");
    const uint64_t count = r.read<uint64_t>("count");
    if (count < 1 || count > static_cast<uint64_t>(INT64_MAX / 2)) bad("a count is not positive");
    if (!index.emplace(id, i).second) bad("a conversation id appears twice");
    convs.push_back({std::move(id), static_cast<int64_t>(i), static_cast<int64_t>(count)});
  }
  if (r.remaining() != n * (per_conv - 12)) bad("store size does not match the conversations");
  int64_t cap = kMinCapacity;
  while (cap < static_cast<int64_t>(n)) cap *= 2;
  const int64_t rows = cap * K, es = elem(), CW = cached_width();
  PageBuffer u(static_cast<size_t>(rows * H * es)), proj(static_cast<size_t>(CW * rows * 3 * H * es));
  for (uint64_t i = 0; i < n; ++i) {
    get_floats(u.get() + i * K * H * es, r.take(K * H * 4, "u"), K * H, es);
    for (int64_t w = 0; w < W; ++w) {
      const unsigned char* saved = r.take(K * 3 * H * 4, "proj");
      // Without the cache the projections are recomputed from u at every push.
      if (w < CW) get_floats(proj.get() + (w * rows + i * K) * 3 * H * es, saved, K * 3 * H, es);
    }
  }
  std::vector<int64_t> free_blocks;
  for (int64_t b = cap - 1; b >= static_cast<int64_t>(n); --b) free_blocks.push_back(b);
  // Everything parsed: replace the state (no throw below).
  convs_.swap(convs);
  index_.swap(index);
  free_.swap(free_blocks);
  capacity_ = cap;
  u_.swap(u);
  proj_.swap(proj);
}

}  // namespace rt
}  // namespace aghmn
