"""The "cpu" backend: the compiled C++ kernels (``csrc/ops.cpp``) behind the shared glue.

Importing it loads the extension (ImportError when it is not built; the dispatcher then reports
the reason in :func:`aghmn_fast.backend_errors` and falls back to the reference).
"""
import torch

from .. import ops
from . import extension_ops


def window_gru(proj, pad_proj, weight_hh, bias_hh, windows):
    """Window GRU from precomputed projections on the C++ kernels (differentiable);
    see :func:`aghmn_fast.reference.window_gru`."""
    return torch.ops.aghmn_fast.window_gru_forward(
        proj.contiguous(), pad_proj.contiguous(), weight_hh.contiguous(), bias_hh.contiguous(),
        windows.contiguous())[0]


ops.register_backend("cpu", agru=extension_ops.agru, memory_bank=extension_ops.memory_bank,
                     devices=("cpu",), priority=10, window_gru=window_gru)
