"""The window GRU's autograd, and the memory bank's on top of it: one named Function per entry
point for every implementation's kernels, the op-level rules of the raw ``window_gru_forward``
op, and the shape functions.

:class:`WindowGruFunction` (the recurrence from precomputed projections) and
:class:`MemoryBankFunction` (projection GEMMs, recurrence, residual and direction sum) are one
autograd node per call: the op-level rule costs more Python dispatch per forward+backward
than the kernels take at small sizes (docs/results/code-comment-measurements.md).
All three backward paths share :func:`window_gru_grads`.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..common import Kernels, needs_grad, overload, residual_grad
from .reference import window_gru_backward_shapes, window_gru_forward_shapes

__all__ = ["WindowGruFunction", "MemoryBankFunction", "window_gru_fused", "memory_bank_fused",
           "window_hh_grads", "window_gru_grads", "register_window_gru_autograd",
           "register_window_gru_fakes"]


def window_hh_grads(grad_ghh: Tensor, out: Tensor, need_w: bool,
                    need_b: bool) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """``(grad_weight_hh [D, 3H, H], grad_bias_hh [D, 3H])`` from ``grad_ghh`` [D, Q, K, 3H]:
    one batched GEMM against h_prev per slot (direction 0 runs k = 0..K-1, direction 1
    k = K-1..0; h_0 = 0)."""
    grad_w = grad_b = None
    if need_w:
        D, Q, K, H = out.shape
        h_prev = [F.pad(out[0, :, :-1], (0, 0, 1, 0))]
        if D == 2:
            h_prev.append(F.pad(out[1, :, 1:], (0, 0, 0, 1)))
        h_prev = torch.stack(h_prev).reshape(D, Q * K, H)
        grad_w = torch.bmm(grad_ghh.reshape(D, Q * K, 3 * H).transpose(1, 2), h_prev)
    if need_b:
        grad_b = grad_ghh.sum((1, 2))
    return grad_w, grad_b


def window_gru_grads(window_gru_backward: Callable, grad_out: Optional[Tensor], weight_hh: Tensor,
                     windows: Tensor, out: Tensor, gates: Tensor, num_utterances: int,
                     need_w: bool, need_b: bool):
    """``(grad_proj, grad_pad_proj, grad_weight_hh, grad_bias_hh)`` of the window GRU: the
    backward kernel, then the recurrent weight and bias gradients (:func:`window_hh_grads`)."""
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    grad_proj, grad_pad, grad_ghh = window_gru_backward(
        grad_out.contiguous(), weight_hh, windows, out, gates, num_utterances)
    grad_w, grad_b = window_hh_grads(grad_ghh, out, need_w, need_b)
    return grad_proj, grad_pad, grad_w, grad_b


class WindowGruFunction(torch.autograd.Function):
    """``window_gru`` on ``kernels`` (a :class:`~aghmn_fast.ops.common.Kernels`), one node."""

    @staticmethod
    def forward(ctx, kernels, proj, pad_proj, weight_hh, bias_hh, windows):
        out, gates = kernels.window_gru_forward(proj, pad_proj, weight_hh, bias_hh, windows)
        ctx.save_for_backward(weight_hh, windows, out, gates)
        ctx.kernels = kernels
        ctx.num_utterances = proj.shape[1]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        weight_hh, windows, out, gates = ctx.saved_tensors
        need = ctx.needs_input_grad[1:]
        grad_proj, grad_pad, grad_w, grad_b = window_gru_grads(
            ctx.kernels.window_gru_backward, grad_out, weight_hh, windows, out, gates,
            ctx.num_utterances, need[2], need[3])
        return (None, grad_proj if need[0] else None, grad_pad if need[1] else None, grad_w,
                grad_b, None)


def window_gru_fused(kernels: Kernels, proj: Tensor, pad_proj: Tensor, weight_hh: Tensor,
                     bias_hh: Tensor, windows: Tensor) -> Tensor:
    """``window_gru`` (the contract of :func:`aghmn_fast.ops.window_gru.reference.window_gru_ref`)
    on ``kernels``; without gradients it skips the autograd node."""
    args = (proj.contiguous(), pad_proj.contiguous(), weight_hh.contiguous(),
            bias_hh.contiguous(), windows.contiguous())
    if needs_grad(*args[:4]):
        return WindowGruFunction.apply(kernels, *args)
    return kernels.window_gru_forward(*args)[0]


def _memory_forward(kernels, utterances, windows, flat):
    N, H = utterances.shape
    w_ih, w_hh, b_ih, b_hh = (flat[i::4] for i in range(4))
    # Each utterance is projected once per direction (the incremental update); the kernel
    # gathers the rows by window index.
    if len(w_ih) == 1:
        proj = F.linear(utterances, w_ih[0], b_ih[0]).unsqueeze(0)
        pad_proj, weight_hh, bias_hh = b_ih[0].unsqueeze(0), w_hh[0].unsqueeze(0), b_hh[0].unsqueeze(0)
    else:
        proj = torch.stack([F.linear(utterances, w, b) for w, b in zip(w_ih, b_ih)])
        pad_proj, weight_hh, bias_hh = torch.stack(b_ih), torch.stack(w_hh), torch.stack(b_hh)
    windows = windows.contiguous()
    weight_hh = weight_hh.contiguous()
    out, gates = kernels.window_gru_forward(proj.contiguous(), pad_proj.contiguous(), weight_hh,
                                            bias_hh.contiguous(), windows)
    # Residual u_k: an empty slot (-1, which remainder maps to N) picks an appended zero
    # row. index_select: its backward (index_add) is deterministic, where advanced
    # indexing's backward accumulates with atomics on the CPU.
    index = windows.remainder(N + 1).view(-1)
    padded = torch.cat([utterances, utterances.new_zeros(1, H)])
    residual = padded.index_select(0, index).view(*windows.shape, H)
    memory = residual + (out[0] if out.shape[0] == 1 else out[0] + out[1])
    return memory, (out, gates, weight_hh, windows, index)


class MemoryBankFunction(torch.autograd.Function):
    """``memory_bank`` on ``kernels`` (a :class:`~aghmn_fast.ops.common.Kernels`), one node."""

    @staticmethod
    def forward(ctx, kernels, utterances, windows, *flat):
        memory, (out, gates, weight_hh, windows, index) = _memory_forward(kernels, utterances,
                                                                          windows, flat)
        ctx.save_for_backward(utterances, weight_hh, windows, index, out, gates, *flat[0::4])
        ctx.kernels = kernels
        return memory

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_memory):
        utterances, weight_hh, windows, index, out, gates, *w_ih = ctx.saved_tensors
        need = ctx.needs_input_grad[1:]
        D = out.shape[0]
        N, H = utterances.shape
        grad_memory = grad_memory.contiguous()
        grad_out = grad_memory.unsqueeze(0).expand(D, *grad_memory.shape)
        grad_proj, grad_pad, grad_w_hh, grad_b_hh = window_gru_grads(
            ctx.kernels.window_gru_backward, grad_out, weight_hh, windows, out, gates, N,
            any(need[3::4]), any(need[5::4]))
        grad_u = None
        if need[0]:
            grad_u = residual_grad(grad_memory.view(-1, H), index, N + 1)[:N]
            for d in range(D):
                grad_u = grad_u.addmm(grad_proj[d], w_ih[d])
        grads = []
        for d in range(D):
            grads += [grad_proj[d].t().mm(utterances) if need[2 + 4 * d] else None,
                      grad_w_hh[d] if need[3 + 4 * d] else None,
                      grad_proj[d].sum(0) + grad_pad[d] if need[4 + 4 * d] else None,
                      grad_b_hh[d] if need[5 + 4 * d] else None]
        return (None, grad_u, None, *grads)


def memory_bank_fused(kernels: Kernels, utterances: Tensor, windows: Tensor,
                      flat_weights: Sequence[Tensor]) -> Tensor:
    """``memory_bank`` (the contract of
    :func:`aghmn_fast.ops.window_gru.reference.memory_bank_ref`) on ``kernels``."""
    if needs_grad(utterances, *flat_weights):
        return MemoryBankFunction.apply(kernels, utterances, windows, *flat_weights)
    return _memory_forward(kernels, utterances, windows, list(flat_weights))[0]


# ---- op-level rules (torch.library): for direct callers of the op, gradcheck and opcheck ------

def _setup_context(ctx, inputs, output):
    proj, _, weight_hh, _, windows = inputs
    out, gates = output
    ctx.save_for_backward(weight_hh, windows, out, gates)
    ctx.num_utterances = proj.shape[1]
    ctx.mark_non_differentiable(gates)


def register_window_gru_autograd(window_gru_forward, window_gru_backward: Callable) -> None:
    """Give the raw ``window_gru_forward`` op a backward (via ``window_gru_backward``, no double
    backward); the ``gates`` output is a saved activation, marked non-differentiable."""
    def backward(ctx, grad_out, _grad_gates):
        weight_hh, windows, out, gates = ctx.saved_tensors
        need_proj, need_pad, need_w, need_b = ctx.needs_input_grad[:4]
        grad_proj, grad_pad, grad_w, grad_b = window_gru_grads(
            window_gru_backward, grad_out, weight_hh, windows, out, gates, ctx.num_utterances,
            need_w, need_b)
        return (grad_proj if need_proj else None, grad_pad if need_pad else None,
                grad_w, grad_b, None)

    torch.library.register_autograd(overload(window_gru_forward), backward,
                                    setup_context=_setup_context)


def window_gru_forward_output_shapes(proj, pad_proj, weight_hh, bias_hh, windows):
    """The raw ``window_gru_forward``'s output shapes from its arguments
    (:func:`.window_gru_forward_shapes`)."""
    D, _, H3 = proj.shape
    return window_gru_forward_shapes(D, *windows.shape, H3 // 3)


def window_gru_backward_output_shapes(grad_output, weight_hh, windows, output, gates,
                                      num_utterances):
    """The raw ``window_gru_backward``'s output shapes from its arguments."""
    D, Q, K, H = grad_output.shape
    return window_gru_backward_shapes(D, num_utterances, Q, K, H)


def register_window_gru_fakes(window_gru_forward, window_gru_backward) -> None:
    """Shape-only (fake tensor) implementations of the two window-GRU ops (for ops defined in
    C++; outputs take the dtype of the first tensor argument)."""
    def forward(proj, pad_proj, weight_hh, bias_hh, windows):
        return tuple(proj.new_empty(s) for s in window_gru_forward_output_shapes(
            proj, pad_proj, weight_hh, bias_hh, windows))

    def backward(grad_output, weight_hh, windows, output, gates, num_utterances):
        return tuple(grad_output.new_empty(s) for s in window_gru_backward_output_shapes(
            grad_output, weight_hh, windows, output, gates, num_utterances))

    torch.library.register_fake(overload(window_gru_forward), forward)
    torch.library.register_fake(overload(window_gru_backward), backward)
