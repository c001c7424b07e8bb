// The authors' tokenizer (aghmn_fast/data/text.py) over UTF-8 text, driven by the generated
// table text_table.h (one definition of the rules: aghmn_fast/data/text_table.py).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace aghmn {
namespace rt {

// normalize(text) of aghmn_fast.data.text for UTF-8 text (throws Error for invalid UTF-8).
std::string normalize(const char* text, size_t len);

// Whether the UTF-8 text is empty or whitespace only (str.isspace), as StreamingRecognizer
// refuses; throws Error for invalid UTF-8.
bool is_blank(const char* text, size_t len);

// Token ids of normalize(text).split(" ")[:max_len], unknown tokens -> unk_id, appended to out.
// Returns the number of ids appended (>= 1).
int64_t encode(const char* text, size_t len, int64_t max_len,
               const std::unordered_map<std::string, int64_t>& vocab, int64_t unk_id,
               std::vector<int64_t>& out);

}  // namespace rt
}  // namespace aghmn
