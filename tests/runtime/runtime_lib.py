"""The native runtime's C API through ctypes, for the tests (the real module is helper
runtime-py's pybind11 package; these tests check the C API itself).

``build_runtime(folder)`` builds libaghmn_runtime.so with CMake (or takes $AGHMN_RUNTIME_LIB);
:class:`Runtime` wraps the library, :class:`Session` a session.
"""
from __future__ import annotations

import ctypes
import os
import pathlib
import subprocess

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
OK, INVALID, IO, FORMAT, VERSION, UNKNOWN, NO_MEMORY, INTERNAL = range(8)
NO_PROJECTION_CACHE = 1   # aghmn_session_flag


def build_runtime(folder: pathlib.Path) -> str:
    """Path of libaghmn_runtime.so: $AGHMN_RUNTIME_LIB, else built with CMake in ``folder``."""
    given = os.environ.get("AGHMN_RUNTIME_LIB")
    if given:
        return given
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(folder), "-DCMAKE_BUILD_TYPE=Release"],
                   check=True, capture_output=True, timeout=300)
    subprocess.run(["cmake", "--build", str(folder), "-j", "2", "--target", "aghmn_runtime"],
                   check=True, capture_output=True, timeout=900)
    return str(folder / "libaghmn_runtime.so")


class RuntimeError_(Exception):
    """A non-OK status from the C API (``status`` and the library's message)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"status {status}: {message}")
        self.status, self.message = status, message


class Runtime:
    """The C API of one loaded library."""

    def __init__(self, path: str):
        lib = self.lib = ctypes.CDLL(path)
        P, S, F = ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_float)
        I64 = ctypes.POINTER(ctypes.c_int64)
        sig = {
            "aghmn_last_error": (ctypes.c_char_p, []),
            "aghmn_version": (ctypes.c_char_p, []),
            "aghmn_model_load": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(P)]),
            "aghmn_model_load_buffer": (ctypes.c_int, [ctypes.c_char_p, S, ctypes.POINTER(P)]),
            "aghmn_model_free": (None, [P]),
            "aghmn_model_num_labels": (ctypes.c_int, [P]),
            "aghmn_model_label": (ctypes.c_char_p, [P, ctypes.c_int]),
            "aghmn_model_window": (ctypes.c_int, [P]),
            "aghmn_session_create": (ctypes.c_int, [P, ctypes.POINTER(P)]),
            "aghmn_session_create_with": (ctypes.c_int, [P, ctypes.c_uint32, ctypes.POINTER(P)]),
            "aghmn_session_conversation_bytes": (S, [P]),
            "aghmn_session_free": (None, [P]),
            "aghmn_push": (ctypes.c_int, [P, ctypes.c_char_p, S, ctypes.c_char_p, S, F, I64]),
            "aghmn_push_many": (ctypes.c_int, [P, S, ctypes.POINTER(ctypes.c_char_p),
                                               ctypes.POINTER(S), ctypes.POINTER(ctypes.c_char_p),
                                               ctypes.POINTER(S), F, I64]),
            "aghmn_close": (ctypes.c_int, [P, ctypes.c_char_p, S]),
            "aghmn_utterances_seen": (ctypes.c_int, [P, ctypes.c_char_p, S, I64]),
            "aghmn_num_conversations": (S, [P]),
            "aghmn_conversation_id": (ctypes.c_int, [P, S, ctypes.POINTER(ctypes.c_char_p),
                                                     ctypes.POINTER(S)]),
            "aghmn_session_save": (ctypes.c_int, [P, ctypes.c_char_p]),
            "aghmn_session_load": (ctypes.c_int, [P, ctypes.c_char_p]),
            "aghmn_normalize": (ctypes.c_int, [ctypes.c_char_p, S, ctypes.c_char_p, S,
                                               ctypes.POINTER(S)]),
            "aghmn_model_conversation_bytes": (S, [P]),
            "aghmn_session_store_bytes": (S, [P]),
            "aghmn_session_save_buffer": (ctypes.c_int, [P, ctypes.POINTER(P), ctypes.POINTER(S)]),
            "aghmn_session_load_buffer": (ctypes.c_int, [P, ctypes.c_char_p, S]),
            "aghmn_buffer_free": (None, [P]),
        }
        for name, (res, args) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args

    def error(self) -> str:
        """This thread's last error message."""
        return self.lib.aghmn_last_error().decode()

    def check(self, status: int) -> None:
        """Raise :class:`RuntimeError_` for a non-OK status."""
        if status != OK:
            raise RuntimeError_(status, self.error())

    def normalize(self, text: str) -> str:
        """aghmn_normalize of ``text`` (UTF-8 encoded with surrogatepass, so lone surrogates
        reach the library as the invalid UTF-8 they are)."""
        return self.normalize_bytes(text.encode("utf-8", "surrogatepass"))

    def normalize_bytes(self, data: bytes) -> str:
        """aghmn_normalize of raw bytes."""
        needed = ctypes.c_size_t()
        status = self.lib.aghmn_normalize(data, len(data), None, 0, ctypes.byref(needed))
        if status != INVALID or "too small" not in self.error():
            self.check(status)
        buf = ctypes.create_string_buffer(needed.value + 1)
        self.check(self.lib.aghmn_normalize(data, len(data), buf, len(buf), ctypes.byref(needed)))
        return buf.value.decode("ascii")

    def load(self, path: str) -> "Model":
        """A model from a file."""
        handle = ctypes.c_void_p()
        self.check(self.lib.aghmn_model_load(str(path).encode(), ctypes.byref(handle)))
        return Model(self, handle)

    def load_buffer(self, data: bytes) -> "Model":
        """A model from bytes."""
        handle = ctypes.c_void_p()
        self.check(self.lib.aghmn_model_load_buffer(data, len(data), ctypes.byref(handle)))
        return Model(self, handle)


class Model:
    """A loaded model handle."""

    def __init__(self, rt: Runtime, handle):
        self.rt, self.handle = rt, handle
        lib = rt.lib
        self.labels = [lib.aghmn_model_label(handle, i).decode()
                       for i in range(lib.aghmn_model_num_labels(handle))]
        self.window = lib.aghmn_model_window(handle)
        self.conversation_bytes = lib.aghmn_model_conversation_bytes(handle)

    def session(self, flags: int = None) -> "Session":
        """A new session over this model (aghmn_session_create, or aghmn_session_create_with
        these flags)."""
        handle = ctypes.c_void_p()
        if flags is None:
            self.rt.check(self.rt.lib.aghmn_session_create(self.handle, ctypes.byref(handle)))
        else:
            self.rt.check(self.rt.lib.aghmn_session_create_with(self.handle, flags, ctypes.byref(handle)))
        return Session(self, handle)

    def free(self) -> None:
        """aghmn_model_free."""
        self.rt.lib.aghmn_model_free(self.handle)


class Session:
    """A session handle: push, push_many, close, state files."""

    def __init__(self, model: Model, handle):
        self.model, self.rt, self.handle = model, model.rt, handle
        self.C = len(model.labels)

    def push(self, cid: str, text: str):
        """(probabilities float32 [C], index)."""
        probs = np.zeros(self.C, dtype=np.float32)
        index = ctypes.c_int64(-1)
        i, t = cid.encode(), text.encode("utf-8", "surrogatepass")
        self.rt.check(self.rt.lib.aghmn_push(
            self.handle, i, len(i), t, len(t),
            probs.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), ctypes.byref(index)))
        return probs, index.value

    def push_many(self, items):
        """(probabilities float32 [n, C], indices int64 [n]) of (id, text) pairs."""
        n = len(items)
        ids = [c.encode() for c, _ in items]
        texts = [t.encode("utf-8", "surrogatepass") for _, t in items]
        probs = np.zeros((n, self.C), dtype=np.float32)
        indices = np.zeros(n, dtype=np.int64)
        self.rt.check(self.rt.lib.aghmn_push_many(
            self.handle, n, (ctypes.c_char_p * n)(*ids), (ctypes.c_size_t * n)(*map(len, ids)),
            (ctypes.c_char_p * n)(*texts), (ctypes.c_size_t * n)(*map(len, texts)),
            probs.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            indices.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))))
        return probs, indices

    def close(self, cid: str) -> None:
        """aghmn_close."""
        i = cid.encode()
        self.rt.check(self.rt.lib.aghmn_close(self.handle, i, len(i)))

    def seen(self, cid: str) -> int:
        """aghmn_utterances_seen."""
        out = ctypes.c_int64()
        i = cid.encode()
        self.rt.check(self.rt.lib.aghmn_utterances_seen(self.handle, i, len(i), ctypes.byref(out)))
        return out.value

    def conversations(self) -> list:
        """Open conversation ids."""
        out = []
        for k in range(self.rt.lib.aghmn_num_conversations(self.handle)):
            p, n = ctypes.c_char_p(), ctypes.c_size_t()
            self.rt.check(self.rt.lib.aghmn_conversation_id(self.handle, k, ctypes.byref(p),
                                                            ctypes.byref(n)))
            out.append(ctypes.string_at(p, n.value).decode())
        return out

    def store_bytes(self) -> int:
        """aghmn_session_store_bytes."""
        return self.rt.lib.aghmn_session_store_bytes(self.handle)

    def conversation_bytes(self) -> int:
        """aghmn_session_conversation_bytes."""
        return self.rt.lib.aghmn_session_conversation_bytes(self.handle)

    def save(self, path) -> None:
        """aghmn_session_save."""
        self.rt.check(self.rt.lib.aghmn_session_save(self.handle, str(path).encode()))

    def load(self, path) -> None:
        """aghmn_session_load."""
        self.rt.check(self.rt.lib.aghmn_session_load(self.handle, str(path).encode()))

    def save_buffer(self) -> bytes:
        """aghmn_session_save_buffer, copied into bytes (the library's buffer is then freed)."""
        data, size = ctypes.c_void_p(), ctypes.c_size_t()
        self.rt.check(self.rt.lib.aghmn_session_save_buffer(self.handle, ctypes.byref(data),
                                                            ctypes.byref(size)))
        try:
            return ctypes.string_at(data, size.value)
        finally:
            self.rt.lib.aghmn_buffer_free(data)

    def load_buffer(self, state: bytes) -> None:
        """aghmn_session_load_buffer."""
        self.rt.check(self.rt.lib.aghmn_session_load_buffer(self.handle, state, len(state)))

    def free(self) -> None:
        """aghmn_session_free."""
        self.rt.lib.aghmn_session_free(self.handle)
