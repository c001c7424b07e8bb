"""aghmn_runtime: AGHMN streaming emotion recognition from an exported ``.aghmn`` model file, on
the native runtime (C++ core and C API, no PyTorch). Its only dependency is numpy.

    rec = aghmn_runtime.StreamingRecognizer("model.aghmn")
    p = rec.push("conv-1", "Hi there!")        # Prediction(label=..., probabilities=...)

The API mirrors ``aghmn_fast.StreamingRecognizer`` (push, push_many, close, utterances_seen,
conversations, save_state / load_state, labels, window) and adds :meth:`push_many_arrays`
(numpy arrays out, no per-item objects), ``save_state_bytes`` / ``load_state_bytes`` (the state
in memory) and :func:`normalize`. Conversation ids are str.
Errors are Python exceptions carrying the C API's message: ``ValueError`` (bad input, invalid
UTF-8, empty text, a bad model or state file), ``KeyError`` (unknown conversation),
``OSError`` (files), ``TypeError`` (wrong types, wrong array dtype).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

__all__ = ["MODEL_FORMAT_VERSION", "MODEL_MAGIC", "Prediction", "StreamingRecognizer", "normalize", "__version__"]

# Constants of the runtime's header compiled into the native module, which is imported on first
# use (see _native_module): __version__ (AGHMN_RUNTIME_VERSION_STRING), MODEL_MAGIC (the 8 first
# bytes of a model file, AGHMN_MODEL_MAGIC) and MODEL_FORMAT_VERSION (the format it reads).
_HEADER_CONSTANTS = ("__version__", "MODEL_MAGIC", "MODEL_FORMAT_VERSION")


def __getattr__(name: str):
    if name in _HEADER_CONSTANTS:
        return getattr(_native_module(), name)
    raise AttributeError(f"module 'aghmn_runtime' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_HEADER_CONSTANTS))


@dataclasses.dataclass
class Prediction:
    """The recognizer's answer for one utterance (as ``aghmn_fast.streaming.Prediction``)."""
    conversation_id: str
    index: int            # position of the utterance in its conversation (0-based)
    label: str
    label_id: int
    probabilities: Dict[str, float]
    latency_ms: float     # wall time of the push / push_many call that produced it

    def to_dict(self) -> dict:
        """JSON-ready form (the ``aghmn-fast stream`` output line)."""
        return {"id": self.conversation_id, "index": self.index, "label": self.label,
                "probabilities": self.probabilities, "latency_ms": round(self.latency_ms, 4)}


def _native_module():
    # imported on first use: `import aghmn_runtime.serving` (the server, its CLI and tests of a
    # torch checkpoint) needs no compiled module until a .aghmn model is loaded
    from . import _native
    return _native


def normalize(text: str) -> str:
    """The authors' text normalisation (``aghmn_fast.data.text.normalize``): lower case, accents
    stripped (NFD), every character outside [a-z!?] a space, spaces collapsed and stripped."""
    return _native_module().normalize(text)


def _existing_file(path, what: str) -> str:
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"{what} must be a str or os.PathLike path, got {type(path).__name__}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    return path


class StreamingRecognizer:
    """Streams utterances of many live conversations through an exported ``.aghmn`` model.

    Args:
        path: the model file written by ``aghmn-fast export``.

        projection_cache: True (default): the ring store keeps each stored utterance's fusion input
            projections; False: it keeps the reader vectors only and every push recomputes the
            window's projections, bit for bit the same probabilities and state files, for
            1 / (1 + 3 * directions) of the bytes per conversation (a seventh for BiF) and more
            work per push (docs/results/serving-memory-compact.md).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not a
    valid model (wrong magic, format version, checksum, bounds); ``TypeError`` for a
    ``projection_cache`` that is not a bool.

    One recognizer serialises its calls (a lock around the native session), so sharing it
    between threads is safe but not parallel; give each thread its own for parallelism (they
    may load the same file). :meth:`release` (or a ``with`` block) frees the native memory now.
    """

    def __init__(self, path, *, projection_cache: bool = True):
        if not isinstance(projection_cache, bool):
            raise TypeError(f"projection_cache must be a bool, got {type(projection_cache).__name__}")
        native = _native_module()
        self._model = native.Model(_existing_file(path, "model file"))
        self._session = native.Session(self._model, projection_cache=projection_cache)
        self.projection_cache: bool = projection_cache
        self.labels: List[str] = self._model.labels
        self.label_names = self.labels   # the name aghmn_fast's recognizer uses
        self.window: int = self._model.window
        # "fp32" or "bf16": the model file's storage precision (its ring store's too).
        self.precision: str = self._model.precision

    @classmethod
    def from_file(cls, path, *, projection_cache: bool = True) -> "StreamingRecognizer":
        """The same as ``StreamingRecognizer(path, projection_cache=...)``."""
        return cls(path, projection_cache=projection_cache)

    # ---- pushes --------------------------------------------------------------------------------
    def push(self, conversation_id: str, utterance_text: str) -> Prediction:
        """Classify the next utterance of a conversation (opened on its first utterance)."""
        start = time.perf_counter()
        probs, index = self._session.push(conversation_id, utterance_text)
        prediction = self._prediction(conversation_id, index, probs)
        prediction.latency_ms = (time.perf_counter() - start) * 1e3
        return prediction

    def push_many(self, items: Iterable[Tuple[str, str]]) -> List[Prediction]:
        """Classify a batch of (conversation_id, utterance_text) pairs.

        A conversation may appear several times; its utterances are then taken in order. Every
        item is validated before any state changes.
        """
        start = time.perf_counter()
        if not isinstance(items, (list, tuple)):
            items = list(items)
        probs, indices = self._session.push_items(items)
        out = [self._prediction(cid, index, p) for (cid, _), index, p
               in zip(items, indices.tolist(), probs)]
        latency = (time.perf_counter() - start) * 1e3
        for p in out:
            p.latency_ms = latency
        return out

    def push_many_arrays(self, ids: Sequence[str], texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """``push_many`` without per-item objects: ``ids`` and ``texts`` are parallel sequences of
        str (lists, tuples or numpy arrays of dtype str/object); returns (probabilities float32
        [n, C], indices int64 [n])."""
        return self._session.push_many(ids, texts)

    # ---- conversations -------------------------------------------------------------------------
    def close(self, conversation_id: str) -> None:
        """Forget a conversation and free its slots. Unknown ids raise ``KeyError``."""
        self._session.close(conversation_id)

    def utterances_seen(self, conversation_id: str) -> int:
        """How many utterances of the conversation were pushed (0 if unknown)."""
        return self._session.utterances_seen(conversation_id)

    def conversations(self) -> List[str]:
        """Ids of the open conversations."""
        return self._session.conversations()

    # ---- memory --------------------------------------------------------------------------------
    @property
    def bytes_per_conversation(self) -> int:
        """Bytes of state one open conversation holds (its K ring slots; without the projection
        cache the reader vectors only), as ``aghmn_fast.StreamingRecognizer.bytes_per_conversation``."""
        return self._session.conversation_bytes

    @property
    def store_bytes(self) -> int:
        """Bytes the ring store holds now: its capacity times :attr:`bytes_per_conversation`. It
        doubles when full and halves (giving the memory back) once at most a quarter is open."""
        return self._session.store_bytes

    def save_state(self, path) -> None:
        """Write every open conversation's state, atomically (loadable with :meth:`load_state`
        of a recognizer of the same model)."""
        self._session.save(os.fspath(path))

    def load_state(self, path) -> None:
        """Replace all conversations with those saved by :meth:`save_state` of the same model.

        A missing file raises ``FileNotFoundError``; a corrupted state or one saved by another
        model raises ``ValueError`` and leaves the current state untouched.
        """
        self._session.load(_existing_file(path, "state file"))

    def save_state_bytes(self) -> bytes:
        """Every open conversation's state as bytes: what :meth:`save_state` writes to a file,
        for a store of one's own (a database, a cache, another process)."""
        return self._session.save_bytes()

    def load_state_bytes(self, state) -> None:
        """Replace all conversations with ``state`` (bytes, bytearray or memoryview of
        :meth:`save_state_bytes` or of a :meth:`save_state` file of a recognizer of the same
        model). A corrupted or truncated state, or one of another model, raises ``ValueError``
        and leaves the current state untouched; a non bytes-like ``state`` raises ``TypeError``.
        """
        self._session.load_bytes(state)

    # ---- lifetime ------------------------------------------------------------------------------
    def release(self) -> None:
        """Free the native session now (later calls raise ``ValueError``)."""
        self._session.release()

    def __enter__(self) -> "StreamingRecognizer":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _prediction(self, cid, index: int, probs) -> Prediction:
        p = probs.tolist()
        best = max(range(len(p)), key=p.__getitem__)
        return Prediction(cid, index, self.labels[best], best, dict(zip(self.labels, p)), 0.0)
