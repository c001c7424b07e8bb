// A session: the conversation table and the ring store of K slots per conversation (reader
// vectors and fusion input projections), with the semantics of
// aghmn_fast.streaming.StreamingRecognizer on its "push" path.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/model.h"

namespace aghmn {
namespace rt {

// Zero-filled bytes mapped from the operating system (anonymous mmap on POSIX): freeing them
// gives the pages back at once, whatever the allocator's thresholds (a heap block of this size
// may stay in malloc's free lists), and pages never written cost no resident memory.
class PageBuffer {
 public:
  PageBuffer() = default;
  explicit PageBuffer(size_t bytes);  // std::bad_alloc when the system has no memory
  ~PageBuffer();
  PageBuffer(PageBuffer&& other) noexcept { swap(other); }
  PageBuffer& operator=(PageBuffer&& other) noexcept {
    swap(other);
    return *this;
  }
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;
  unsigned char* get() const { return data_; }
  void swap(PageBuffer& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(bytes_, other.bytes_);
  }

 private:
  unsigned char* data_ = nullptr;
  size_t bytes_ = 0;
};

// Bytes of one open conversation's state: its K ring slots of reader vectors [H] and, with the
// projection cache, fusion input projections [width, 3H] (float32, or bf16 for a bf16 model).
size_t conversation_bytes(const Model& model, bool projection_cache = true);

class Session {
 public:
  // projection_cache false: the store holds the reader vectors only and every push recomputes
  // the window's fusion input projections from them (the same probabilities, bit for bit; a
  // seventh of the bytes for a BiF model, more work per push).
  explicit Session(std::shared_ptr<const Model> model, bool projection_cache = true);

  const Model& model() const { return *model_; }

  // Items in order (a conversation may repeat: its utterances go one per round); validated
  // before any state changes. probs [n, C], indices [n] or nullptr.
  void push_many(size_t n, const char* const* ids, const size_t* id_lens, const char* const* texts,
                 const size_t* text_lens, float* probs, int64_t* indices);
  void close(const std::string& id);
  int64_t utterances_seen(const std::string& id) const;
  size_t size() const { return convs_.size(); }
  // Bytes the ring store holds for conversations (capacity, open or not): it doubles when full
  // and halves (compacting) when at most a quarter is open.
  size_t store_bytes() const { return static_cast<size_t>(capacity_) * conversation_bytes(); }
  size_t conversation_bytes() const { return rt::conversation_bytes(*model_, projection_cache_); }
  bool projection_cache() const { return projection_cache_; }
  const std::string& id_at(size_t i) const { return convs_.at(i).id; }

  // The state as bytes (the state file's content) and back: one format for files and buffers.
  std::vector<unsigned char> save_bytes() const;
  // All or nothing; `where` names the source in errors ("state <path>", "state buffer").
  void load_bytes(const unsigned char* data, size_t size, const std::string& where);
  void save(const char* path) const;  // save_bytes, written atomically: temporary file + rename
  void load(const char* path);        // read_file, then load_bytes

 private:
  struct Conversation {
    std::string id;
    int64_t block;  // ring slots block * K .. + K
    int64_t count;  // utterances seen
  };
  int64_t width() const { return std::max<int64_t>(model_->dims.D, 1); }
  // Directions of projections the store holds: width(), or 0 without the projection cache.
  int64_t cached_width() const { return projection_cache_ ? width() : 0; }
  // The state file's projections [width, K, 3H] (store elements) of the conversation at block:
  // without the cache computed from its u as a push would have cached them (a slot not yet
  // written holds zeros, as in the cache), so the file does not depend on the mode.
  std::vector<unsigned char> saved_projections(const Conversation& c) const;
  void reserve(int64_t conversations);  // grows the store (doubling) to hold that many
  void reallocate(int64_t capacity);    // a store of that many blocks, open ones first
  int64_t open(const std::string& id);  // index into convs_ of a new conversation

  std::shared_ptr<const Model> model_;
  bool projection_cache_;
  std::vector<Conversation> convs_;
  std::unordered_map<std::string, size_t> index_;  // id -> position in convs_
  std::vector<int64_t> free_;                      // free blocks, the next one last
  int64_t capacity_ = 0;                           // blocks
  // [capacity * K, H] and [cached_width(), capacity * K, 3H] of elem() bytes each (float, or bf16 bits for
  // a bf16 model; a block is zeroed when a conversation takes it): the capacity never used
  // costs address space, not resident memory.
  int64_t elem() const { return model_->bf16 ? 2 : 4; }
  PageBuffer u_, proj_;
};

}  // namespace rt
}  // namespace aghmn
