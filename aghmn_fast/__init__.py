"""aghmn_fast: fast, faithful AGHMN for real-time emotion recognition in conversations.

Public entry points:

- :func:`agru`, :func:`memory_bank`: the two hot ops, with ``backend=None`` dispatch;
- :func:`backends`: which backends are available;
- :mod:`aghmn_fast.reference`: the pure-PyTorch references;
- :mod:`aghmn_fast.models`: the AGHMN model and its variants.
"""
import torch  # noqa: F401  (must be imported before the compiled extension)

from . import backends  # a package that is also the callable ``backends(device=None)``
from . import reference
from ._validation import set_nan_check
from .ops import agru, backend_errors, memory_bank, window_gru

__version__ = "0.1.0"
__all__ = ["agru", "memory_bank", "window_gru", "backends", "backend_errors", "reference", "set_nan_check"]
