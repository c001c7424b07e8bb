"""The attention GRU's autograd: one named Function for every implementation's kernels, the
op-level rules of the raw ``agru_forward`` op, and its shape function.

:class:`AgruFunction` is one autograd node per call (forward: the projection GEMM and the
forward kernel; backward: the backward kernel and every GEMM). Built from the op-level rule
instead (linear, then the op with its registered autograd, then a select) a call is four
autograd nodes, each with Python dispatch; at batch 1 that overhead exceeded the kernels' time
(docs/results/code-comment-measurements.md). ``torch.compile(fullgraph=True)`` traces the Function.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..common import Kernels, needs_grad, overload
from .reference import agru_backward_shapes, agru_forward_shapes

__all__ = ["AgruFunction", "agru_fused", "agru_hh_grads", "register_agru_autograd",
           "register_agru_fakes"]


def agru_hh_grads(grad_ghh: Tensor, out: Tensor, h0: Tensor, reverse: bool, need_w: bool,
                  need_b: bool) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """``(grad_weight_hh, grad_bias_hh)`` from ``grad_ghh`` [B, T, 2H]: one GEMM over all (b, t)
    against h_prev (``out`` shifted by one step in processing order, h0 first), one sum."""
    grad_w = grad_b = None
    if need_w:
        H = out.shape[-1]
        first = h0.unsqueeze(1)
        h_prev = torch.cat([out[:, 1:], first], 1) if reverse else torch.cat([first, out[:, :-1]], 1)
        grad_w = grad_ghh.reshape(-1, 2 * H).t().mm(h_prev.reshape(-1, H))
    if need_b:
        grad_b = grad_ghh.sum((0, 1))
    return grad_w, grad_b


def _forward(kernels, x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse):
    B, H = x.shape[0], weight_hh.shape[1]
    xproj = F.linear(x, weight_ih, bias_ih)  # [B, T, 2H]: the time-parallel GEMM
    bias_hh = weight_hh.new_zeros(2 * H) if bias_hh is None else bias_hh.contiguous()
    h0 = x.new_zeros(B, H) if h0 is None else h0.contiguous()
    attn, weight_hh = attn.contiguous(), weight_hh.contiguous()
    out, gates = kernels.agru_forward(xproj.contiguous(), attn, weight_hh, bias_hh, h0, reverse)
    return out, gates, (attn, weight_hh, h0)


class AgruFunction(torch.autograd.Function):
    """``agru`` on ``kernels`` (a :class:`~aghmn_fast.ops.common.Kernels`), one autograd node."""

    @staticmethod
    def forward(ctx, kernels, x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse):
        out, gates, (attn, weight_hh, h0) = _forward(kernels, x, attn, weight_ih, weight_hh,
                                                     bias_ih, bias_hh, h0, reverse)
        ctx.save_for_backward(x, weight_ih, attn, weight_hh, h0, out, gates)
        ctx.kernels = kernels
        ctx.reverse = reverse
        return out, out[:, 0 if reverse else -1].clone()

    @staticmethod
    @once_differentiable  # the backward kernels have no derivative: say so, not silently zero
    def backward(ctx, grad_out, grad_hn):
        x, weight_ih, attn, weight_hh, h0, out, gates = ctx.saved_tensors
        reverse = ctx.reverse
        need = ctx.needs_input_grad[1:]
        g = torch.empty_like(out)
        g.copy_(grad_out)
        g[:, 0 if reverse else -1] += grad_hn  # h_n is the last processed step's state
        grad_xproj, grad_attn, grad_ghh, grad_h0 = ctx.kernels.agru_backward(
            g, attn, weight_hh, h0, out, gates, reverse)
        D, H2 = x.shape[-1], grad_xproj.shape[-1]
        flat = grad_xproj.reshape(-1, H2)
        grad_x = flat.mm(weight_ih).view_as(x) if need[0] else None
        grad_w_ih = flat.t().mm(x.reshape(-1, D)) if need[2] else None
        grad_b_ih = flat.sum(0) if need[4] else None
        grad_w_hh, grad_b_hh = agru_hh_grads(grad_ghh, out, h0, reverse, need[3], need[5])
        return (None, grad_x, grad_attn if need[1] else None, grad_w_ih, grad_w_hh, grad_b_ih,
                grad_b_hh, grad_h0 if need[6] else None, None)


def agru_fused(kernels: Kernels, x: Tensor, attn: Tensor, weight_ih: Tensor, weight_hh: Tensor,
               bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
               h0: Optional[Tensor] = None, reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """``agru`` (the contract of :func:`aghmn_fast.ops.agru.reference.agru_ref`) on ``kernels``;
    without gradients it skips the autograd node."""
    if needs_grad(x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0):
        return AgruFunction.apply(kernels, x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0,
                                  reverse)
    out = _forward(kernels, x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse)[0]
    return out, out[:, 0 if reverse else -1]


# ---- op-level rules (torch.library): for direct callers of the op, gradcheck and opcheck ------

def _setup_context(ctx, inputs, output):
    _, attn, weight_hh, _, h0, reverse = inputs
    out, gates = output
    ctx.save_for_backward(attn, weight_hh, h0, out, gates)
    ctx.reverse = reverse
    ctx.mark_non_differentiable(gates)


def register_agru_autograd(agru_forward, agru_backward: Callable) -> None:
    """Give the raw ``agru_forward`` op a backward (via ``agru_backward``, no double backward);
    the ``gates`` output is a saved activation, marked non-differentiable."""
    def backward(ctx, grad_out, _grad_gates):
        attn, weight_hh, h0, out, gates = ctx.saved_tensors
        need_xproj, need_attn, need_w, need_b, need_h0 = ctx.needs_input_grad[:5]
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grad_xproj, grad_attn, grad_ghh, grad_h0 = agru_backward(
            grad_out.contiguous(), attn, weight_hh, h0, out, gates, ctx.reverse)
        grad_w, grad_b = agru_hh_grads(grad_ghh, out, h0, ctx.reverse, need_w, need_b)
        return (grad_xproj if need_xproj else None, grad_attn if need_attn else None,
                grad_w, grad_b, grad_h0 if need_h0 else None, None)

    torch.library.register_autograd(overload(agru_forward), backward,
                                    setup_context=_setup_context)


def agru_forward_output_shapes(xproj, attn, weight_hh, bias_hh, h0, reverse):
    """The raw ``agru_forward``'s output shapes from its arguments (:func:`.agru_forward_shapes`)."""
    B, T, _ = xproj.shape
    return agru_forward_shapes(B, T, weight_hh.shape[1])


def agru_backward_output_shapes(grad_output, attn, weight_hh, h0, output, gates, reverse):
    """The raw ``agru_backward``'s output shapes from its arguments."""
    return agru_backward_shapes(*grad_output.shape)


def register_agru_fakes(agru_forward, agru_backward) -> None:
    """Shape-only (fake tensor) implementations of the two AGRU ops (needed for ops defined in
    C++: ``torch.compile``, ``opcheck``; a ``triton_op`` derives its own)."""
    def forward(xproj, attn, weight_hh, bias_hh, h0, reverse):
        return tuple(xproj.new_empty(s) for s in agru_forward_output_shapes(
            xproj, attn, weight_hh, bias_hh, h0, reverse))

    def backward(grad_output, attn, weight_hh, h0, output, gates, reverse):
        return tuple(grad_output.new_empty(s) for s in agru_backward_output_shapes(
            grad_output, attn, weight_hh, h0, output, gates, reverse))

    torch.library.register_fake(overload(agru_forward), forward)
    torch.library.register_fake(overload(agru_backward), backward)
