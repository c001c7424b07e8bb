"""The "cpu" backend: the compiled C++ kernels (``csrc/ops.cpp``) behind the shared glue.

Importing it loads the extension (ImportError when it is not built; the dispatcher then reports
the reason in :func:`aghmn_fast.backend_errors` and falls back to the reference). The kernels
run float32 and float64; other dtypes (float16, bfloat16 on the CPU) go to the reference, so
callers of ``backend=None`` never see the kernels' dtype error.
"""
import torch

from .. import ops, reference
from . import extension_ops

_DTYPES = (torch.float32, torch.float64)


def agru(x, attn, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, reverse=False):
    """Attention GRU on the C++ kernels; see :func:`aghmn_fast.reference.agru`."""
    fn = extension_ops.agru if x.dtype in _DTYPES else reference.agru
    return fn(x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse)


def memory_bank(utterances, windows, flat_weights):
    """Memory bank on the C++ kernels; see :func:`aghmn_fast.reference.memory_bank`."""
    fn = extension_ops.memory_bank if utterances.dtype in _DTYPES else reference.memory_bank
    return fn(utterances, windows, flat_weights)


def window_gru(proj, pad_proj, weight_hh, bias_hh, windows):
    """Window GRU from precomputed projections on the C++ kernels (differentiable);
    see :func:`aghmn_fast.reference.window_gru`."""
    fn = extension_ops.window_gru if proj.dtype in _DTYPES else reference.window_gru
    return fn(proj, pad_proj, weight_hh, bias_hh, windows)


ops.register_backend("cpu", agru=agru, memory_bank=memory_bank, devices=("cpu",), priority=10,
                     window_gru=window_gru)
