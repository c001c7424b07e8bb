// See tokenizer.h. The merge step mirrors text_table.merge (the Python twin that the generator
// checks against normalize on every code point).
#include "runtime/tokenizer.h"

#include <algorithm>

#include "runtime/runtime_internal.h"
#include "runtime/text_table.h"

namespace aghmn {
namespace rt {
namespace {

struct Entry {
  const char* text;  // expansion: [a-zA-Z!?] kept, ' ' one character not kept, "" nothing
  bool space;        // str.isspace
};

Entry lookup(uint32_t cp) {
  using namespace text_table;
  const uint64_t key = static_cast<uint64_t>(cp) << 16;
  const uint64_t* end = kEntries + kNumEntries;
  const uint64_t* it = std::lower_bound(kEntries, end, key);
  if (it == end || (*it >> 16) != cp) return {kStrings[0], false};
  return {kStrings[(*it >> 1) & 0x7FFF], (*it & 1) != 0};
}

// Code points of text (throws on invalid UTF-8).
std::vector<uint32_t> decode(const char* text, size_t len) {
  std::vector<uint32_t> cps;
  cps.reserve(len);
  const auto* s = reinterpret_cast<const unsigned char*>(text);
  for (size_t i = 0; i < len;) {
    const size_t at = i;
    const int32_t cp = utf8_next(s, len, i);
    if (cp < 0)
      fail(AGHMN_ERR_INVALID_ARGUMENT, "text is not valid UTF-8 (at byte " + std::to_string(at) + ")");
    cps.push_back(static_cast<uint32_t>(cp));
  }
  return cps;
}

}  // namespace

std::string normalize(const char* text, size_t len) {
  if (len > 0 && text == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, "text is NULL");
  const std::vector<uint32_t> cps = decode(text, len);
  // strip() after lower(): whitespace lowers to itself and nothing else lowers to whitespace.
  size_t b = 0, e = cps.size();
  while (b < e && lookup(cps[b]).space) ++b;
  while (e > b && lookup(cps[e - 1]).space) --e;
  std::string out;
  out.reserve(e - b + 8);
  bool pending = false;  // a run of characters not kept
  for (size_t i = b; i < e; ++i) {
    for (const char* c = lookup(cps[i]).text; *c; ++c) {
      if (*c == ' ') {
        pending = true;
        continue;
      }
      if (pending || *c == '!' || *c == '?') out.push_back(' ');
      pending = false;
      out.push_back(*c);
    }
  }
  if (pending) out.push_back(' ');
  return out;
}

bool is_blank(const char* text, size_t len) {
  if (len > 0 && text == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, "text is NULL");
  for (uint32_t cp : decode(text, len))
    if (!lookup(cp).space) return false;
  return true;
}

int64_t encode(const char* text, size_t len, int64_t max_len,
               const std::unordered_map<std::string, int64_t>& vocab, int64_t unk_id,
               std::vector<int64_t>& out) {
  const std::string s = normalize(text, len);
  int64_t n = 0;
  size_t start = 0;
  while (n < max_len) {
    const size_t stop = std::min(s.find(' ', start), s.size());
    const auto it = vocab.find(s.substr(start, stop - start));
    out.push_back(it == vocab.end() ? unk_id : it->second);
    ++n;
    if (stop == s.size()) break;
    start = stop + 1;
  }
  return n;
}

}  // namespace rt
}  // namespace aghmn
