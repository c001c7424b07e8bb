"""The attention GRU's reference: a readable step loop, differentiable by autograd.

The specification every implementation of ``agru`` is tested against (AGHMN.md, section 5;
docs/OPS.md). ``agru_ref`` does not validate its arguments: :func:`aghmn_fast.ops.agru` (and
:func:`aghmn_fast.reference.agru`) validate once before calling it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["agru_ref", "agru_cell"]


def agru_cell(xr: Tensor, xn: Tensor, a: Tensor, h: Tensor, weight_hh: Tensor,
              bias_hh: Optional[Tensor]) -> Tensor:
    """One attention-GRU step given the input projections ``xr``, ``xn`` ([B, H]).

    ``r = sigmoid(xr + U_r h + b_Ur)``, ``n = tanh(xn + r * (U h + b_U))``,
    ``h' = a * n + (1 - a) * h`` with ``a`` of shape [B].
    """
    g = torch.nn.functional.linear(h, weight_hh, bias_hh)
    hr, hn = g.chunk(2, dim=-1)
    r = torch.sigmoid(xr + hr)
    n = torch.tanh(xn + r * hn)
    a = a.unsqueeze(-1)
    return a * n + (1 - a) * h


def agru_ref(x: Tensor, attn: Tensor, weight_ih: Tensor, weight_hh: Tensor,
             bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
             h0: Optional[Tensor] = None, reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """Attention GRU (AGRU): a GRU whose update gate is the given attention weight.

    Args:
        x: inputs [B, T, D].
        attn: attention weights [B, T]; a step with weight 0 leaves the state unchanged.
        weight_ih: [2H, D], rows ``W_r`` then ``W``.
        weight_hh: [2H, H], rows ``U_r`` then ``U``.
        bias_ih, bias_hh: [2H] or None.
        h0: initial state [B, H]; zeros when None.
        reverse: run t = T-1 .. 0 instead of 0 .. T-1.

    Returns:
        ``(output, h_n)``: output [B, T, H] where ``output[:, t]`` is the state right after
        consuming position t; h_n [B, H] the state after the last step processed.
    """
    B, T = x.shape[0], x.shape[1]
    H = weight_hh.shape[1]
    xproj = torch.nn.functional.linear(x, weight_ih, bias_ih)  # [B, T, 2H], time-parallel
    xr, xn = xproj.chunk(2, dim=-1)
    h = x.new_zeros(B, H) if h0 is None else h0
    outputs = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        h = agru_cell(xr[:, t], xn[:, t], attn[:, t], h, weight_hh, bias_hh)
        outputs[t] = h
    return torch.stack(outputs, dim=1), h
