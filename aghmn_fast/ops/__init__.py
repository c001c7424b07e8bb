"""The ops of aghmn_fast: ``agru``, ``memory_bank`` and ``window_gru``, each validated once and
dispatched once.

Each op lives in its own folder, its reference, autograd and Triton kernels side by side
(``ops/agru/``, ``ops/window_gru/``; the memory bank is the window GRU plus projections and a
residual). A call is validated here (:mod:`.validation`), then :mod:`.registry` picks an
implementation: ``backend=None`` picks the fastest available for the tensors' device (CPU:
"cpu" then "reference"; CUDA: per shape class from :data:`CUDA_CHOICE`, else "cuda", "triton",
then "reference"), and a call the chosen implementation's capability check refuses goes to the
next one. "cpu" and "cuda" both name the compiled extension, whose CPU or CUDA kernel the torch
dispatcher picks. See docs/ARCHITECTURE.md.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from torch import Tensor

from .registry import (CUDA_CHOICE, LATENCY_ROWS, Backend, backend_errors, backends, call,
                       register_backend, resolve_backend)
from .validation import check_agru_args, check_memory_bank_args, check_window_gru_args

__all__ = ["agru", "memory_bank", "window_gru", "backends", "register_backend", "backend_errors",
           "resolve_backend", "Backend", "CUDA_CHOICE", "LATENCY_ROWS"]


def agru(x: Tensor, attn: Tensor, weight_ih: Tensor, weight_hh: Tensor,
         bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
         h0: Optional[Tensor] = None, reverse: bool = False,
         backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Attention GRU; see :func:`aghmn_fast.reference.agru` for the contract.

    ``backend``: "reference", "cpu", "triton", "cuda" ("extension": "cpu" or "cuda" by the
    tensors' device), or None for the fastest available one.
    """
    B = check_agru_args(x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0)[0]
    return call("agru", backend, B, (x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse))


def memory_bank(utterances: Tensor, windows: Tensor, flat_weights: Sequence[Tensor],
                backend: Optional[str] = None) -> Tensor:
    """Fusion-GRU memory over windows; see :func:`aghmn_fast.reference.memory_bank`.

    ``backend``: as for :func:`agru`.
    """
    Q = check_memory_bank_args(utterances, windows, flat_weights)[1]
    return call("memory_bank", backend, Q, (utterances, windows, flat_weights))


def window_gru(proj: Tensor, pad_proj: Tensor, weight_hh: Tensor, bias_hh: Tensor, windows: Tensor,
               backend: Optional[str] = None) -> Tensor:
    """The window GRU from precomputed input projections; see
    :func:`aghmn_fast.reference.window_gru`. Returns the states [D, Q, K, H].

    ``backend``: as for :func:`agru`.
    """
    Q = check_window_gru_args(proj, pad_proj, weight_hh, bias_hh, windows)[2]
    return call("window_gru", backend, Q, (proj, pad_proj, weight_hh, bias_hh, windows))
