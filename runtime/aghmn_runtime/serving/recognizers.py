"""The one recognizer interface the serving code depends on, and the choice of recognizer.

Two recognizers implement :class:`Recognizer`: ``aghmn_runtime.StreamingRecognizer`` (the native
runtime of this distribution, a model file of ``aghmn-fast export``) and
:class:`aghmn_fast.streaming.StreamingRecognizer` (PyTorch, a checkpoint of ``aghmn-fast train``),
an optional plug-in: :data:`TORCH_PLUGIN`, a module of the ``aghmn-fast`` distribution, imported
only when a checkpoint is served. :func:`load_recognizer` picks the recognizer by the file's first
bytes; on the runtime torch is never imported, so a server of a ``.aghmn`` file starts in
milliseconds, stays small and installs without torch (``aghmn-fast-runtime[serve]``).
"""
from __future__ import annotations

import importlib
import os
from typing import Iterable, List, Optional, Protocol, Tuple

#: The torch recognizer's plug-in: a module with ``load_recognizer(paths, backend, threads)``.
TORCH_PLUGIN = "aghmn_fast.serving_plugin"


class Recognizer(Protocol):
    """What serving needs of a streaming recognizer (both recognizers provide it; the serving
    tests run on both: ``tests/serving_fixtures.py``, ``RECOGNIZERS``).

    Conversation ids are ``str`` (the runtime takes nothing else; serving's own scratch
    conversations, for replays, are str ids no client can send). ``push_many`` returns one
    prediction per item, in order, each with ``conversation_id``, ``index``, ``label``,
    ``label_id``, ``probabilities`` (label -> float) and ``latency_ms``; it validates every item
    before any state changes (``ValueError`` / ``TypeError``). ``bytes_per_conversation`` is the
    state one open conversation holds, ``store_bytes`` what the ring store holds now (it shrinks
    when most conversations are closed).
    """
    window: int
    label_names: List[str]
    bytes_per_conversation: int
    store_bytes: int

    def push(self, conversation_id: str, utterance_text: str):
        """The prediction for the next utterance of a conversation."""

    def push_many(self, items: Iterable[Tuple[str, str]]) -> list:
        """Predictions for (conversation_id, utterance_text) items, in order."""

    def close(self, conversation_id: str) -> None:
        """Forget a conversation (``KeyError`` if unknown)."""

    def utterances_seen(self, conversation_id: str) -> int:
        """Utterances pushed to a conversation (0 if unknown)."""


def is_runtime_model(path: str) -> bool:
    """Whether ``path`` is a model file of ``aghmn-fast export`` (by its magic bytes); False
    for anything that cannot be read as a file (the checkpoint loader then names the problem).
    The magic is the runtime header's (``aghmn_runtime.MODEL_MAGIC``), its one definition."""
    from .. import MODEL_MAGIC
    try:
        with open(path, "rb") as f:
            return f.read(len(MODEL_MAGIC)) == MODEL_MAGIC
    except OSError:
        return False


def load_recognizer(path, backend: Optional[str] = None, threads: int = 1,
                    precision: str = "fp32", projection_cache: bool = True) -> Recognizer:
    """The recognizer of an exported ``.aghmn`` model (the native runtime; ``backend`` must then
    be None and ``threads`` is ignored: the runtime computes a push on the calling thread) or of
    a checkpoint (torch, through the :data:`TORCH_PLUGIN` plug-in of ``aghmn-fast``). A list of
    two or more checkpoints is an ensemble (torch checkpoints only). ``projection_cache`` False:
    ring stores of reader vectors only (either recognizer; not an ensemble).

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for an invalid one or a
    ``backend`` given with a ``.aghmn`` model, ``ImportError`` (one line naming what to install
    or run) when a checkpoint is given and ``aghmn-fast`` is not installed.
    """
    paths = [path] if isinstance(path, str) else list(path)
    for p in paths:
        if not os.path.exists(p):   # the checkpoint loader's message, without importing torch
            raise FileNotFoundError(f"checkpoint not found: {p}")
    if len(paths) > 1:
        native = [p for p in paths if is_runtime_model(p)]
        if native:
            raise ValueError(f"an ensemble takes checkpoints of aghmn-fast train; {native[0]} is "
                             "a .aghmn model (the native runtime serves one model)")
    if len(paths) == 1 and is_runtime_model(paths[0]):
        if backend is not None:
            raise ValueError(f"--backend {backend!r} applies to checkpoints; {paths[0]} is a .aghmn "
                             "model, served by the native runtime")
        if precision != "fp32":
            raise ValueError(f"--precision {precision!r} applies to checkpoints; {paths[0]} is a .aghmn "
                             "model, which carries its precision (aghmn-fast export --precision)")
        from .. import StreamingRecognizer
        return StreamingRecognizer(paths[0], projection_cache=projection_cache)
    return load_torch_plugin(paths[0]).load_recognizer(
        paths[0] if len(paths) == 1 else paths, backend=backend, threads=threads, precision=precision,
        projection_cache=projection_cache)


def load_torch_plugin(path: str):
    """The torch recognizer's plug-in module; an ``ImportError`` naming the two ways out (install
    ``aghmn-fast``, or export the checkpoint to a ``.aghmn`` file) when it is not installed."""
    try:
        return importlib.import_module(TORCH_PLUGIN)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("aghmn_fast", "torch"):
            raise   # aghmn-fast is there, and one of its own imports failed: its message
        raise ImportError(
            f"{path} is not a .aghmn model file, so it is served as a checkpoint of aghmn-fast "
            "train, which needs aghmn-fast (with torch) installed; or export it with "
            f"`aghmn-fast export --checkpoint {path} --out model.aghmn` and serve that file "
            "without torch", name=exc.name) from None


__all__ = ["Recognizer", "TORCH_PLUGIN", "is_runtime_model", "load_recognizer", "load_torch_plugin"]
