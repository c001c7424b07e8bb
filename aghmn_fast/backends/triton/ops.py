"""The Triton kernels as ``torch.ops.aghmn_fast.triton_*`` custom ops, with autograd.

Each op is a ``torch.library.triton_op`` (so ``torch.compile`` traces into the kernels and
fake tensors come for free) with the schema and semantics of the matching op in docs/OPS.md.
The autograd rules, the time-parallel GEMMs and the public ``agru`` / ``memory_bank`` come from
the glue shared by all fused backends (:mod:`aghmn_fast.backends.glue`).
"""
from __future__ import annotations

from typing import Tuple

from torch import Tensor
from torch.library import triton_op

from ..glue import OpSet, make_backend, make_window_gru, register_autograd_rules
from .agru import agru_backward, agru_forward
from .window_gru import window_gru_backward, window_gru_forward

__all__ = ["triton_agru_forward", "triton_agru_backward", "triton_window_gru_forward",
           "triton_window_gru_backward", "TRITON_OPS", "agru", "memory_bank", "window_gru"]


@triton_op("aghmn_fast::triton_agru_forward", mutates_args={})
def triton_agru_forward(xproj: Tensor, attn: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                        h0: Tensor, reverse: bool) -> Tuple[Tensor, Tensor]:
    """AGRU recurrence over precomputed projections: ``(output, gates)`` (docs/OPS.md)."""
    return agru_forward(xproj, attn, weight_hh, bias_hh, h0, reverse)


@triton_op("aghmn_fast::triton_agru_backward", mutates_args={})
def triton_agru_backward(grad_output: Tensor, attn: Tensor, weight_hh: Tensor, h0: Tensor,
                         output: Tensor, gates: Tensor, reverse: bool
                         ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """AGRU reverse loop: ``(grad_xproj, grad_attn, grad_ghh, grad_h0)`` (docs/OPS.md)."""
    return agru_backward(grad_output, attn, weight_hh, h0, output, gates, reverse)


@triton_op("aghmn_fast::triton_window_gru_forward", mutates_args={})
def triton_window_gru_forward(proj: Tensor, pad_proj: Tensor, weight_hh: Tensor,
                              bias_hh: Tensor, windows: Tensor) -> Tuple[Tensor, Tensor]:
    """Window GRU of the memory bank, both directions: ``(output, gates)`` (docs/OPS.md)."""
    return window_gru_forward(proj, pad_proj, weight_hh, bias_hh, windows)


@triton_op("aghmn_fast::triton_window_gru_backward", mutates_args={})
def triton_window_gru_backward(grad_output: Tensor, weight_hh: Tensor, windows: Tensor,
                               output: Tensor, gates: Tensor, num_utterances: int
                               ) -> Tuple[Tensor, Tensor, Tensor]:
    """Window GRU reverse loops and deterministic scatter onto utterances: ``(grad_proj,
    grad_pad_proj, grad_ghh)`` (docs/OPS.md)."""
    return window_gru_backward(grad_output, weight_hh, windows, output, gates,
                               num_utterances)


#: The four Triton ops, autograd registered.
TRITON_OPS = OpSet(triton_agru_forward, triton_agru_backward, triton_window_gru_forward,
                   triton_window_gru_backward)
register_autograd_rules(TRITON_OPS)
agru, memory_bank = make_backend(TRITON_OPS)
agru.__doc__ = "Attention GRU on the Triton kernels; see :func:`aghmn_fast.reference.agru`."
memory_bank.__doc__ = ("Memory bank on the Triton kernels; see "
                       ":func:`aghmn_fast.reference.memory_bank`.")
window_gru = make_window_gru(TRITON_OPS.window_gru_forward, TRITON_OPS.window_gru_backward)
window_gru.__doc__ = ("Window GRU from projections on the Triton kernels; see "
                      ":func:`aghmn_fast.reference.window_gru`.")
