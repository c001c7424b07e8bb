"""aghmn_fast: fast, faithful AGHMN for real-time emotion recognition in conversations.

Public entry points:

- :func:`agru`, :func:`memory_bank`, :func:`window_gru`: the ops, with ``backend=None`` dispatch;
- :func:`backends`: which backends are available;
- :mod:`aghmn_fast.reference`: the pure-PyTorch references;
- :mod:`aghmn_fast.models`: the AGHMN model and its variants;
- :class:`StreamingRecognizer`: real-time recognition, many conversations at once;
- :mod:`aghmn_fast.nn`: ``AGRU``, a ``torch.nn.GRU``-style attention GRU layer.
"""
__version__ = "0.1.0"

_OPS = ("agru", "backend_errors", "backends", "memory_bank", "window_gru")


def __getattr__(name):
    # Loaded on first use, torch included (the ops import it before the compiled extension): a
    # process that needs none of it, such as `aghmn-fast serve` of a .aghmn model on the native
    # runtime, never imports torch.
    if name in _OPS:
        from . import ops
        return getattr(ops, name)
    if name == "set_nan_check":
        from .ops.validation import set_nan_check
        return set_nan_check
    if name == "StreamingRecognizer":
        from .streaming import StreamingRecognizer
        return StreamingRecognizer
    if name in ("nn", "models", "streaming", "data", "train", "reference", "ops"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'aghmn_fast' has no attribute {name!r}")

__all__ = ["StreamingRecognizer", "agru", "memory_bank", "window_gru", "backends", "backend_errors", "reference", "set_nan_check"]
