"""aghmn_fast: fast, faithful AGHMN for real-time emotion recognition in conversations.

Public entry points:

- :func:`agru`, :func:`memory_bank`, :func:`window_gru`: the ops, with ``backend=None`` dispatch;
- :func:`backends`: which backends are available;
- :mod:`aghmn_fast.reference`: the pure-PyTorch references;
- :mod:`aghmn_fast.models`: the AGHMN model and its variants;
- :class:`StreamingRecognizer`: real-time recognition, many conversations at once;
- :mod:`aghmn_fast.nn`: ``AGRU``, a ``torch.nn.GRU``-style attention GRU layer.
"""
import importlib

# Everything is loaded on first use (PEP 562), so that `import aghmn_fast.cli` takes milliseconds
# and the command line owns Ctrl-C before torch's ~1.5 s import starts. The ops (and with them
# torch.ops.aghmn_fast.*) are registered by the first use of any name below or `import
# aghmn_fast.ops`; the ops module imports torch before the compiled extension.
_FROM_OPS = ("agru", "memory_bank", "window_gru", "backends", "backend_errors")
_SUBMODULES = ("ops", "reference", "nn", "models", "streaming", "data", "training")


def __getattr__(name):
    if name == "__version__":  # on first use: a file read, off the import path
        from ._version import version
        globals()["__version__"] = version()
        return globals()["__version__"]
    if name in _FROM_OPS:
        return getattr(importlib.import_module(".ops", __name__), name)
    if name == "set_nan_check":
        return importlib.import_module(".ops.validation", __name__).set_nan_check
    if name == "StreamingRecognizer":
        return importlib.import_module(".streaming", __name__).StreamingRecognizer
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'aghmn_fast' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES) | {"__version__"})


__all__ = ["StreamingRecognizer", "agru", "memory_bank", "window_gru", "backends", "backend_errors", "reference", "set_nan_check"]
