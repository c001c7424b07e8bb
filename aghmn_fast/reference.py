"""Pure-PyTorch reference implementations of the two hot recurrences of AGHMN.

These are the specification every fused backend is tested against: readable step loops,
differentiable by autograd, float64-capable. See ``docs/`` and the model specification
(AGHMN.md, sections 3 and 5).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._validation import check_agru_args, check_memory_bank_args

__all__ = ["agru", "memory_bank", "window_gru", "agru_cell", "gru_cell"]


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


def agru(x: Tensor, attn: Tensor, weight_ih: Tensor, weight_hh: Tensor,
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
    B, T, D, H = check_agru_args(x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0)
    xproj = torch.nn.functional.linear(x, weight_ih, bias_ih)  # [B, T, 2H], time-parallel
    xr, xn = xproj.chunk(2, dim=-1)
    h = x.new_zeros(B, H) if h0 is None else h0
    outputs = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        h = agru_cell(xr[:, t], xn[:, t], attn[:, t], h, weight_hh, bias_hh)
        outputs[t] = h
    return torch.stack(outputs, dim=1), h


def gru_cell(p: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor) -> Tensor:
    """One step of a PyTorch-layout GRU given the input projection ``p`` = W_i x + b_i ([.., 3H])."""
    pr, pz, pn = p.chunk(3, dim=-1)
    hr, hz, hn = torch.nn.functional.linear(h, weight_hh, bias_hh).chunk(3, dim=-1)
    r = torch.sigmoid(pr + hr)
    z = torch.sigmoid(pz + hz)
    n = torch.tanh(pn + r * hn)
    return (1 - z) * n + z * h


def memory_bank(utterances: Tensor, windows: Tensor, flat_weights: Sequence[Tensor]) -> Tensor:
    """The fusion layer of AGHMN over windows of past utterances (UniF or BiF).

    Args:
        utterances: utterance vectors [N, H].
        windows: [Q, K] int64 indices into ``utterances``; -1 marks an empty slot, which is fed
            to the GRU as a zero input and contributes a zero residual.
        flat_weights: 4 tensors (forward GRU only, UniF) or 8 (bidirectional, BiF) in
            ``torch.nn.GRU._flat_weights`` order: w_ih, w_hh, b_ih, b_hh (then ``*_reverse``).

    Returns:
        The memory bank [Q, K, H]: ``u_k + f_fwd_k (+ f_bwd_k)``, the GRU run separately over
        each window's K slots with h_0 = 0.
    """
    N, Q, K, H, num_dirs = check_memory_bank_args(utterances, windows, flat_weights)
    empty = windows < 0
    keep = (~empty).unsqueeze(-1).to(utterances.dtype)
    memory = utterances[windows.clamp(min=0)] * keep  # residual: empty slots contribute zero
    # Incremental update: each utterance is projected once, then gathered into its windows.
    proj = torch.stack([torch.nn.functional.linear(utterances, flat_weights[4 * d],
                                                   flat_weights[4 * d + 2])
                        for d in range(num_dirs)])
    pad_proj = torch.stack([flat_weights[4 * d + 2] for d in range(num_dirs)])
    weight_hh = torch.stack([flat_weights[4 * d + 1] for d in range(num_dirs)])
    bias_hh = torch.stack([flat_weights[4 * d + 3] for d in range(num_dirs)])
    return memory + window_gru(proj, pad_proj, weight_hh, bias_hh, windows).sum(0)


def window_gru(proj: Tensor, pad_proj: Tensor, weight_hh: Tensor, bias_hh: Tensor,
               windows: Tensor) -> Tensor:
    """The window GRU from precomputed input projections (the ``window_gru_forward`` op's output).

    Args:
        proj: [D, N, 3H] per-direction input projections of the N utterances (gates r, z, n).
        pad_proj: [D, 3H] projection of an empty slot (the input bias).
        weight_hh: [D, 3H, H]; bias_hh: [D, 3H].
        windows: [Q, K] int64 indices into the N rows, -1 = empty slot.

    Returns:
        [D, Q, K, H]: direction d's state right after slot k (direction 1 runs k = K-1 .. 0),
        h_0 = 0 for every window.
    """
    D, Q, K = proj.shape[0], windows.shape[0], windows.shape[1]
    H = weight_hh.shape[-1]
    empty = (windows < 0).unsqueeze(-1)
    out = []
    for d in range(D):
        p = proj[d][windows.clamp(min=0)]
        p = torch.where(empty, pad_proj[d].expand_as(p), p)
        h = proj.new_zeros(Q, H)
        states = [None] * K
        for k in (range(K - 1, -1, -1) if d == 1 else range(K)):
            h = gru_cell(p[:, k], h, weight_hh[d], bias_hh[d])
            states[k] = h
        out.append(torch.stack(states, dim=1))
    return torch.stack(out)
