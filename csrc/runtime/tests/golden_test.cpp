// Golden-file test (ctest): loads a committed model file (csrc/runtime/tests/golden/), streams
// the fixed dialogue through it one push at a time and once more as one push_many, and compares
// every probability with the committed expectation (the torch recognizer's, written by
// make_golden.py): within 1e-5, the same label. A change of the format, the loader, the packing
// or the tokenizer that breaks files already written fails here.
//
//   golden_test MODEL.aghmn DIALOGUE.tsv EXPECTED
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/aghmn_runtime.h"
#include "runtime/runtime_internal.h"

namespace {

constexpr double kTolerance = 1e-5;

std::vector<std::string> split(const std::string& line, char sep) {
  std::vector<std::string> out;
  std::string item;
  std::istringstream in(line);
  while (std::getline(in, item, sep)) out.push_back(item);
  return out;
}

int argmax(const float* p, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (p[i] > p[best]) best = i;
  return best;
}

// 0 when every row of got matches expected; prints the first mismatch otherwise.
int compare(const char* how, const std::vector<float>& got, const std::vector<std::vector<double>>& expected,
            int C) {
  for (size_t r = 0; r < expected.size(); ++r) {
    const float* row = got.data() + r * C;
    for (int c = 0; c < C; ++c)
      if (!(std::fabs(row[c] - expected[r][c]) <= kTolerance)) {
        std::fprintf(stderr, "%s: utterance %zu, class %d: %.9g, expected %.9g\n", how, r, c,
                     row[c], expected[r][c]);
        return 1;
      }
    int best = 0;
    for (int c = 1; c < C; ++c)
      if (expected[r][c] > expected[r][best]) best = c;
    if (argmax(row, C) != best) {
      std::fprintf(stderr, "%s: utterance %zu: label %d, expected %d\n", how, r, argmax(row, C), best);
      return 1;
    }
  }
  return 0;
}

}  // namespace

// The model file's checksum is XXH64: its reference values (seed 0), the last long enough for
// the 32-byte stripes and every tail step.
bool xxh64_matches_reference() {
  const struct {
    const char* text;
    uint64_t hash;
  } vectors[] = {{"", 0xEF46DB3751D8E999ull},
                 {"a", 0xD24EC4F1A98C6E5Bull},
                 {"abc", 0x44BC2CF5AD770999ull},
                 {"Nobody inspects the spammish repetition", 0xFBCEA83C8A378BF1ull}};
  for (const auto& v : vectors)
    if (aghmn::rt::xxh64(v.text, std::strlen(v.text)) != v.hash) {
      std::fprintf(stderr, "xxh64(\"%s\") is wrong\n", v.text);
      return false;
    }
  return true;
}

int main(int argc, char** argv) {
  if (!xxh64_matches_reference()) return 1;
  if (argc != 4) {
    std::fprintf(stderr, "usage: golden_test MODEL.aghmn DIALOGUE.tsv EXPECTED\n");
    return 2;
  }
  std::vector<std::string> ids, texts;
  std::ifstream dialogue(argv[2]);
  for (std::string line; std::getline(dialogue, line);) {
    const size_t tab = line.find('\t');
    if (tab == std::string::npos) continue;
    ids.push_back(line.substr(0, tab));
    texts.push_back(line.substr(tab + 1));
  }
  std::ifstream expected_file(argv[3]);
  std::string header;
  std::getline(expected_file, header);
  const std::vector<std::string> labels = split(header, '\t');
  std::vector<std::vector<double>> expected;
  for (std::string line; std::getline(expected_file, line);) {
    std::vector<double> row;
    for (const std::string& v : split(line, '\t')) row.push_back(std::stod(v));
    expected.push_back(row);
  }
  if (ids.empty() || expected.size() != ids.size()) {
    std::fprintf(stderr, "%s and %s disagree on the utterances\n", argv[2], argv[3]);
    return 1;
  }

  aghmn_model* model = nullptr;
  if (aghmn_model_load(argv[1], &model) != AGHMN_OK) {
    std::fprintf(stderr, "%s\n", aghmn_last_error());
    return 1;
  }
  const int C = aghmn_model_num_labels(model);
  if (C != static_cast<int>(labels.size())) {
    std::fprintf(stderr, "%d labels, expected %zu\n", C, labels.size());
    return 1;
  }
  for (int c = 0; c < C; ++c)
    if (labels[c] != aghmn_model_label(model, c)) {
      std::fprintf(stderr, "label %d is %s, expected %s\n", c, aghmn_model_label(model, c), labels[c].c_str());
      return 1;
    }
  const size_t n = ids.size();
  std::vector<const char*> id_ptrs, text_ptrs;
  std::vector<size_t> id_lens, text_lens;
  for (size_t i = 0; i < n; ++i) {
    id_ptrs.push_back(ids[i].data());
    id_lens.push_back(ids[i].size());
    text_ptrs.push_back(texts[i].data());
    text_lens.push_back(texts[i].size());
  }
  // Every utterance by aghmn_push, or all in one aghmn_push_many, in a session of these flags.
  auto run = [&](uint32_t flags, bool one_by_one, std::vector<float>& probs) {
    probs.assign(n * C, 0.0f);
    aghmn_session* s = nullptr;
    if (aghmn_session_create_with(model, flags, &s) != AGHMN_OK) {
      std::fprintf(stderr, "session: %s\n", aghmn_last_error());
      return false;
    }
    bool ok = true;
    if (one_by_one) {
      for (size_t i = 0; i < n && ok; ++i)
        ok = aghmn_push(s, ids[i].data(), ids[i].size(), texts[i].data(), texts[i].size(),
                        probs.data() + i * C, nullptr) == AGHMN_OK;
    } else {
      ok = aghmn_push_many(s, n, id_ptrs.data(), id_lens.data(), text_ptrs.data(),
                           text_lens.data(), probs.data(), nullptr) == AGHMN_OK;
    }
    if (!ok) std::fprintf(stderr, "push (flags %u): %s\n", flags, aghmn_last_error());
    aghmn_session_free(s);
    return ok;
  };
  std::vector<float> one, many, one_compact, many_compact;
  if (!run(0, true, one) || !run(0, false, many) ||
      !run(AGHMN_SESSION_NO_PROJECTION_CACHE, true, one_compact) ||
      !run(AGHMN_SESSION_NO_PROJECTION_CACHE, false, many_compact))
    return 1;
  // Without the projection cache: the same bits (they are recomputed as the cache stores them).
  if (std::memcmp(one.data(), one_compact.data(), n * C * sizeof(float)) != 0 ||
      std::memcmp(many.data(), many_compact.data(), n * C * sizeof(float)) != 0) {
    std::fprintf(stderr, "a session without the projection cache differs from one with it\n");
    return 1;
  }
  aghmn_model_free(model);
  if (compare("push", one, expected, C) || compare("push_many", many, expected, C)) return 1;
  std::printf("%s: %zu utterances match\n", argv[1], n);
  return 0;
}
