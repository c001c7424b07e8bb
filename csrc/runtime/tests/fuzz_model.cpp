// Fuzz test of the model loader (run under AddressSanitizer + UBSan in CI): mutates a valid
// model file of format 2 in ways a hostile or damaged file would be (truncations, bit flips,
// hostile values over the header, the section table, the metadata and the tensor directory,
// garbage, unknown or re-flagged sections, NaN and infinite weights) and
// loads each; most mutants get a recomputed checksum, so the checks behind it are reached. Every
// load must return a status (never crash or read out of bounds); a mutant that loads must then
// run pushes, a save and a load. Exit 0 when all iterations pass, with counts per status.
//
//   fuzz_model MODEL.aghmn [ITERATIONS [SEED]]
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "runtime/aghmn_runtime.h"
#include "runtime/runtime_internal.h"

namespace {

void reseal(std::vector<unsigned char>& f) {
  if (f.size() < 8) return;
  const uint64_t h = aghmn::rt::xxh64(f.data(), f.size() - 8);
  std::memcpy(f.data() + f.size() - 8, &h, 8);
}

template <typename T>
void put(std::vector<unsigned char>& f, size_t at, T v) {
  if (at + sizeof(T) <= f.size()) std::memcpy(f.data() + at, &v, sizeof(T));
}

uint64_t hostile(std::mt19937_64& rng, uint64_t size) {
  const uint64_t values[] = {0, 1, 2, 7, 63, 64, 65, size - 1, size, size + 1, size - 8,
                             0x7FFFFFFFull, 0xFFFFFFFFull, 0x80000000ull, 1ull << 32,
                             0x7FFFFFFFFFFFFFFFull, 0xFFFFFFFFFFFFFFFFull, 0x8000000000000000ull,
                             static_cast<uint64_t>(-5), rng()};
  return values[rng() % (sizeof values / sizeof values[0])];
}

// Exercises a model that loaded: pushes (one, many with a repeated conversation, bad input),
// close, and (when save_state) a save and load of the state (files are fsync'ed: not every time).
int exercise(aghmn_model* model, const std::string& state_path, bool save_state) {
  aghmn_session* s = nullptr;
  if (aghmn_session_create(model, &s) != AGHMN_OK) return 1;
  const int C = aghmn_model_num_labels(model);
  if (C < 1 || aghmn_model_label(model, 0) == nullptr || aghmn_model_label(model, C) != nullptr)
    return 1;
  std::vector<float> probs(4 * static_cast<size_t>(C));
  int64_t idx[4];
  const char* ids[4] = {"a", "b", "a", "c"};
  const size_t id_lens[4] = {1, 1, 1, 1};
  const char* texts[4] = {"Hello there!", "What?! No way...", "okay", "caf\xc3\xa9 na\xc3\xafve"};
  const size_t text_lens[4] = {12, 16, 4, 11};
  if (aghmn_push(s, "x", 1, "Hi.", 3, probs.data(), idx) != AGHMN_OK) return 1;
  if (aghmn_push_many(s, 4, ids, id_lens, texts, text_lens, probs.data(), idx) != AGHMN_OK) return 1;
  if (idx[0] != 0 || idx[2] != 1) return 1;
  if (aghmn_push(s, "x", 1, "\xff", 1, probs.data(), idx) != AGHMN_ERR_INVALID_ARGUMENT) return 1;
  if (aghmn_close(s, "b", 1) != AGHMN_OK) return 1;
  if (save_state && (aghmn_session_save(s, state_path.c_str()) != AGHMN_OK ||
                     aghmn_session_load(s, state_path.c_str()) != AGHMN_OK))
    return 1;
  if (aghmn_num_conversations(s) != 3) return 1;
  aghmn_session_free(s);
  return 0;
}

// Bad calls (NULL pointers, bad text, unknown ids, freed handles) under the sanitizers: each is
// an error status. Returns 0 when all are.
int misuse(aghmn_model* model) {
  aghmn_session* s = nullptr;
  float probs[64];
  int64_t n = 0;
  const char* text = "hi";
  const size_t len = 2;
  const bool ok =
      aghmn_session_create(model, &s) == AGHMN_OK && aghmn_model_num_labels(model) <= 64 &&
      aghmn_push(nullptr, "a", 1, "hi", 2, probs, nullptr) == AGHMN_ERR_INVALID_ARGUMENT &&
      aghmn_push(s, nullptr, 1, "hi", 2, probs, nullptr) == AGHMN_ERR_INVALID_ARGUMENT &&
      aghmn_push(s, "a", 1, nullptr, 2, probs, nullptr) == AGHMN_ERR_INVALID_ARGUMENT &&
      aghmn_push(s, "a", 1, "hi", 2, nullptr, nullptr) == AGHMN_ERR_INVALID_ARGUMENT &&
      aghmn_push(s, "a", 1, "", 0, probs, nullptr) == AGHMN_ERR_INVALID_ARGUMENT &&
      aghmn_push(s, "a", 1, " \t\x1c", 3, probs, nullptr) == AGHMN_ERR_INVALID_ARGUMENT &&
      aghmn_push(s, "a", 1, "\xed\xa0\x80", 3, probs, nullptr) == AGHMN_ERR_INVALID_ARGUMENT &&
      aghmn_push(s, "\xff", 1, "hi", 2, probs, nullptr) == AGHMN_ERR_INVALID_ARGUMENT &&
      aghmn_push_many(s, 1, nullptr, &len, &text, &len, probs, nullptr) == AGHMN_ERR_INVALID_ARGUMENT &&
      aghmn_close(s, "zz", 2) == AGHMN_ERR_UNKNOWN_CONVERSATION &&
      aghmn_utterances_seen(s, "a", 1, nullptr) == AGHMN_ERR_INVALID_ARGUMENT &&
      aghmn_utterances_seen(s, "a", 1, &n) == AGHMN_OK && n == 0 &&
      aghmn_session_save(s, nullptr) == AGHMN_ERR_INVALID_ARGUMENT &&
      aghmn_session_load(s, "/nonexistent/state") == AGHMN_ERR_IO &&
      aghmn_normalize(nullptr, 1, nullptr, 0, nullptr) == AGHMN_ERR_INVALID_ARGUMENT &&
      aghmn_model_load(nullptr, nullptr) == AGHMN_ERR_INVALID_ARGUMENT &&
      aghmn_model_load_buffer(nullptr, 5, nullptr) == AGHMN_ERR_INVALID_ARGUMENT;
  aghmn_session_free(s);
  // A freed session is no longer a live handle: an error, not a use after free.
  return ok && aghmn_push(s, "a", 1, "hi", 2, probs, nullptr) == AGHMN_ERR_INVALID_ARGUMENT ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL.aghmn [ITERATIONS [SEED]]\n", argv[0]);
    return 2;
  }
  const long iterations = argc > 2 ? std::atol(argv[2]) : 10000;
  std::mt19937_64 rng(argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 1);
  std::vector<unsigned char> original;
  {
    FILE* f = std::fopen(argv[1], "rb");
    if (!f) {
      std::fprintf(stderr, "cannot open %s\n", argv[1]);
      return 2;
    }
    int c;
    while ((c = std::fgetc(f)) != EOF) original.push_back(static_cast<unsigned char>(c));
    std::fclose(f);
  }
  const std::string state_path = std::string(argv[1]) + ".fuzz_state";
  aghmn_model* model = nullptr;
  if (aghmn_model_load_buffer(original.data(), original.size(), &model) != AGHMN_OK) {
    std::fprintf(stderr, "the unmutated model does not load: %s\n", aghmn_last_error());
    return 1;
  }
  if (exercise(model, state_path, true) != 0 || misuse(model) != 0) {
    std::fprintf(stderr, "the unmutated model does not run: %s\n", aghmn_last_error());
    return 1;
  }
  aghmn_model_free(model);
  // Format 2: a table of 32-byte entries (tag[8], u32 flags, u32 reserved, u64 offset, u64 size).
  uint32_t sections = 0;
  std::memcpy(&sections, original.data() + 12, 4);
  const size_t table_end = 16 + 32 * static_cast<size_t>(sections);
  // Payloads, from the table: hostile values are written at their starts and inside them (the
  // kv metadata's and the tensor directory's lengths, counts, types, shapes and offsets).
  std::vector<size_t> starts, sizes;
  for (uint32_t i = 0; i < sections; ++i) {
    uint64_t off, size;
    std::memcpy(&off, original.data() + 16 + 32 * i + 16, 8);
    std::memcpy(&size, original.data() + 16 + 32 * i + 24, 8);
    starts.push_back(off);
    sizes.push_back(size);
  }
  long by_status[8] = {}, loaded = 0;
  for (long it = 0; it < iterations; ++it) {
    std::vector<unsigned char> f = original;
    const int kind = static_cast<int>(rng() % 9);
    if (kind == 0) {  // truncation
      f.resize(rng() % f.size());
    } else if (kind == 1) {  // bit flips anywhere
      for (int n = 1 + rng() % 8; n > 0; --n) f[rng() % f.size()] ^= 1u << (rng() % 8);
    } else if (kind == 2) {  // hostile u32/u64 in the header or section table
      const size_t at = rng() % table_end;
      if (rng() & 1)
        put<uint64_t>(f, at, hostile(rng, f.size()));
      else
        put<uint32_t>(f, at, static_cast<uint32_t>(hostile(rng, f.size())));
    } else if (kind == 3) {  // hostile values at the start of a section (dims, string counts)
      const size_t at = starts[rng() % starts.size()] + 4 * (rng() % 32);
      if (rng() & 1)
        put<uint64_t>(f, at, hostile(rng, f.size()));
      else
        put<uint32_t>(f, at, static_cast<uint32_t>(hostile(rng, f.size())));
    } else if (kind == 4) {  // a run of random bytes
      const size_t at = rng() % f.size(), n = 1 + rng() % 64;
      for (size_t i = at; i < f.size() && i < at + n; ++i) f[i] = static_cast<unsigned char>(rng());
    } else if (kind == 5) {  // grown or shrunk in the middle
      const size_t at = rng() % f.size();
      if (rng() & 1)
        f.insert(f.begin() + at, 1 + rng() % 128, static_cast<unsigned char>(rng()));
      else
        f.erase(f.begin() + at, f.begin() + std::min(f.size(), at + 1 + rng() % 128));
    } else if (kind == 6) {  // hostile values anywhere inside a section (lengths, types, shapes)
      const size_t i = rng() % starts.size();
      const size_t at = starts[i] + (sizes[i] ? rng() % sizes[i] : 0);
      if (rng() & 1)
        put<uint64_t>(f, at, hostile(rng, f.size()));
      else
        put<uint32_t>(f, at, static_cast<uint32_t>(hostile(rng, f.size())));
    } else if (kind == 7) {  // a section renamed (unknown to the reader), its required flag flipped
      const size_t entry = 16 + 32 * (rng() % sections);
      if (rng() & 1) std::memcpy(f.data() + entry, rng() & 1 ? "future\0\0" : "k\0\0\0\0\0\0\0", 8);
      put<uint32_t>(f, entry + 8, static_cast<uint32_t>(rng() % 4));
    } else {  // a NaN or an infinity among the tensors' values
      const size_t last = starts.size() - 1;  // the data section comes last
      const size_t at = starts[last] + 4 * (rng() % std::max<size_t>(1, sizes[last] / 4));
      const uint32_t values[] = {0x7FC00000u, 0x7F800000u, 0xFF800000u, 0x7F800001u};
      put<uint32_t>(f, at, values[rng() % 4]);
    }
    if (rng() % 10 < 8) reseal(f);
    aghmn_model* m = nullptr;
    const aghmn_status st = aghmn_model_load_buffer(f.data(), f.size(), &m);
    if (st < 0 || st > 7) {
      std::fprintf(stderr, "iteration %ld: status %d out of range\n", it, static_cast<int>(st));
      return 1;
    }
    ++by_status[st];
    if (st == AGHMN_OK) {
      ++loaded;
      // A mutant that loads is a model of valid structure (e.g. other weights): it must run.
      if (exercise(m, state_path, loaded % 64 == 1) != 0) {
        std::fprintf(stderr, "iteration %ld: a loaded mutant failed to run: %s\n", it,
                     aghmn_last_error());
        return 1;
      }
      aghmn_model_free(m);
    } else if (aghmn_last_error()[0] == '\0') {
      std::fprintf(stderr, "iteration %ld: status %d without a message\n", it, static_cast<int>(st));
      return 1;
    }
  }
  std::remove(state_path.c_str());
  std::printf("fuzz_model: %ld mutants: %ld loaded and ran, %ld format errors, %ld version errors, "
              "%ld other\n", iterations, loaded, by_status[AGHMN_ERR_FORMAT],
              by_status[AGHMN_ERR_VERSION],
              iterations - loaded - by_status[AGHMN_ERR_FORMAT] - by_status[AGHMN_ERR_VERSION]);
  return 0;
}
