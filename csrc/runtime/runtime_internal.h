// Internals of the native runtime (C++17, no torch): the error type every internal function
// throws (the C API turns it into a status code and a message; nothing crosses that boundary),
// byte readers for untrusted buffers, FNV-1a and UTF-8 decoding.
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

// FNV-1a 64-bit (the model and state files' checksum).
constexpr uint64_t kFnvOffset = 14695981039346656037ull;
inline uint64_t fnv1a(const void* data, size_t size, uint64_t h = kFnvOffset) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
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
