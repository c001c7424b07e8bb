// A session: the conversation table and the ring store of K slots per conversation (reader
// vectors and fusion input projections), with the semantics of
// aghmn_fast.streaming.StreamingRecognizer on its "push" path.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/model.h"

namespace aghmn {
namespace rt {

class Session {
 public:
  explicit Session(std::shared_ptr<const Model> model);

  const Model& model() const { return *model_; }

  // Items in order (a conversation may repeat: its utterances go one per round); validated
  // before any state changes. probs [n, C], indices [n] or nullptr.
  void push_many(size_t n, const char* const* ids, const size_t* id_lens, const char* const* texts,
                 const size_t* text_lens, float* probs, int64_t* indices);
  void close(const std::string& id);
  int64_t utterances_seen(const std::string& id) const;
  size_t size() const { return convs_.size(); }
  const std::string& id_at(size_t i) const { return convs_.at(i).id; }

  void save(const char* path) const;  // atomic: temporary file + rename
  void load(const char* path);        // all or nothing

 private:
  struct Conversation {
    std::string id;
    int64_t block;  // ring slots block * K .. + K
    int64_t count;  // utterances seen
  };
  int64_t width() const { return std::max<int64_t>(model_->dims.D, 1); }
  void reserve(int64_t conversations);  // grows the store (doubling) to hold that many
  int64_t open(const std::string& id);  // index into convs_ of a new conversation

  std::shared_ptr<const Model> model_;
  std::vector<Conversation> convs_;
  std::unordered_map<std::string, size_t> index_;  // id -> position in convs_
  std::vector<int64_t> free_;                      // free blocks, the next one last
  int64_t capacity_ = 0;                           // blocks
  // [capacity * K, H] and [width, capacity * K, 3H] of elem() bytes each (float, or bf16 bits for
  // a bf16 model), left uninitialised (a block is zeroed when a conversation takes it): the
  // capacity not in use costs address space, not resident memory.
  int64_t elem() const { return model_->bf16 ? 2 : 4; }
  std::unique_ptr<unsigned char[]> u_, proj_;
};

}  // namespace rt
}  // namespace aghmn
