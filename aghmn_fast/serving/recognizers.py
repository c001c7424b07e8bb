"""The one recognizer interface the serving code depends on, and the choice of engine.

Two engines implement :class:`Recognizer`: :class:`aghmn_fast.streaming.StreamingRecognizer`
(PyTorch, a checkpoint of ``aghmn-fast train``) and ``aghmn_runtime.StreamingRecognizer`` (the
native runtime of the ``aghmn-fast-runtime`` wheel, a model file of ``aghmn-fast export``).
:func:`load_recognizer` picks one by the file's first bytes; on the runtime torch is never
imported, so a server of a ``.aghmn`` file starts in milliseconds and stays small.
"""
from __future__ import annotations

import os
from typing import Hashable, Iterable, List, Optional, Protocol, Tuple, runtime_checkable

RUNTIME_MAGIC = b"AGHMNRT\0"   # the first bytes of a .aghmn model file (docs/RUNTIME.md)


@runtime_checkable
class Recognizer(Protocol):
    """What serving needs of a streaming recognizer (both engines provide it).

    ``push_many`` returns one prediction per item, in order, each with ``conversation_id``,
    ``index``, ``label``, ``label_id``, ``probabilities`` (label -> float) and ``latency_ms``;
    it validates every item before any state changes (``ValueError`` / ``TypeError``).
    """
    window: int
    label_names: List[str]

    def push(self, conversation_id: Hashable, utterance_text: str):
        """The prediction for the next utterance of a conversation."""

    def push_many(self, items: Iterable[Tuple[Hashable, str]]) -> list:
        """Predictions for (conversation_id, utterance_text) items, in order."""

    def close(self, conversation_id: Hashable) -> None:
        """Forget a conversation (``KeyError`` if unknown)."""

    def utterances_seen(self, conversation_id: Hashable) -> int:
        """Utterances pushed to a conversation (0 if unknown)."""

    def save_state(self, path: str) -> None:
        """Write every open conversation's state."""

    def load_state(self, path: str) -> None:
        """Replace the conversations with a saved state of the same model."""


def is_runtime_model(path: str) -> bool:
    """Whether ``path`` is a model file of ``aghmn-fast export`` (by its magic bytes); False
    for anything that cannot be read as a file (the checkpoint loader then names the problem)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(RUNTIME_MAGIC)) == RUNTIME_MAGIC
    except OSError:
        return False


def load_recognizer(path, backend: Optional[str] = None, threads: int = 1,
                    precision: str = "fp32") -> Recognizer:
    """The recognizer of a checkpoint (torch) or of an exported ``.aghmn`` model (the native
    runtime; ``backend`` must then be None and ``threads`` is ignored: the runtime computes a
    push on the calling thread). A list of two or more checkpoints is an ensemble
    (:class:`~aghmn_fast.streaming.EnsembleRecognizer`, torch checkpoints only). ``precision``:
    the torch recognizer's (``"fp32"`` or ``"bf16"``); a ``.aghmn`` model carries its own.

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for an invalid one, a
    ``backend`` or a precision other than fp32 given with a ``.aghmn`` model, ``ImportError`` when the runtime wheel is needed
    and not installed.
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
    else:
        path = paths[0]
    if len(paths) == 1 and is_runtime_model(path):
        if backend is not None:
            raise ValueError(f"--backend {backend!r} applies to checkpoints; {path} is a .aghmn "
                             "model, served by the native runtime")
        if precision != "fp32":
            raise ValueError(f"--precision {precision!r} applies to checkpoints; {path} is a .aghmn "
                             "model, which carries its precision (aghmn-fast export --precision)")
        try:
            import aghmn_runtime
        except ImportError:
            raise ImportError(f"{path} is a .aghmn model: serving it needs the aghmn-fast-runtime "
                              "wheel (see the README, Deployment)") from None
        return aghmn_runtime.StreamingRecognizer(path)
    import torch

    from ..streaming import StreamingRecognizer
    torch.set_num_threads(threads)
    return StreamingRecognizer.from_checkpoint(path if len(paths) == 1 else paths, backend=backend,
                                               precision=precision)


__all__ = ["Recognizer", "RUNTIME_MAGIC", "is_runtime_model", "load_recognizer"]
