"""aghmn_fast: fast, faithful AGHMN for real-time emotion recognition in conversations.

Public entry points:

- :func:`agru`, :func:`memory_bank`, :func:`window_gru`: the ops, with ``backend=None`` dispatch;
- :func:`backends`: which backends are available;
- :mod:`aghmn_fast.reference`: the pure-PyTorch references;
- :mod:`aghmn_fast.models`: the AGHMN model and its variants;
- :class:`StreamingRecognizer`: real-time recognition, many conversations at once;
- :mod:`aghmn_fast.nn`: ``AGRU``, a ``torch.nn.GRU``-style attention GRU layer.
"""
import torch  # noqa: F401  (must be imported before the compiled extension)

from . import reference
from .ops import agru, backend_errors, backends, memory_bank, window_gru
from .ops.validation import set_nan_check

__version__ = "0.1.0"


def __getattr__(name):
    # Loaded on first use: the model, data and streaming layers are not needed by the ops.
    if name == "StreamingRecognizer":
        from .streaming import StreamingRecognizer
        return StreamingRecognizer
    if name in ("nn", "models", "streaming", "data", "train"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'aghmn_fast' has no attribute {name!r}")

__all__ = ["StreamingRecognizer", "agru", "memory_bank", "window_gru", "backends", "backend_errors", "reference", "set_nan_check"]
