"""Pure-PyTorch reference implementations of the two hot recurrences of AGHMN (public API).

Each op's reference is written once, next to its op (``aghmn_fast/ops/<op>/reference.py``);
this module re-exports them with argument validation, so that a direct call with bad input
raises a clear error naming the argument (the same checks as :mod:`aghmn_fast.ops`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from torch import Tensor

from .ops.agru.reference import agru_cell, agru_ref
from .ops.validation import check_agru_args, check_memory_bank_args, check_window_gru_args
from .ops.window_gru.reference import gru_cell, memory_bank_ref, window_gru_ref

__all__ = ["agru", "memory_bank", "window_gru", "agru_cell", "gru_cell"]


def agru(x: Tensor, attn: Tensor, weight_ih: Tensor, weight_hh: Tensor,
         bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
         h0: Optional[Tensor] = None, reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """Validated :func:`aghmn_fast.ops.agru.reference.agru_ref` (its docstring: the contract)."""
    check_agru_args(x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0)
    return agru_ref(x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse)


def memory_bank(utterances: Tensor, windows: Tensor, flat_weights: Sequence[Tensor]) -> Tensor:
    """Validated :func:`aghmn_fast.ops.window_gru.reference.memory_bank_ref`."""
    check_memory_bank_args(utterances, windows, flat_weights)
    return memory_bank_ref(utterances, windows, flat_weights)


def window_gru(proj: Tensor, pad_proj: Tensor, weight_hh: Tensor, bias_hh: Tensor,
               windows: Tensor) -> Tensor:
    """Validated :func:`aghmn_fast.ops.window_gru.reference.window_gru_ref`."""
    check_window_gru_args(proj, pad_proj, weight_hh, bias_hh, windows)
    return window_gru_ref(proj, pad_proj, weight_hh, bias_hh, windows)
