"""Autograd and tensor glue of the fused backends, around the ops of ``docs/OPS.md``.

The fused kernels do only the sequential part of each recurrence. Everything time-parallel is
done here with ordinary torch ops, on whatever device the tensors live on: the input projections
(one GEMM before the loop), the memory bank's residual and direction sum, and in the backward
the projection and weight-gradient GEMMs (``grad_ghh^T @ h_prev``) and bias sums.

The glue is written once for any set of op handles that follow the contract (an :class:`OpSet`):

- :func:`make_backend` returns ``(agru, memory_bank)`` with the reference signatures. Each call
  is one ``torch.autograd.Function`` (forward: projection GEMM + forward op; backward: backward
  op + every GEMM), which ``torch.compile(fullgraph=True)`` traces like any autograd.Function;
- :func:`register_autograd_rules` gives the forward ops themselves a backward
  (``torch.library.register_autograd``), for direct callers of the ops, ``gradcheck`` and
  ``torch.library.opcheck``;
- :func:`register_fake_impls` registers shape functions (needed for ops defined in C++; a
  ``torch.library.triton_op`` derives its own).

Both autograd paths share :func:`agru_hh_grads` and :func:`window_hh_grads`. This module needs
no compiled code (the Triton backend uses it without the C++ extension);
:mod:`aghmn_fast.backends.extension_ops` applies it to the extension's ops.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


__all__ = ["OpSet", "register_autograd_rules", "register_fake_impls", "make_agru",
           "make_memory_bank", "make_window_gru", "make_backend", "agru_hh_grads",
           "window_hh_grads", "segment_offsets", "segment_sum", "residual_grad"]


class OpSet(NamedTuple):
    """The four op handles of one backend, with the schemas of ``docs/OPS.md``.

    Each is anything ``torch.library.register_autograd`` accepts and that can be called: an
    ``OpOverload`` (``torch.ops.aghmn_fast.agru_forward.default``), a ``CustomOpDef`` (from
    ``torch.library.custom_op`` or ``triton_op``).
    """
    agru_forward: Any
    agru_backward: Any
    window_gru_forward: Any
    window_gru_backward: Any


def _overload(op):
    # torch.ops.ns.name (a packet) -> its only overload, which register_* accept.
    return op.default if isinstance(op, torch._ops.OpOverloadPacket) else op


# ---- gradient math shared by the op-level rules and the fused autograd functions ----------------

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


def segment_offsets(index: Tensor, num_segments: int) -> Tuple[Tensor, Tensor]:
    """``(order, offsets)``: positions sorted by ``index`` (stable: each segment in increasing
    position) and the bounds ``offsets[s] .. offsets[s + 1]`` of segment s in that order
    (``num_segments + 1`` entries). Static shapes, no host read-back."""
    key, order = torch.sort(index, stable=True)
    bounds = torch.arange(num_segments + 1, dtype=key.dtype, device=key.device)
    return order, torch.searchsorted(key, bounds)


def segment_sum(rows: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """``out[s] = sum of rows[i] over i with index[i] == s`` ([num_segments, C]), each segment
    added in increasing i, with no atomics: bitwise reproducible on every device, and equal to
    ``index_add_`` done sequentially (as on the CPU).

    The rows are put in segment order by a stable sort of ``index``; segment boundaries come from
    ``searchsorted`` and ``torch.segment_reduce`` adds each segment. No value is read back to the
    host (``unsafe=True`` skips segment_reduce's own consistency check, a device sync; the
    offsets are consistent by construction). ``index`` must lie in [0, num_segments).
    """
    order, offsets = segment_offsets(index, num_segments)
    if rows.shape[0] == 0:
        return rows.new_zeros(num_segments, *rows.shape[1:])
    return torch.segment_reduce(rows.index_select(0, order), "sum", offsets=offsets, axis=0,
                                unsafe=True)


def residual_grad(grad_rows: Tensor, index: Tensor, num_rows: int) -> Tensor:
    """The memory bank residual's gradient: ``grad_rows`` (one per window slot) summed onto
    the ``num_rows`` utterance rows (the last row collects the empty slots).

    CUDA's ``index_add_`` accumulates with atomics, so its rounding differs from run to run;
    there :func:`segment_sum` gives the same sum deterministically. On the CPU ``index_add_``
    already adds in index order (deterministic, and the cheapest), so it is kept.
    """
    if grad_rows.device.type == "cpu":
        return grad_rows.new_zeros(num_rows, grad_rows.shape[1]).index_add_(0, index, grad_rows)
    return segment_sum(grad_rows, index, num_rows)


# ---- op-level autograd (torch.library) ----------------------------------------------------------

def _agru_setup_context(ctx, inputs, output):
    _, attn, weight_hh, _, h0, reverse = inputs
    out, gates = output
    ctx.save_for_backward(attn, weight_hh, h0, out, gates)
    ctx.reverse = reverse
    ctx.mark_non_differentiable(gates)


def _agru_backward_rule(agru_backward: Callable) -> Callable:
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
    return backward


def _window_gru_setup_context(ctx, inputs, output):
    proj, _, weight_hh, _, windows = inputs
    out, gates = output
    ctx.save_for_backward(weight_hh, windows, out, gates)
    ctx.num_utterances = proj.shape[1]
    ctx.mark_non_differentiable(gates)


def _window_gru_backward_rule(window_gru_backward: Callable) -> Callable:
    def backward(ctx, grad_out, _grad_gates):
        weight_hh, windows, out, gates = ctx.saved_tensors
        need_proj, need_pad, need_w, need_b = ctx.needs_input_grad[:4]
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grad_proj, grad_pad, grad_ghh = window_gru_backward(
            grad_out.contiguous(), weight_hh, windows, out, gates, ctx.num_utterances)
        grad_w, grad_b = window_hh_grads(grad_ghh, out, need_w, need_b)
        return (grad_proj if need_proj else None, grad_pad if need_pad else None,
                grad_w, grad_b, None)
    return backward


def register_autograd_rules(ops: OpSet) -> None:
    """Register the backward of ``ops.agru_forward`` and ``ops.window_gru_forward``.

    The rules call ``ops.agru_backward`` / ``ops.window_gru_backward`` (no double backward) and
    compute the recurrent weight and bias gradients with torch GEMMs. The ``gates`` outputs
    are saved activations, marked non-differentiable. (The functions of :func:`make_backend` do
    not rely on these rules; direct callers of the ops, ``opcheck`` and ``gradcheck`` do.)
    """
    torch.library.register_autograd(_overload(ops.agru_forward),
                                    _agru_backward_rule(ops.agru_backward),
                                    setup_context=_agru_setup_context)
    torch.library.register_autograd(_overload(ops.window_gru_forward),
                                    _window_gru_backward_rule(ops.window_gru_backward),
                                    setup_context=_window_gru_setup_context)


def register_fake_impls(ops: OpSet) -> None:
    """Register shape-only (fake tensor) implementations of the four ops.

    Needed for ops defined in C++ (``torch.compile``, ``opcheck``); outputs take the dtype of the
    first tensor argument.
    """
    def agru_forward(xproj, attn, weight_hh, bias_hh, h0, reverse):
        B, T, _ = xproj.shape
        H = weight_hh.shape[1]
        return xproj.new_empty(B, T, H), xproj.new_empty(B, T, 3 * H)

    def agru_backward(grad_output, attn, weight_hh, h0, output, gates, reverse):
        B, T, H = grad_output.shape
        return (grad_output.new_empty(B, T, 2 * H), grad_output.new_empty(B, T),
                grad_output.new_empty(B, T, 2 * H), grad_output.new_empty(B, H))

    def window_gru_forward(proj, pad_proj, weight_hh, bias_hh, windows):
        D, _, H3 = proj.shape
        Q, K = windows.shape
        H = H3 // 3
        return proj.new_empty(D, Q, K, H), proj.new_empty(D, Q, K, 4 * H)

    def window_gru_backward(grad_output, weight_hh, windows, output, gates, num_utterances):
        D, Q, K, H = grad_output.shape
        return (grad_output.new_empty(D, num_utterances, 3 * H),
                grad_output.new_empty(D, 3 * H), grad_output.new_empty(D, Q, K, 3 * H))

    for op, fake in zip(ops, (agru_forward, agru_backward, window_gru_forward,
                              window_gru_backward)):
        torch.library.register_fake(_overload(op), fake)


# ---- the public functions: one autograd node per call ------------------------------------------
#
# Each public function is one torch.autograd.Function whose forward runs the projection GEMM and
# the forward op, and whose backward runs the backward op and every GEMM of the backward. Built
# from the op-level rules instead (linear, then the op with its registered autograd, then a
# select) a call is four autograd nodes, each with Python dispatch; at batch 1 that overhead
# (~100 us on the reference machine) exceeded the kernels' time. torch.compile traces these
# functions as well (dynamo supports autograd.Function).

def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def make_agru(agru_forward: Callable, agru_backward: Callable) -> Callable:
    """``agru`` (the signature of :func:`aghmn_fast.reference.agru`) on top of the two AGRU ops."""

    def forward(x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse):
        B, H = x.shape[0], weight_hh.shape[1]
        xproj = F.linear(x, weight_ih, bias_ih)  # [B, T, 2H]: the time-parallel GEMM
        bias_hh = weight_hh.new_zeros(2 * H) if bias_hh is None else bias_hh.contiguous()
        h0 = x.new_zeros(B, H) if h0 is None else h0.contiguous()
        attn, weight_hh = attn.contiguous(), weight_hh.contiguous()
        out, gates = agru_forward(xproj.contiguous(), attn, weight_hh, bias_hh, h0, reverse)
        return out, gates, (attn, weight_hh, h0)

    class AgruFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse):
            out, gates, (attn, weight_hh, h0) = forward(x, attn, weight_ih, weight_hh, bias_ih,
                                                        bias_hh, h0, reverse)
            ctx.save_for_backward(x, weight_ih, attn, weight_hh, h0, out, gates)
            ctx.reverse = reverse
            return out, out[:, 0 if reverse else -1].clone()

        @staticmethod
        @once_differentiable  # the backward ops have no derivative: say so, not silently zero
        def backward(ctx, grad_out, grad_hn):
            x, weight_ih, attn, weight_hh, h0, out, gates = ctx.saved_tensors
            reverse = ctx.reverse
            need = ctx.needs_input_grad
            g = torch.empty_like(out)
            g.copy_(grad_out)
            g[:, 0 if reverse else -1] += grad_hn  # h_n is the last processed step's state
            grad_xproj, grad_attn, grad_ghh, grad_h0 = agru_backward(
                g, attn, weight_hh, h0, out, gates, reverse)
            D, H2 = x.shape[-1], grad_xproj.shape[-1]
            flat = grad_xproj.reshape(-1, H2)
            grad_x = flat.mm(weight_ih).view_as(x) if need[0] else None
            grad_w_ih = flat.t().mm(x.reshape(-1, D)) if need[2] else None
            grad_b_ih = flat.sum(0) if need[4] else None
            grad_w_hh, grad_b_hh = agru_hh_grads(grad_ghh, out, h0, reverse, need[3], need[5])
            return (grad_x, grad_attn if need[1] else None, grad_w_ih, grad_w_hh, grad_b_ih,
                    grad_b_hh, grad_h0 if need[6] else None, None)

    def agru(x: Tensor, attn: Tensor, weight_ih: Tensor, weight_hh: Tensor,
             bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
             h0: Optional[Tensor] = None, reverse: bool = False) -> Tuple[Tensor, Tensor]:
        if _needs_grad(x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0):
            return AgruFunction.apply(x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0,
                                      reverse)
        out = forward(x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse)[0]
        return out, out[:, 0 if reverse else -1]
    agru.__doc__ = "Attention GRU on fused ops; see :func:`aghmn_fast.reference.agru`."
    return agru


def make_memory_bank(window_gru_forward: Callable, window_gru_backward: Callable) -> Callable:
    """``memory_bank`` (the signature of :func:`aghmn_fast.reference.memory_bank`) on top of the
    two window-GRU ops."""

    def forward(utterances, windows, flat):
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
        out, gates = window_gru_forward(proj.contiguous(), pad_proj.contiguous(), weight_hh,
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
        @staticmethod
        def forward(ctx, utterances, windows, *flat):
            memory, (out, gates, weight_hh, windows, index) = forward(utterances, windows, flat)
            ctx.save_for_backward(utterances, weight_hh, windows, index, out, gates, *flat[0::4])
            return memory

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_memory):
            utterances, weight_hh, windows, index, out, gates, *w_ih = ctx.saved_tensors
            need = ctx.needs_input_grad
            D = out.shape[0]
            N, H = utterances.shape
            grad_memory = grad_memory.contiguous()
            grad_out = grad_memory.unsqueeze(0).expand(D, *grad_memory.shape).contiguous()
            grad_proj, grad_pad, grad_ghh = window_gru_backward(grad_out, weight_hh, windows, out,
                                                                gates, N)
            grad_u = None
            if need[0]:
                grad_u = residual_grad(grad_memory.view(-1, H), index, N + 1)[:N]
                for d in range(D):
                    grad_u = grad_u.addmm(grad_proj[d], w_ih[d])
            grad_w_hh, grad_b_hh = window_hh_grads(grad_ghh, out, any(need[3::4]),
                                                   any(need[5::4]))
            grads = []
            for d in range(D):
                grads += [grad_proj[d].t().mm(utterances) if need[2 + 4 * d] else None,
                          grad_w_hh[d] if need[3 + 4 * d] else None,
                          grad_proj[d].sum(0) + grad_pad[d] if need[4 + 4 * d] else None,
                          grad_b_hh[d] if need[5 + 4 * d] else None]
            return (grad_u, None, *grads)

    def memory_bank(utterances: Tensor, windows: Tensor,
                    flat_weights: Sequence[Tensor]) -> Tensor:
        if _needs_grad(utterances, *flat_weights):
            return MemoryBankFunction.apply(utterances, windows, *flat_weights)
        return forward(utterances, windows, list(flat_weights))[0]
    memory_bank.__doc__ = "Memory bank on fused ops; see :func:`aghmn_fast.reference.memory_bank`."
    return memory_bank


def make_window_gru(window_gru_forward: Callable, window_gru_backward: Callable) -> Callable:
    """``window_gru`` (the signature of :func:`aghmn_fast.reference.window_gru`: the recurrence
    from precomputed projections) on top of the two window-GRU ops, one autograd node per call
    (the op-level rule costs ~200 us more per forward+backward on the reference machine)."""

    class WindowGruFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, proj, pad_proj, weight_hh, bias_hh, windows):
            out, gates = window_gru_forward(proj, pad_proj, weight_hh, bias_hh, windows)
            ctx.save_for_backward(weight_hh, windows, out, gates)
            ctx.num_utterances = proj.shape[1]
            return out

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_out):
            weight_hh, windows, out, gates = ctx.saved_tensors
            need = ctx.needs_input_grad
            grad_proj, grad_pad, grad_ghh = window_gru_backward(
                grad_out.contiguous(), weight_hh, windows, out, gates, ctx.num_utterances)
            grad_w, grad_b = window_hh_grads(grad_ghh, out, need[2], need[3])
            return (grad_proj if need[0] else None, grad_pad if need[1] else None, grad_w,
                    grad_b, None)

    def window_gru(proj: Tensor, pad_proj: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                   windows: Tensor) -> Tensor:
        args = (proj.contiguous(), pad_proj.contiguous(), weight_hh.contiguous(),
                bias_hh.contiguous(), windows.contiguous())
        if _needs_grad(*args[:4]):
            return WindowGruFunction.apply(*args)
        return window_gru_forward(*args)[0]
    window_gru.__doc__ = "Window GRU on fused ops; see :func:`aghmn_fast.reference.window_gru`."
    return window_gru


def make_backend(ops: OpSet) -> Tuple[Callable, Callable]:
    """``(agru, memory_bank)`` with the reference signatures, on top of the four ops of ``ops``."""
    return (make_agru(ops.agru_forward, ops.agru_backward),
            make_memory_bank(ops.window_gru_forward, ops.window_gru_backward))
