"""The "cpu" backend: the compiled C++ kernels (``csrc/ops.cpp``) behind the shared glue.

Importing it loads the extension (ImportError when it is not built; the dispatcher then reports
the reason in :func:`aghmn_fast.backend_errors` and falls back to the reference).
"""
from .. import ops
from . import extension_ops

ops.register_backend("cpu", agru=extension_ops.agru, memory_bank=extension_ops.memory_bank,
                     devices=("cpu",), priority=10)
