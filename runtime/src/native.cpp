// aghmn_runtime._native: the pybind11 binding of the runtime's C API (csrc/runtime/aghmn_runtime.h).
// Everything goes through the C API (status codes and aghmn_last_error), never through its C++
// internals, so the module tests the same surface a C/C++/Go/Rust embedder uses. The Python layer
// (aghmn_runtime/__init__.py) turns these results into Prediction objects.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <aghmn_runtime.h>

namespace py = pybind11;

namespace {

// The status of a call on a released Session (no C call is made then).
constexpr aghmn_status kReleased = aghmn_status(-1);

// One C API failure as the Python exception its status stands for, carrying the C message.
[[noreturn]] void raise_status(aghmn_status status) {
  if (status == kReleased) throw py::value_error("this recognizer was released (release() or a with block ended)");
  const char* message = aghmn_last_error();
  std::string text = message != nullptr && message[0] != '\0'
                         ? std::string(message)
                         : "aghmn runtime error (status " + std::to_string(int(status)) + ")";
  switch (status) {
    case AGHMN_ERR_UNKNOWN_CONVERSATION:
      throw py::key_error(text);
    case AGHMN_ERR_IO:
      PyErr_SetString(PyExc_OSError, text.c_str());
      throw py::error_already_set();
    case AGHMN_ERR_NO_MEMORY:
      PyErr_SetString(PyExc_MemoryError, text.c_str());
      throw py::error_already_set();
    case AGHMN_ERR_INTERNAL:
      throw std::runtime_error(text);
    default:  // invalid argument, format, version
      throw py::value_error(text);
  }
}

inline void check(aghmn_status status) {
  if (status != AGHMN_OK) raise_status(status);
}

// The UTF-8 bytes of a str (no copy: CPython caches them in the object) or of a bytes object
// (passed through unchecked, so the C API's own UTF-8 validation answers for it). `what` names
// the argument in the TypeError / ValueError.
std::pair<const char*, size_t> utf8_of(PyObject* obj, const char* what) {
  if (PyUnicode_Check(obj)) {
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(obj, &size);
    if (data == nullptr) {  // lone surrogates: not encodable as UTF-8
      PyErr_Clear();
      throw py::value_error(std::string(what) + " is not valid UTF-8 (it holds a lone surrogate)");
    }
    return {data, size_t(size)};
  }
  if (PyBytes_Check(obj)) return {PyBytes_AS_STRING(obj), size_t(PyBytes_GET_SIZE(obj))};
  throw py::type_error(std::string(what) + " must be a str, got " + Py_TYPE(obj)->tp_name);
}

// A conversation id: str only (conversations() gives them back as str).
std::pair<const char*, size_t> id_of(PyObject* obj, const char* what) {
  if (!PyUnicode_Check(obj))
    throw py::type_error(std::string(what) + " must be a str, got " + Py_TYPE(obj)->tp_name);
  return utf8_of(obj, what);
}

// A loaded model: immutable, shared by every session made from it.
class Model {
 public:
  explicit Model(const std::string& path) {
    aghmn_model* model = nullptr;
    aghmn_status status;
    {
      py::gil_scoped_release release;
      status = aghmn_model_load(path.c_str(), &model);
    }
    check(status);
    model_ = model;
  }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  ~Model() { aghmn_model_free(model_); }

  const aghmn_model* get() const { return model_; }
  int num_labels() const { return aghmn_model_num_labels(model_); }
  int window() const { return aghmn_model_window(model_); }
  size_t conversation_bytes() const { return aghmn_model_conversation_bytes(model_); }
  std::string precision() const { return aghmn_model_precision(model_); }
  std::vector<std::string> labels() const {
    std::vector<std::string> out;
    for (int i = 0; i < num_labels(); ++i) out.emplace_back(aghmn_model_label(model_, i));
    return out;
  }

 private:
  aghmn_model* model_ = nullptr;
};

// The items of a push_many call held alive (new references) with their UTF-8 views, so the GIL
// can be released while the C API reads them.
struct Batch {
  std::vector<py::object> keep;
  std::vector<const char*> ids, texts;
  std::vector<size_t> id_lens, text_lens;

  void add(PyObject* id, PyObject* text, size_t i) {
    std::string id_what = "conversation id of item " + std::to_string(i);
    std::string text_what = "text of item " + std::to_string(i);
    auto [id_data, id_len] = id_of(id, id_what.c_str());
    auto [text_data, text_len] = utf8_of(text, text_what.c_str());
    keep.push_back(py::reinterpret_borrow<py::object>(id));
    keep.push_back(py::reinterpret_borrow<py::object>(text));
    ids.push_back(id_data);
    id_lens.push_back(id_len);
    texts.push_back(text_data);
    text_lens.push_back(text_len);
  }
};

// A sequence of str as a list: lists, tuples and numpy arrays of str (dtype U or object) are
// taken; a numeric or bytes-typed array is a TypeError naming the argument.
py::list str_sequence(const py::object& seq, const char* what) {
  if (py::isinstance<py::array>(seq)) {
    py::array arr = py::reinterpret_borrow<py::array>(seq);
    char kind = arr.dtype().kind();
    if (kind != 'U' && kind != 'O')
      throw py::type_error(std::string(what) + " must hold str, got a numpy array of dtype " +
                           std::string(py::str(arr.dtype())));
    if (arr.ndim() != 1)
      throw py::value_error(std::string(what) + " must be one-dimensional, got " +
                            std::to_string(arr.ndim()) + " dimensions");
    return py::list(arr.attr("tolist")());
  }
  if (py::isinstance<py::str>(seq) || py::isinstance<py::bytes>(seq) ||
      !py::isinstance<py::sequence>(seq))
    throw py::type_error(std::string(what) + " must be a sequence of str, got " +
                         std::string(py::str(py::type::handle_of(seq).attr("__name__"))));
  return py::list(seq);
}

// Conversations and their ring store. Calls are serialised by a mutex taken with the GIL
// released, so a session shared between Python threads is never entered twice at once (the C
// session is one-thread-at-a-time).
class Session {
 public:
  Session(std::shared_ptr<Model> model, bool projection_cache) : model_(std::move(model)) {
    check(aghmn_session_create_with(
        model_->get(), projection_cache ? 0u : uint32_t{AGHMN_SESSION_NO_PROJECTION_CACHE},
        &session_));
    num_labels_ = model_->num_labels();
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() { release(); }

  // Frees the native session now; later calls raise ValueError.
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    aghmn_session_free(session_);
    session_ = nullptr;
  }
  bool released() const { return session_ == nullptr; }

  // (probabilities [C] float32, index in the conversation)
  py::tuple push(const py::handle& id, const py::handle& text) {
    auto [id_data, id_len] = id_of(id.ptr(), "conversation_id");
    auto [text_data, text_len] = utf8_of(text.ptr(), "text");
    py::array_t<float> probs(num_labels_);
    int64_t index = -1;
    float* out = probs.mutable_data();
    check(without_gil([&](aghmn_session* s) {
      return aghmn_push(s, id_data, id_len, text_data, text_len, out, &index);
    }));
    return py::make_tuple(std::move(probs), index);
  }

  // (probabilities [n, C] float32, indices [n] int64) for parallel sequences of ids and texts.
  py::tuple push_many(const py::object& ids_arg, const py::object& texts_arg) {
    py::list ids = str_sequence(ids_arg, "ids");
    py::list texts = str_sequence(texts_arg, "texts");
    const size_t n = ids.size();
    if (texts.size() != n)
      throw py::value_error("ids and texts must have one length, got " + std::to_string(n) +
                            " and " + std::to_string(texts.size()));
    Batch batch;
    batch.keep.reserve(2 * n);
    for (size_t i = 0; i < n; ++i) batch.add(ids[i].ptr(), texts[i].ptr(), i);
    return push_batch(batch);
  }

  // The same for a sequence of (id, text) pairs.
  py::tuple push_items(const py::object& items_arg) {
    py::list items = py::list(items_arg);
    Batch batch;
    batch.keep.reserve(2 * items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      PyObject* item = items[i].ptr();
      if (!PyTuple_Check(item) && !PyList_Check(item))
        throw py::type_error("item " + std::to_string(i) +
                             " must be a (conversation_id, text) pair");
      py::sequence pair = py::reinterpret_borrow<py::sequence>(item);
      if (pair.size() != 2)
        throw py::type_error("item " + std::to_string(i) +
                             " must be a (conversation_id, text) pair");
      batch.add(pair[0].ptr(), pair[1].ptr(), i);
    }
    return push_batch(batch);
  }

  void close(const py::handle& id) {
    auto [data, len] = id_of(id.ptr(), "conversation_id");
    aghmn_status status;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      status = session_ == nullptr ? closed() : aghmn_close(session_, data, len);
    }
    check(status);
  }

  int64_t utterances_seen(const py::handle& id) {
    auto [data, len] = id_of(id.ptr(), "conversation_id");
    int64_t count = 0;
    aghmn_status status;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      status = session_ == nullptr ? closed() : aghmn_utterances_seen(session_, data, len, &count);
    }
    if (status == AGHMN_ERR_UNKNOWN_CONVERSATION) return 0;  // as StreamingRecognizer: 0 if unknown
    check(status);
    return count;
  }

  size_t num_conversations() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (session_ == nullptr) check(closed());
    return aghmn_num_conversations(session_);
  }

  size_t store_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (session_ == nullptr) check(closed());
    return aghmn_session_store_bytes(session_);
  }

  size_t conversation_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (session_ == nullptr) check(closed());
    return aghmn_session_conversation_bytes(session_);
  }

  std::vector<std::string> conversations() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (session_ == nullptr) check(closed());
    std::vector<std::string> out;
    const size_t n = aghmn_num_conversations(session_);
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const char* data = nullptr;
      size_t len = 0;
      check(aghmn_conversation_id(session_, i, &data, &len));
      out.emplace_back(data, len);
    }
    return out;
  }

  void save(const std::string& path) {
    check(without_gil([&](aghmn_session* s) { return aghmn_session_save(s, path.c_str()); }));
  }

  void load(const std::string& path) {
    check(without_gil([&](aghmn_session* s) { return aghmn_session_load(s, path.c_str()); }));
  }

  // The state as bytes (aghmn_session_save_buffer), copied out of the library's buffer.
  py::bytes save_bytes() {
    void* data = nullptr;
    size_t size = 0;
    check(without_gil([&](aghmn_session* s) { return aghmn_session_save_buffer(s, &data, &size); }));
    std::unique_ptr<void, void (*)(void*)> owned(data, aghmn_buffer_free);
    return py::bytes(static_cast<const char*>(data), size);
  }

  // A state from any contiguous bytes-like object (bytes, bytearray, memoryview, mmap).
  void load_bytes(const py::handle& state) {
    Py_buffer view;
    if (PyObject_GetBuffer(state.ptr(), &view, PyBUF_SIMPLE) != 0) {
      PyErr_Clear();
      throw py::type_error(std::string("state must be a bytes-like object, got ") +
                           Py_TYPE(state.ptr())->tp_name);
    }
    // The view pins the object (a bytearray cannot be resized meanwhile) while the GIL is out.
    std::unique_ptr<Py_buffer, void (*)(Py_buffer*)> held(&view, PyBuffer_Release);
    check(without_gil([&](aghmn_session* s) {
      return aghmn_session_load_buffer(s, view.len > 0 ? view.buf : "", size_t(view.len));
    }));
  }

 private:
  static aghmn_status closed() { return kReleased; }

  // f(session) without the GIL (pushes and state files may take milliseconds) and under this
  // recognizer's lock; a released recognizer gives kReleased.
  template <typename F>
  aghmn_status without_gil(F&& f) {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    return session_ == nullptr ? closed() : f(session_);
  }

  py::tuple push_batch(const Batch& batch) {
    const size_t n = batch.ids.size();
    py::array_t<float> probs({py::ssize_t(n), py::ssize_t(num_labels_)});
    py::array_t<int64_t> indices(static_cast<py::ssize_t>(n));
    if (n > 0) {
      float* out = probs.mutable_data();
      int64_t* out_indices = indices.mutable_data();
      check(without_gil([&](aghmn_session* s) {
        return aghmn_push_many(s, n, batch.ids.data(), batch.id_lens.data(), batch.texts.data(),
                               batch.text_lens.data(), out, out_indices);
      }));
    }
    return py::make_tuple(std::move(probs), std::move(indices));
  }

  std::shared_ptr<Model> model_;
  aghmn_session* session_ = nullptr;
  int num_labels_ = 0;
  std::mutex mutex_;
};

std::string normalize(const py::handle& text) {
  auto [data, len] = utf8_of(text.ptr(), "text");
  // The result is almost never longer than the input; when it is, the C API says how long
  // (status "buffer too small" with *needed set) and the second call is sized (+1: its NUL).
  std::string out(len + 16, '\0');
  size_t needed = 0;
  aghmn_status status = aghmn_normalize(data, len, out.data(), out.size(), &needed);
  if (status != AGHMN_OK && needed + 1 > out.size()) {
    out.assign(needed + 1, '\0');
    status = aghmn_normalize(data, len, out.data(), out.size(), &needed);
  }
  check(status);
  out.resize(needed);
  return out;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "The pybind11 binding of the AGHMN runtime's C API (use aghmn_runtime, not this).";
  m.def("version", [] { return std::string(aghmn_version()); },
        "The runtime library's version string.");
  m.attr("__version__") = AGHMN_RUNTIME_VERSION_STRING;
  m.attr("MODEL_MAGIC") = py::bytes(AGHMN_MODEL_MAGIC, sizeof(AGHMN_MODEL_MAGIC));
  m.attr("MODEL_FORMAT_VERSION") = AGHMN_MODEL_FORMAT_VERSION;
  m.def("normalize", &normalize, py::arg("text"),
        "The authors' text normalisation (aghmn_fast.data.text.normalize) of a str.");

  py::class_<Model, std::shared_ptr<Model>>(m, "Model", "A loaded .aghmn model file.")
      .def(py::init<const std::string&>(), py::arg("path"))
      .def_property_readonly("labels", &Model::labels, "Class names, in class-id order.")
      .def_property_readonly("window", &Model::window, "K, the memory window.")
      .def_property_readonly("conversation_bytes", &Model::conversation_bytes,
                             "Bytes of state one open conversation holds in a session.")
      .def_property_readonly("precision", &Model::precision,
                             "Storage precision of the weights and ring store: fp32 or bf16.");

  py::class_<Session>(m, "Session", "Conversations and their ring store over one Model.")
      .def(py::init<std::shared_ptr<Model>, bool>(), py::arg("model"), py::kw_only(),
           py::arg("projection_cache") = true)
      .def("push", &Session::push, py::arg("conversation_id"), py::arg("text"),
           "(probabilities float32 [C], index) of one utterance.")
      .def("push_many", &Session::push_many, py::arg("ids"), py::arg("texts"),
           "(probabilities float32 [n, C], indices int64 [n]) of parallel ids and texts.")
      .def("push_items", &Session::push_items, py::arg("items"),
           "push_many over a sequence of (conversation_id, text) pairs.")
      .def("close", &Session::close, py::arg("conversation_id"))
      .def("utterances_seen", &Session::utterances_seen, py::arg("conversation_id"))
      .def("num_conversations", &Session::num_conversations)
      .def("conversations", &Session::conversations)
      .def_property_readonly("store_bytes", &Session::store_bytes,
                             "Bytes the ring store holds now (its capacity, open or not).")
      .def_property_readonly("conversation_bytes", &Session::conversation_bytes,
                             "Bytes of state one open conversation holds in this session.")
      .def("save", &Session::save, py::arg("path"))
      .def("load", &Session::load, py::arg("path"))
      .def("save_bytes", &Session::save_bytes, "The state as bytes (the state file's content).")
      .def("load_bytes", &Session::load_bytes, py::arg("state"),
           "Replace the state with one of save_bytes (any bytes-like object).")
      .def("release", &Session::release, "Free the native session now.")
      .def_property_readonly("released", &Session::released);
}
