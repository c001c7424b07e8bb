"""The "cuda" backend: the fused CUDA kernels (``csrc/cuda/``) behind the shared glue.

Registered only when the compiled extension loads and holds CUDA kernels of the ops (it is built
with them when torch has CUDA and a CUDA toolkit is found); otherwise importing this module raises
ImportError with the reason, which :func:`aghmn_fast.backend_errors` reports.

The kernels run float32 and float64, keep ``weight_hh`` in shared memory and fall back to reading
it from global memory when it does not fit; only a hidden size whose per-step buffers exceed the
device's shared memory is refused (NotImplementedError with "unsupported size"). Such calls, and
other dtypes (float16, bfloat16), are passed on to the next backend for CUDA tensors (Triton if
available, else the reference), so callers never see them.
"""
from __future__ import annotations

import torch

from .. import _extension, ops

_OP = "aghmn_fast::agru_forward"
_DTYPES = (torch.float32, torch.float64)


def _require_cuda_kernels() -> None:
    try:
        _extension.load()
    except ImportError as exc:
        raise ImportError(f"the compiled extension is not available ({exc})") from exc
    if not torch._C._dispatch_has_kernel_for_dispatch_key(_OP, "CUDA"):
        why = ("torch has no CUDA" if torch.version.cuda is None
               else "it was built without CUDA sources (no CUDA toolkit found, or AGHMN_NO_CUDA=1)")
        raise ImportError(f"the compiled extension has no CUDA kernels: {why}")


_require_cuda_kernels()

from . import extension_ops  # noqa: E402  (loads the extension's autograd and fake rules)


def _fallback(device: torch.device) -> ops.Backend:
    for name in ops.backends(device.type):
        if name != "cuda":
            return ops.resolve_backend(name, device)
    raise RuntimeError("no fallback backend for CUDA tensors")  # "reference" always exists


def _call(kind: str, first: torch.Tensor, args: tuple):
    """Run op `kind` on the CUDA kernels, or on the next backend when they cannot take it."""
    if first.dtype in _DTYPES:
        try:
            return getattr(extension_ops, kind)(*args)
        except NotImplementedError as exc:
            if "unsupported size" not in str(exc):
                raise
    return getattr(_fallback(first.device), kind)(*args)


def agru(x, attn, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, reverse=False):
    """Attention GRU on the CUDA kernels; see :func:`aghmn_fast.reference.agru`."""
    return _call("agru", x, (x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse))


def memory_bank(utterances, windows, flat_weights):
    """Fusion-GRU memory bank on the CUDA kernels; see :func:`aghmn_fast.reference.memory_bank`."""
    return _call("memory_bank", utterances, (utterances, windows, flat_weights))


def window_gru(proj, pad_proj, weight_hh, bias_hh, windows):
    """Window GRU from projections on the CUDA kernels; see :func:`aghmn_fast.reference.window_gru`."""
    return _call("window_gru", proj, (proj, pad_proj, weight_hh, bias_hh, windows))


# The glue's window_gru (from precomputed projections) is optional; without it the dispatcher
# uses the reference loop for that entry point.
ops.register_backend("cuda", agru=agru, memory_bank=memory_bank, devices=("cuda",), priority=20,
                     window_gru=window_gru if hasattr(extension_ops, "window_gru") else None)
