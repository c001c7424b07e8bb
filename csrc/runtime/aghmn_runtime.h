/* aghmn_runtime.h: the C API of the native AGHMN runtime (C99; no C++ types, no exceptions cross
 * it). Load a model exported by `aghmn-fast export` (format version 2, docs/RUNTIME.md), open a
 * session, push UTF-8 utterances of many conversations, get float32 class probabilities.
 *
 * Errors: every function that can fail returns an aghmn_status; on failure aghmn_last_error()
 * returns a message describing it (thread-local: the last failure of the calling thread, valid
 * until that thread's next failing call). NULL pointers, invalid UTF-8, empty or whitespace-only
 * text, unknown conversations and (where detectable) handles already freed give an error code,
 * never a crash. Output arguments are written only on success.
 *
 * Thread safety: an aghmn_model is immutable once loaded and may be shared by any number of
 * threads and sessions (a session keeps its model alive: freeing the model while sessions use it
 * is allowed). An aghmn_session must be used by one thread at a time (it holds the conversation
 * table and the ring store, updated in place); give each thread its own session or serialise the
 * calls. Distinct sessions may run in parallel. Functions without a handle (aghmn_version,
 * aghmn_normalize, aghmn_last_error) are safe from any thread.
 *
 * Strings: conversation ids and texts are byte strings with explicit lengths (not NUL-terminated;
 * a pointer may be NULL when its length is 0). Texts and ids must be valid UTF-8.
 */
#ifndef AGHMN_RUNTIME_H
#define AGHMN_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

/* Include as <aghmn_runtime.h> (CMake: find_package(aghmn_runtime); pkg-config: aghmn_runtime).
 * ABI (docs/RUNTIME.md, "Versions and ABI"): the handles are opaque and no struct crosses the API,
 * so a minor release may only add functions and enum values; the shared library's SOVERSION is
 * the major version.
 *
 * The version of this header: the one source of the project's version (CMake, both Python
 * distributions and aghmn_version() read these three lines). aghmn_version() returns the version
 * of the library actually loaded (a later minor release than the header compiled against, maybe),
 * then the model format it reads. */
#define AGHMN_RUNTIME_VERSION_MAJOR 0
#define AGHMN_RUNTIME_VERSION_MINOR 2
#define AGHMN_RUNTIME_VERSION_PATCH 0
#define AGHMN_RUNTIME_STRINGIFY_(x) #x
#define AGHMN_RUNTIME_STRINGIFY(x) AGHMN_RUNTIME_STRINGIFY_(x)
/* "MAJOR.MINOR.PATCH", e.g. "0.2.0". */
#define AGHMN_RUNTIME_VERSION_STRING                       \
  AGHMN_RUNTIME_STRINGIFY(AGHMN_RUNTIME_VERSION_MAJOR) "." \
  AGHMN_RUNTIME_STRINGIFY(AGHMN_RUNTIME_VERSION_MINOR) "." \
  AGHMN_RUNTIME_STRINGIFY(AGHMN_RUNTIME_VERSION_PATCH)
/* One comparable number for #if: MAJOR * 10000 + MINOR * 100 + PATCH. */
#define AGHMN_RUNTIME_VERSION_NUMBER                                         \
  (AGHMN_RUNTIME_VERSION_MAJOR * 10000 + AGHMN_RUNTIME_VERSION_MINOR * 100 + \
   AGHMN_RUNTIME_VERSION_PATCH)

/* A model file (docs/RUNTIME.md, "The model file") starts with these 8 bytes ("AGHMNRT" and its
 * terminating NUL), then the format version as a little-endian uint32: the one definition of
 * both, for this library, its Python module (MODEL_MAGIC, MODEL_FORMAT_VERSION) and anything that
 * tells a model file from another file by its first bytes. */
#define AGHMN_MODEL_MAGIC "AGHMNRT"
#define AGHMN_MODEL_FORMAT_VERSION 2

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define AGHMN_API __declspec(dllexport)
#else
#define AGHMN_API __attribute__((visibility("default")))
#endif

typedef struct aghmn_model aghmn_model;     /* immutable once loaded: share across threads */
typedef struct aghmn_session aghmn_session; /* conversations + ring store: one thread at a time */

typedef enum {
  AGHMN_OK = 0,
  AGHMN_ERR_INVALID_ARGUMENT = 1, /* NULL pointer, invalid UTF-8, empty text, bad size, freed handle */
  AGHMN_ERR_IO = 2,               /* a file could not be opened, read, written or renamed */
  AGHMN_ERR_FORMAT = 3,           /* not a model / state file, corrupt, truncated, another model */
  AGHMN_ERR_VERSION = 4,          /* a format version this runtime does not read */
  AGHMN_ERR_UNKNOWN_CONVERSATION = 5,
  AGHMN_ERR_NO_MEMORY = 6,
  AGHMN_ERR_INTERNAL = 7
} aghmn_status;

/* Message of this thread's last failure ("" if none). */
AGHMN_API const char *aghmn_last_error(void);
/* Runtime version, e.g. "0.1.0 (model format 2)". */
AGHMN_API const char *aghmn_version(void);

/* Load a .aghmn model from a file or from memory (the buffer is copied; it may be freed after). */
AGHMN_API aghmn_status aghmn_model_load(const char *path, aghmn_model **out);
AGHMN_API aghmn_status aghmn_model_load_buffer(const void *data, size_t size, aghmn_model **out);
AGHMN_API void aghmn_model_free(aghmn_model *model); /* NULL ok */
AGHMN_API int aghmn_model_num_labels(const aghmn_model *model);          /* -1 on NULL */
AGHMN_API const char *aghmn_model_label(const aghmn_model *model, int i); /* NUL-terminated; NULL if out of range */
AGHMN_API int aghmn_model_window(const aghmn_model *model);              /* K; -1 on NULL */

AGHMN_API aghmn_status aghmn_session_create(const aghmn_model *model, aghmn_session **out);
AGHMN_API void aghmn_session_free(aghmn_session *session); /* NULL ok */

/* Classify the next utterance of conversation `id` (opened on its first utterance): probs gets
 * num_labels floats; index (if not NULL) the utterance's 0-based position in its conversation. */
AGHMN_API aghmn_status aghmn_push(aghmn_session *s, const char *id, size_t id_len,
                                  const char *text, size_t text_len, float *probs,
                                  int64_t *index);
/* n utterances in order; a conversation may appear several times (later items see earlier
 * ones). Everything is validated before any state changes (all or nothing). probs gets
 * n * num_labels floats (row i for item i), indices (if not NULL) n positions. n = 0 is a no-op. */
AGHMN_API aghmn_status aghmn_push_many(aghmn_session *s, size_t n, const char *const *ids,
                                       const size_t *id_lens, const char *const *texts,
                                       const size_t *text_lens, float *probs, int64_t *indices);
/* Forget a conversation (AGHMN_ERR_UNKNOWN_CONVERSATION if it is not open). */
AGHMN_API aghmn_status aghmn_close(aghmn_session *s, const char *id, size_t id_len);
/* Utterances pushed to a conversation (0 for one that is not open). */
AGHMN_API aghmn_status aghmn_utterances_seen(const aghmn_session *s, const char *id,
                                             size_t id_len, int64_t *out);
/* Open conversations (0 on NULL). */
AGHMN_API size_t aghmn_num_conversations(const aghmn_session *s);
/* Id of open conversation i (0 <= i < aghmn_num_conversations, in no particular order, stable
 * until the next call that opens or closes one): *id points into the session (valid until then),
 * *id_len its length. */
AGHMN_API aghmn_status aghmn_conversation_id(const aghmn_session *s, size_t i, const char **id,
                                             size_t *id_len);

/* Write every open conversation's state (versioned, checksummed, tied to the model), atomically
 * (a temporary file in the same folder, then rename). */
AGHMN_API aghmn_status aghmn_session_save(const aghmn_session *s, const char *path);
/* Replace all conversations with a saved state of the same model; on any error the session is
 * left untouched (a state of another model: AGHMN_ERR_FORMAT). */
AGHMN_API aghmn_status aghmn_session_load(aghmn_session *s, const char *path);

/* normalize() of aghmn_fast.data.text over UTF-8 text: the result is `*needed` bytes (ASCII);
 * when cap > *needed it is written to out with a terminating NUL, else AGHMN_ERR_INVALID_ARGUMENT
 * ("buffer too small") and *needed still tells the size (out may be NULL when cap is 0). */
AGHMN_API aghmn_status aghmn_normalize(const char *text, size_t len, char *out, size_t cap,
                                       size_t *needed);

/* Memory. Bytes of state one open conversation holds in a session of aghmn_session_create: its K
 * ring slots of reader vectors and fusion input projections (float32, or bf16 for a bf16 model);
 * 0 on NULL. A server budgets memory with it (aghmn_session_conversation_bytes: a session's own,
 * its flags applied). */
AGHMN_API size_t aghmn_model_conversation_bytes(const aghmn_model *model);
/* Bytes a session's ring store holds now (0 on NULL): conversation bytes times its capacity, open
 * or not. The store doubles when full and halves (compacting the open conversations) once at most
 * a quarter of it is open, giving the memory back to the operating system: closed conversations'
 * slots are reused by new ones, and returned when most conversations are closed. */
AGHMN_API size_t aghmn_session_store_bytes(const aghmn_session *s);
/* The state of aghmn_session_save in memory (the same bytes as the file): on success *data points
 * to *size bytes allocated by the library, which the caller owns and must release with
 * aghmn_buffer_free (never free(): the library may use another allocator). */
AGHMN_API aghmn_status aghmn_session_save_buffer(const aghmn_session *s, void **data,
                                                 size_t *size);
/* aghmn_session_load from memory: the bytes are read, not kept (the buffer may be freed after);
 * the same checks and the same all-or-nothing rule as the file. */
AGHMN_API aghmn_status aghmn_session_load_buffer(aghmn_session *s, const void *data,
                                                 size_t size);
/* Releases a buffer returned by aghmn_session_save_buffer (NULL, a buffer already released and a
 * pointer the library did not return are ignored). */
AGHMN_API void aghmn_buffer_free(void *data);
/* The storage precision of the model's weights and of its sessions' ring stores: "fp32" or
 * "bf16" (metadata aghmn.precision, docs/RUNTIME.md); the arithmetic is fp32 either way. A
 * static string; NULL on NULL. */
AGHMN_API const char *aghmn_model_precision(const aghmn_model *model);

/* Session options (since 0.2): flags of aghmn_session_create_with, or-ed; 0 is
 * aghmn_session_create's session. */
typedef enum {
  /* Keep only the reader vectors in the ring store, not their fusion input projections: every
   * push recomputes the window's projections from them. The probabilities, indices and state
   * files are the same, bit for bit (a state saved either way loads either way); a conversation
   * holds 1 / (1 + 3 * max(D, 1)) of the bytes with the cache (D fusion directions: a seventh
   * for BiF) and a push does more work. */
  AGHMN_SESSION_NO_PROJECTION_CACHE = 1
} aghmn_session_flag;
/* aghmn_session_create with options: flags is 0 or AGHMN_SESSION_NO_PROJECTION_CACHE (an unknown
 * bit: AGHMN_ERR_INVALID_ARGUMENT). */
AGHMN_API aghmn_status aghmn_session_create_with(const aghmn_model *model, uint32_t flags,
                                                 aghmn_session **out);
/* Bytes of state one open conversation holds in this session (its options applied: without the
 * projection cache, the reader vectors only); 0 on NULL. aghmn_model_conversation_bytes is this
 * for a session of aghmn_session_create. */
AGHMN_API size_t aghmn_session_conversation_bytes(const aghmn_session *s);

#ifdef __cplusplus
}
#endif

#endif /* AGHMN_RUNTIME_H */
