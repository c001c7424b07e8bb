"""The attention GRU's reference: a readable step loop, differentiable by autograd.

The specification every implementation of ``agru`` is tested against (AGHMN.md, section 5;
docs/OPS.md). ``agru_ref`` does not validate its arguments: :func:`aghmn_fast.ops.agru` (and
:func:`aghmn_fast.reference.agru`) validate once before calling it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["agru_ref", "agru_forward_ref", "agru_cell"]


def _agru_step(xr: Tensor, xn: Tensor, a: Tensor, h: Tensor, weight_hh: Tensor,
               bias_hh: Optional[Tensor], tap: Optional[Tensor] = None):
    """One step: ``(h', r, n, hn)`` with ``hn = U h + b_U`` (+ the tap's half, if given)."""
    g = torch.nn.functional.linear(h, weight_hh, bias_hh)
    if tap is not None:
        g = g + tap
    hr, hn = g.chunk(2, dim=-1)
    r = torch.sigmoid(xr + hr)
    n = torch.tanh(xn + r * hn)
    a = a.unsqueeze(-1)
    return a * n + (1 - a) * h, r, n, hn


def agru_cell(xr: Tensor, xn: Tensor, a: Tensor, h: Tensor, weight_hh: Tensor,
              bias_hh: Optional[Tensor]) -> Tensor:
    """One attention-GRU step given the input projections ``xr``, ``xn`` ([B, H]).

    ``r = sigmoid(xr + U_r h + b_Ur)``, ``n = tanh(xn + r * (U h + b_U))``,
    ``h' = a * n + (1 - a) * h`` with ``a`` of shape [B].
    """
    return _agru_step(xr, xn, a, h, weight_hh, bias_hh)[0]


def _agru_loop(xproj, attn, weight_hh, bias_hh, h0, reverse, ghh_tap, keep_gates):
    T, H = xproj.shape[1], weight_hh.shape[1]
    xr, xn = xproj[..., :H], xproj[..., H:]
    h, outputs, gates = h0, [None] * T, [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        tap = None if ghh_tap is None else ghh_tap[:, t]
        h, r, n, hn = _agru_step(xr[:, t], xn[:, t], attn[:, t], h, weight_hh, bias_hh, tap)
        outputs[t] = h
        if keep_gates:  # only the raw op's reference saves them (the public one stays lean)
            gates[t] = torch.cat([r, n, hn], dim=-1)
    if T == 0:
        return xproj.new_zeros(xproj.shape[0], 0, H), xproj.new_zeros(xproj.shape[0], 0, 3 * H)
    return torch.stack(outputs, dim=1), torch.stack(gates, dim=1) if keep_gates else None


def agru_forward_ref(xproj: Tensor, attn: Tensor, weight_hh: Tensor, bias_hh: Optional[Tensor],
                     h0: Tensor, reverse: bool = False,
                     ghh_tap: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The raw ``agru_forward`` op (docs/OPS.md) as a step loop: ``(output, gates)``.

    Args:
        xproj: [B, T, 2H] input projections ``x @ weight_ih^T + bias_ih``, columns [xr | xn].
        attn, weight_hh, bias_hh, h0, reverse: as in :func:`agru_ref` (h0 required).
        ghh_tap: optional [B, T, 2H] added to step t's ``h_prev @ weight_hh^T + bias_hh``. A
            zero tensor that requires grad reads, through autograd, the ``grad_ghh`` output of
            the ``agru_backward`` op.

    Returns:
        output [B, T, H] (the state right after position t) and gates [B, T, 3H], per step
        ``[r | n | hn]`` with ``hn = U h_prev + b_U``: what the backward op consumes.
    """
    return _agru_loop(xproj, attn, weight_hh, bias_hh, h0, reverse, ghh_tap, True)


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
    B, H = x.shape[0], weight_hh.shape[1]
    xproj = torch.nn.functional.linear(x, weight_ih, bias_ih)  # [B, T, 2H], time-parallel
    h0 = x.new_zeros(B, H) if h0 is None else h0
    output, _ = _agru_loop(xproj, attn, weight_hh, bias_hh, h0, reverse, None, False)
    return output, output[:, 0 if reverse else -1]


def agru_forward_shapes(B: int, T: int, H: int) -> Tuple[Tuple[int, ...], ...]:
    """Output shapes of the raw ``agru_forward`` (docs/OPS.md): ``(output, gates)``; the one place
    Python writes them (the C++ ops' fake implementations and the Triton op use it; C++:
    csrc/agru/agru_checks.h)."""
    return (B, T, H), (B, T, 3 * H)


def agru_backward_shapes(B: int, T: int, H: int) -> Tuple[Tuple[int, ...], ...]:
    """Output shapes of the raw ``agru_backward``: ``(grad_xproj, grad_attn, grad_ghh,
    grad_h0)`` (see :func:`agru_forward_shapes`)."""
    return (B, T, 2 * H), (B, T), (B, T, 2 * H), (B, H)
