"""The window GRU's reference and the memory bank built on it: readable step loops,
differentiable by autograd.

The specification every implementation of ``window_gru`` and ``memory_bank`` is tested against
(AGHMN.md, section 3; docs/OPS.md). The ``*_ref`` functions do not validate their arguments:
:mod:`aghmn_fast.ops` (and :mod:`aghmn_fast.reference`) validate once before calling them.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["window_gru_ref", "window_gru_forward_ref", "memory_bank_ref", "gru_cell"]


def _gru_step(p: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor,
              tap: Optional[Tensor] = None):
    """One step: ``(h', r, z, n, hn)`` with ``hn = U_n h + b_hn`` (+ the tap's third, if given)."""
    pr, pz, pn = p.chunk(3, dim=-1)
    g = torch.nn.functional.linear(h, weight_hh, bias_hh)
    if tap is not None:
        g = g + tap
    hr, hz, hn = g.chunk(3, dim=-1)
    r = torch.sigmoid(pr + hr)
    z = torch.sigmoid(pz + hz)
    n = torch.tanh(pn + r * hn)
    return (1 - z) * n + z * h, r, z, n, hn


def gru_cell(p: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor) -> Tensor:
    """One step of a PyTorch-layout GRU given the input projection ``p`` = W_i x + b_i ([.., 3H])."""
    return _gru_step(p, h, weight_hh, bias_hh)[0]


def _window_loop(proj, pad_proj, weight_hh, bias_hh, windows, ghh_tap, keep_gates):
    D, Q, K = proj.shape[0], windows.shape[0], windows.shape[1]
    H = weight_hh.shape[-1]
    empty = (windows < 0).unsqueeze(-1)
    outputs, gates = [], []
    for d in range(D):
        p = proj[d][windows.clamp(min=0)]
        p = torch.where(empty, pad_proj[d].expand_as(p), p)
        h = proj.new_zeros(Q, H)
        states, slot_gates = [None] * K, [None] * K
        for k in (range(K - 1, -1, -1) if d == 1 else range(K)):
            tap = None if ghh_tap is None else ghh_tap[d, :, k]
            h, r, z, n, hn = _gru_step(p[:, k], h, weight_hh[d], bias_hh[d], tap)
            states[k] = h
            if keep_gates:  # only the raw op's reference saves them (the public one stays lean)
                slot_gates[k] = torch.cat([r, z, n, hn], dim=-1)
        outputs.append(torch.stack(states, dim=1))
        if keep_gates:
            gates.append(torch.stack(slot_gates, dim=1))
    return torch.stack(outputs), torch.stack(gates) if keep_gates else None


def window_gru_forward_ref(proj: Tensor, pad_proj: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                           windows: Tensor,
                           ghh_tap: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The raw ``window_gru_forward`` op (docs/OPS.md) as a step loop: ``(output, gates)``.

    Args: as :func:`window_gru_ref`, plus ``ghh_tap``: optional [D, Q, K, 3H] added to slot k's
    ``h_prev @ weight_hh^T + bias_hh``; a zero tensor that requires grad reads, through autograd,
    the ``grad_ghh`` output of the ``window_gru_backward`` op.

    Returns:
        output [D, Q, K, H] as :func:`window_gru_ref`, and gates [D, Q, K, 4H], per slot
        ``[r | z | n | hn]``: what the backward op consumes.
    """
    return _window_loop(proj, pad_proj, weight_hh, bias_hh, windows, ghh_tap, True)


def window_gru_ref(proj: Tensor, pad_proj: Tensor, weight_hh: Tensor, bias_hh: Tensor,
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
    return _window_loop(proj, pad_proj, weight_hh, bias_hh, windows, None, False)[0]


def memory_bank_ref(utterances: Tensor, windows: Tensor, flat_weights: Sequence[Tensor]) -> Tensor:
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
    num_dirs = len(flat_weights) // 4
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
    return memory + window_gru_ref(proj, pad_proj, weight_hh, bias_hh, windows).sum(0)


def window_gru_forward_shapes(D: int, Q: int, K: int, H: int) -> Tuple[Tuple[int, ...], ...]:
    """Output shapes of the raw ``window_gru_forward`` (docs/OPS.md): ``(output, gates)``; the
    one place Python writes them (the C++ ops' fake implementations and the Triton op use it;
    C++: csrc/window_gru/window_gru_checks.h)."""
    return (D, Q, K, H), (D, Q, K, 4 * H)


def window_gru_backward_shapes(D: int, N: int, Q: int, K: int,
                               H: int) -> Tuple[Tuple[int, ...], ...]:
    """Output shapes of the raw ``window_gru_backward``: ``(grad_proj, grad_pad_proj,
    grad_ghh)`` (see :func:`window_gru_forward_shapes`)."""
    return (D, N, 3 * H), (D, 3 * H), (D, Q, K, 3 * H)
