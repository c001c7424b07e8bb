// Internals of the native runtime (C++17, no torch): the error type every internal function
// throws (the C API turns it into a status code and a message; nothing crosses that boundary),
// byte readers for untrusted buffers, checksums (XXH64, FNV-1a) and UTF-8 decoding.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "runtime/aghmn_runtime.h"

// The file formats are little-endian and read with memcpy.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the aghmn runtime supports little-endian machines only"
#endif

namespace aghmn {
namespace rt {

// A failure with its C API status.
class Error : public std::runtime_error {
 public:
  Error(aghmn_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  aghmn_status status() const { return status_; }

 private:
  aghmn_status status_;
};

[[noreturn]] inline void fail(aghmn_status status, const std::string& message) {
  throw Error(status, message);
}

// FNV-1a 64-bit (the state files' checksum).
constexpr uint64_t kFnvOffset = 14695981039346656037ull;
inline uint64_t fnv1a(const void* data, size_t size, uint64_t h = kFnvOffset) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

// XXH64 (seed 0): the model file's checksum. FNV-1a is byte-serial (a multiply's latency per
// byte: milliseconds per megabyte, at every load); XXH64 runs four independent lanes of 8 bytes.
inline uint64_t xxh64(const void* data, size_t size) {
  constexpr uint64_t P1 = 0x9E3779B185EBCA87ull, P2 = 0xC2B2AE3D27D4EB4Full,
                     P3 = 0x165667B19E3779F9ull, P4 = 0x85EBCA77C2B2AE63ull,
                     P5 = 0x27D4EB2F165667C5ull;
  auto rotl = [](uint64_t x, int r) { return (x << r) | (x >> (64 - r)); };
  auto round = [&](uint64_t acc, uint64_t lane) { return rotl(acc + lane * P2, 31) * P1; };
  auto u64 = [](const unsigned char* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
  };
  const auto* p = static_cast<const unsigned char*>(data);
  const unsigned char* const end = p + size;
  uint64_t h;
  if (size >= 32) {
    uint64_t v1 = P1 + P2, v2 = P2, v3 = 0, v4 = 0 - P1;
    for (; end - p >= 32; p += 32) {
      v1 = round(v1, u64(p));
      v2 = round(v2, u64(p + 8));
      v3 = round(v3, u64(p + 16));
      v4 = round(v4, u64(p + 24));
    }
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
    for (uint64_t v : {v1, v2, v3, v4}) h = (h ^ round(0, v)) * P1 + P4;
  } else {
    h = P5;
  }
  h += size;
  for (; end - p >= 8; p += 8) h = rotl(h ^ round(0, u64(p)), 27) * P1 + P4;
  if (end - p >= 4) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    h = rotl(h ^ (uint64_t{v} * P1), 23) * P2 + P3;
    p += 4;
  }
  for (; p < end; ++p) h = rotl(h ^ (*p * P5), 11) * P1;
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  return h ^ (h >> 32);
}

// Little-endian reads from a bounds-checked window of an untrusted buffer. Every read checks
// the bytes it needs are there (`what` names the thing being read in the error).
class Reader {
 public:
  Reader(const unsigned char* data, size_t size, aghmn_status on_short, std::string where)
      : data_(data), size_(size), on_short_(on_short), where_(std::move(where)) {}
  size_t remaining() const { return size_ - pos_; }
  size_t pos() const { return pos_; }
  const unsigned char* take(size_t n, const char* what) {
    if (n > remaining())
      fail(on_short_, where_ + ": " + what + " needs " + std::to_string(n) + " bytes, only " +
                          std::to_string(remaining()) + " left");
    const unsigned char* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  template <typename T>
  T read(const char* what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
  // u32 byte length, then that many bytes.
  std::string read_string(const char* what) {
    const uint32_t n = read<uint32_t>(what);
    const unsigned char* p = take(n, what);
    return std::string(reinterpret_cast<const char*>(p), n);
  }

 private:
  const unsigned char* data_;
  size_t size_;
  size_t pos_ = 0;
  aghmn_status on_short_;
  std::string where_;
};

// Decodes one code point of strict UTF-8 at s[i] (no overlongs, surrogates or values above
// U+10FFFF); advances i. Returns -1 on invalid input.
inline int32_t utf8_next(const unsigned char* s, size_t n, size_t& i) {
  const unsigned c = s[i];
  if (c < 0x80) {
    ++i;
    return static_cast<int32_t>(c);
  }
  int len;
  uint32_t cp, min;
  if ((c & 0xE0) == 0xC0) {
    len = 2, cp = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, cp = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, cp = c & 0x07, min = 0x10000;
  } else {
    return -1;
  }
  if (n - i < static_cast<size_t>(len)) return -1;
  for (int k = 1; k < len; ++k) {
    const unsigned b = s[i + k];
    if ((b & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
  i += len;
  return static_cast<int32_t>(cp);
}

// Whether s[0:n) is valid UTF-8.
inline bool utf8_valid(const char* s, size_t n) {
  const auto* p = reinterpret_cast<const unsigned char*>(s);
  for (size_t i = 0; i < n;)
    if (utf8_next(p, n, i) < 0) return false;
  return true;
}

}  // namespace rt
}  // namespace aghmn
