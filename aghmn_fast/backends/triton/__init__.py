"""The "triton" backend: Triton kernels of the AGRU and window-GRU recurrences.

Registered with :mod:`aghmn_fast.ops` when ``triton`` imports and either a CUDA device exists
(devices ("cuda",), priority 5) or Triton's CPU interpreter is on (``TRITON_INTERPRET=1``, as in
the test suite: devices ("cuda", "cpu") at priority -1, below the reference, so an interpreted
backend is never picked by default). Otherwise importing this package raises ImportError, whose
reason :func:`aghmn_fast.backend_errors` reports.

Module-level switches (re-exported from ``_common``): :func:`set_allow_tf32` (TF32 tensor cores
in fp32 recurrent matmuls; off by default, ``AGHMN_TRITON_TF32=1`` at import),
:func:`use_config` / :class:`KernelConfig` (force a launch configuration).
"""
from __future__ import annotations

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except Exception as exc:  # any failure to import means no backend, reported by the dispatcher
    raise ImportError(f"triton cannot be imported ({type(exc).__name__}: {exc})") from exc

import os

import torch

from ._common import KernelConfig, allow_tf32, interpreting, set_allow_tf32, use_config

# AGHMN_TRITON_COMPILE_ONLY=1: import the kernels on a machine without a GPU to compile them
# offline (see compile_check); nothing is registered then.
_COMPILE_ONLY = os.environ.get("AGHMN_TRITON_COMPILE_ONLY", "0") == "1"

if not interpreting() and not torch.cuda.is_available() and not _COMPILE_ONLY:
    raise ImportError("the Triton backend needs a CUDA device (or TRITON_INTERPRET=1 to run "
                      "its kernels on CPU tensors in Triton's interpreter)")

from ... import ops as _dispatch  # noqa: E402
from .ops import TRITON_OPS, agru, memory_bank  # noqa: E402
# Not re-exported: the name would shadow the kernels' submodule `window_gru` on this package.
from .ops import window_gru as _window_gru  # noqa: E402

__all__ = ["agru", "memory_bank", "TRITON_OPS", "KernelConfig", "use_config", "set_allow_tf32",
           "allow_tf32", "interpreting"]

if _COMPILE_ONLY and not torch.cuda.is_available() and not interpreting():
    pass
elif interpreting():
    _dispatch.register_backend("triton", agru=agru, memory_bank=memory_bank,
                               devices=("cuda", "cpu"), priority=-1, window_gru=_window_gru)
else:
    _dispatch.register_backend("triton", agru=agru, memory_bank=memory_bank, devices=("cuda",),
                               priority=5, window_gru=_window_gru)
