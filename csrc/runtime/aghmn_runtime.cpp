// The C API (aghmn_runtime.h) over the C++ core: every entry point catches everything, so no
// exception crosses the boundary; live handles (and state buffers) are registered, so a freed or
// foreign pointer is an error code or a no-op rather than a use after free or a double free
// (unless its address was reused by a new handle).
#include "runtime/aghmn_runtime.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_set>

#include "runtime/model.h"
#include "runtime/runtime_internal.h"
#include "runtime/session.h"
#include "runtime/tokenizer.h"

struct aghmn_model {
  std::shared_ptr<const aghmn::rt::Model> model;
};

struct aghmn_session {
  aghmn::rt::Session session;
};

namespace {

using aghmn::rt::Error;
using aghmn::rt::fail;

thread_local std::string g_last_error;

std::mutex g_handles_mutex;
std::unordered_set<const void*>& handles() {
  static auto* set = new std::unordered_set<const void*>();  // never destroyed: usable at exit
  return *set;
}

void register_handle(const void* h) {
  std::lock_guard<std::mutex> lock(g_handles_mutex);
  handles().insert(h);
}

bool unregister_handle(const void* h) {
  std::lock_guard<std::mutex> lock(g_handles_mutex);
  return handles().erase(h) == 1;
}

bool live(const void* h) {
  std::lock_guard<std::mutex> lock(g_handles_mutex);
  return handles().count(h) == 1;
}

template <typename H>
void check_handle(const H* h, const char* what) {
  if (h == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, std::string(what) + " is NULL");
  if (!live(h)) fail(AGHMN_ERR_INVALID_ARGUMENT, std::string(what) + " is not a live handle (freed?)");
}

std::string bytes(const char* p, size_t n, const char* what) {
  if (p == nullptr && n > 0) fail(AGHMN_ERR_INVALID_ARGUMENT, std::string(what) + " is NULL");
  return std::string(p ? p : "", n);
}

// Runs f, turning every exception into a status and this thread's message.
template <typename F>
aghmn_status guarded(F&& f) {
  try {
    f();
    return AGHMN_OK;
  } catch (const Error& e) {
    g_last_error = e.what();
    return e.status();
  } catch (const std::bad_alloc&) {
    g_last_error = "out of memory";
    return AGHMN_ERR_NO_MEMORY;
  } catch (const std::exception& e) {
    g_last_error = std::string("internal error: ") + e.what();
    return AGHMN_ERR_INTERNAL;
  } catch (...) {
    g_last_error = "internal error";
    return AGHMN_ERR_INTERNAL;
  }
}

aghmn_status load_into(aghmn_model** out, std::vector<unsigned char> bytes) {
  if (out == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, "out is NULL");
  auto model = std::make_shared<const aghmn::rt::Model>(aghmn::rt::parse_model(std::move(bytes)));
  auto* handle = new aghmn_model{std::move(model)};
  register_handle(handle);
  *out = handle;
  return AGHMN_OK;
}

}  // namespace

extern "C" {

const char* aghmn_last_error(void) { return g_last_error.c_str(); }

const char* aghmn_version(void) {
  static const std::string version = std::string(AGHMN_RUNTIME_VERSION_STRING) + " (model format " +
                                     std::to_string(aghmn::rt::kFormatVersion) + ")";
  return version.c_str();
}

aghmn_status aghmn_model_load(const char* path, aghmn_model** out) {
  return guarded([&] {
    if (out == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, "out is NULL");
    std::vector<unsigned char> data = aghmn::rt::read_file(path, "model", aghmn::rt::kMaxModelBytes);
    try {
      load_into(out, std::move(data));
    } catch (const Error& e) {
      fail(e.status(), std::string(path) + ": " + e.what());
    }
  });
}

aghmn_status aghmn_model_load_buffer(const void* data, size_t size, aghmn_model** out) {
  return guarded([&] {
    if (out == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, "out is NULL");
    if (data == nullptr && size > 0) fail(AGHMN_ERR_INVALID_ARGUMENT, "data is NULL");
    const auto* p = static_cast<const unsigned char*>(data);
    load_into(out, std::vector<unsigned char>(p, p + size));
  });
}

void aghmn_model_free(aghmn_model* model) {
  if (model != nullptr && unregister_handle(model)) delete model;
}

int aghmn_model_num_labels(const aghmn_model* model) {
  if (model == nullptr || !live(model)) return -1;
  return static_cast<int>(model->model->dims.C);
}

const char* aghmn_model_label(const aghmn_model* model, int i) {
  if (model == nullptr || !live(model) || i < 0 || i >= model->model->dims.C) return nullptr;
  return model->model->labels[i].c_str();
}

int aghmn_model_window(const aghmn_model* model) {
  if (model == nullptr || !live(model)) return -1;
  return static_cast<int>(model->model->dims.K);
}

const char* aghmn_model_precision(const aghmn_model* model) {
  if (model == nullptr || !live(model)) return nullptr;
  return model->model->bf16 ? "bf16" : "fp32";
}

aghmn_status aghmn_session_create(const aghmn_model* model, aghmn_session** out) {
  return aghmn_session_create_with(model, 0, out);
}

aghmn_status aghmn_session_create_with(const aghmn_model* model, uint32_t flags,
                                       aghmn_session** out) {
  return guarded([&] {
    check_handle(model, "model");
    if (out == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, "out is NULL");
    if ((flags & ~uint32_t{AGHMN_SESSION_NO_PROJECTION_CACHE}) != 0)
      fail(AGHMN_ERR_INVALID_ARGUMENT, "flags has unknown bits (" + std::to_string(flags) +
                                           "): the flags are AGHMN_SESSION_NO_PROJECTION_CACHE");
    const bool cache = (flags & AGHMN_SESSION_NO_PROJECTION_CACHE) == 0;
    auto* s = new aghmn_session{aghmn::rt::Session(model->model, cache)};
    register_handle(s);
    *out = s;
  });
}

void aghmn_session_free(aghmn_session* session) {
  if (session != nullptr && unregister_handle(session)) delete session;
}

aghmn_status aghmn_push(aghmn_session* s, const char* id, size_t id_len, const char* text,
                        size_t text_len, float* probs, int64_t* index) {
  return guarded([&] {
    check_handle(s, "session");
    if (id == nullptr && id_len > 0) fail(AGHMN_ERR_INVALID_ARGUMENT, "id is NULL");
    if (text == nullptr && text_len > 0) fail(AGHMN_ERR_INVALID_ARGUMENT, "text is NULL");
    if (probs == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, "probs is NULL");
    const char* empty = "";
    const char* ids[1] = {id ? id : empty};
    const char* texts[1] = {text ? text : empty};
    s->session.push_many(1, ids, &id_len, texts, &text_len, probs, index);
  });
}

aghmn_status aghmn_push_many(aghmn_session* s, size_t n, const char* const* ids,
                             const size_t* id_lens, const char* const* texts,
                             const size_t* text_lens, float* probs, int64_t* indices) {
  return guarded([&] {
    check_handle(s, "session");
    s->session.push_many(n, ids, id_lens, texts, text_lens, probs, indices);
  });
}

aghmn_status aghmn_close(aghmn_session* s, const char* id, size_t id_len) {
  return guarded([&] {
    check_handle(s, "session");
    s->session.close(bytes(id, id_len, "id"));
  });
}

aghmn_status aghmn_utterances_seen(const aghmn_session* s, const char* id, size_t id_len,
                                   int64_t* out) {
  return guarded([&] {
    check_handle(s, "session");
    if (out == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = s->session.utterances_seen(bytes(id, id_len, "id"));
  });
}

size_t aghmn_num_conversations(const aghmn_session* s) {
  if (s == nullptr || !live(s)) return 0;
  return s->session.size();
}

aghmn_status aghmn_conversation_id(const aghmn_session* s, size_t i, const char** id,
                                   size_t* id_len) {
  return guarded([&] {
    check_handle(s, "session");
    if (id == nullptr || id_len == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, "id or id_len is NULL");
    if (i >= s->session.size())
      fail(AGHMN_ERR_INVALID_ARGUMENT, "conversation index " + std::to_string(i) + " is out of range");
    const std::string& key = s->session.id_at(i);
    *id = key.data();
    *id_len = key.size();
  });
}

aghmn_status aghmn_session_save(const aghmn_session* s, const char* path) {
  return guarded([&] {
    check_handle(s, "session");
    s->session.save(path);
  });
}

aghmn_status aghmn_session_load(aghmn_session* s, const char* path) {
  return guarded([&] {
    check_handle(s, "session");
    s->session.load(path);
  });
}

aghmn_status aghmn_normalize(const char* text, size_t len, char* out, size_t cap, size_t* needed) {
  return guarded([&] {
    if (needed == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, "needed is NULL");
    const std::string s = aghmn::rt::normalize(text, len);
    *needed = s.size();
    if (cap <= s.size() || out == nullptr)
      fail(AGHMN_ERR_INVALID_ARGUMENT, "buffer too small: the result needs " +
                                           std::to_string(s.size() + 1) + " bytes with its NUL");
    std::memcpy(out, s.c_str(), s.size() + 1);
  });
}

size_t aghmn_model_conversation_bytes(const aghmn_model* model) {
  if (model == nullptr || !live(model)) return 0;
  return aghmn::rt::conversation_bytes(*model->model);
}

size_t aghmn_session_conversation_bytes(const aghmn_session* s) {
  if (s == nullptr || !live(s)) return 0;
  return s->session.conversation_bytes();
}

size_t aghmn_session_store_bytes(const aghmn_session* s) {
  if (s == nullptr || !live(s)) return 0;
  return s->session.store_bytes();
}

aghmn_status aghmn_session_save_buffer(const aghmn_session* s, void** data, size_t* size) {
  return guarded([&] {
    check_handle(s, "session");
    if (data == nullptr || size == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, "data or size is NULL");
    const std::vector<unsigned char> bytes = s->session.save_bytes();
    // malloc, not new[]: aghmn_buffer_free releases it without knowing its type or size.
    void* out = std::malloc(bytes.size());
    if (out == nullptr) fail(AGHMN_ERR_NO_MEMORY, "out of memory for a state of " +
                                                      std::to_string(bytes.size()) + " bytes");
    std::memcpy(out, bytes.data(), bytes.size());
    register_handle(out);  // so that a second aghmn_buffer_free of it is a no-op, not a crash
    *data = out;
    *size = bytes.size();
  });
}

aghmn_status aghmn_session_load_buffer(aghmn_session* s, const void* data, size_t size) {
  return guarded([&] {
    check_handle(s, "session");
    if (data == nullptr) fail(AGHMN_ERR_INVALID_ARGUMENT, "data is NULL");
    s->session.load_bytes(static_cast<const unsigned char*>(data), size, "state buffer");
  });
}

void aghmn_buffer_free(void* data) {
  if (data != nullptr && unregister_handle(data)) std::free(data);
}

}  // extern "C"
