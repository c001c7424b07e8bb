"""Triton kernels of the attention GRU's sequential part (``agru_forward`` / ``agru_backward``).

Semantics: docs/OPS.md. One program per batch tile runs the whole time loop with the state in
registers; ``REVERSE`` (a compile-time flag) serves both directions. The input projection and
the weight gradients are GEMMs done by the caller (:mod:`.autograd`).

The time loops are ``while`` loops over a runtime ``T`` (marked ``do_not_specialize``, so one
compiled kernel serves every sequence length): Triton 3.6's interpreter cannot take a runtime
``range`` bound under NumPy >= 2.4 (triton-lang/triton#9171), and a ``while`` compiles to the
same single loop on the GPU.
"""
from __future__ import annotations

from typing import Tuple

import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op

from ..triton_common import (FLOAT_DTYPES, CompileTargets, _load_square, _mm, _sigmoid,
                             _stream_mm, _tanh, _tile, check_device, check_dims, check_tensor,
                             launch, launch_constants, new_buffer)
from .reference import agru_backward_shapes, agru_forward_shapes

__all__ = ["agru_forward", "agru_backward", "triton_agru_forward", "triton_agru_backward"]


@triton.jit(do_not_specialize=["B", "T"])
def _agru_fwd_kernel(xproj_ptr, attn_ptr, w_ptr, bias_ptr, h0_ptr, out_ptr, gates_ptr, scr_ptr,
                     B, T, H: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr,
                     BK: tl.constexpr, RESIDENT: tl.constexpr, USE_DOT: tl.constexpr,
                     REVERSE: tl.constexpr, IS_F64: tl.constexpr, PRECISION: tl.constexpr):
    ACC = tl.float64 if IS_F64 else tl.float32
    rows64, cols, row_ok, mask = _tile(B, H, HP, BLOCK_B)

    h = tl.load(h0_ptr + rows64[:, None] * H + cols[None, :], mask=mask, other=0.0).to(ACC)
    b_r = tl.load(bias_ptr + cols, mask=cols < H, other=0.0).to(ACC)
    b_n = tl.load(bias_ptr + H + cols, mask=cols < H, other=0.0).to(ACC)
    if RESIDENT:
        w_r = _load_square(w_ptr, H, HP, True).to(ACC)
        w_n = _load_square(w_ptr + H * H, H, HP, True).to(ACC)
    scr_rows = rows64 * HP

    i = 0
    while i < T:
        if REVERSE:
            t = T - 1 - i
        else:
            t = i
        step = rows64 * T + t
        # Inputs of this step do not depend on h: issue their loads before the matmul.
        x_at = xproj_ptr + (step * (2 * H))[:, None] + cols[None, :]
        xr = tl.load(x_at, mask=mask, other=0.0).to(ACC)
        xn = tl.load(x_at + H, mask=mask, other=0.0).to(ACC)
        a = tl.load(attn_ptr + step, mask=row_ok, other=0.0).to(ACC)[:, None]
        if RESIDENT:
            hr = _mm(h, w_r, USE_DOT, PRECISION)
            hn = _mm(h, w_n, USE_DOT, PRECISION)
        else:
            tl.store(scr_ptr + scr_rows[:, None] + cols[None, :], h, mask=row_ok[:, None])
            tl.debug_barrier()
            hr = _stream_mm(scr_ptr, scr_rows, row_ok, w_ptr, H, HP, BLOCK_B, BK, True,
                            USE_DOT, PRECISION)
            hn = _stream_mm(scr_ptr, scr_rows, row_ok, w_ptr + H * H, H, HP, BLOCK_B, BK, True,
                            USE_DOT, PRECISION)
            # The next step overwrites the scratch rows other warps may still be reading.
            tl.debug_barrier()
        hr += b_r[None, :]
        hn += b_n[None, :]
        r = _sigmoid(xr + hr)
        n = _tanh(xn + r * hn)
        h = tl.where(mask, a * n + (1.0 - a) * h, 0.0)

        tl.store(out_ptr + (step * H)[:, None] + cols[None, :],
                 h.to(out_ptr.dtype.element_ty), mask=mask)
        g_at = gates_ptr + (step * (3 * H))[:, None] + cols[None, :]
        g_ty = gates_ptr.dtype.element_ty
        tl.store(g_at, r.to(g_ty), mask=mask)
        tl.store(g_at + H, n.to(g_ty), mask=mask)
        tl.store(g_at + 2 * H, hn.to(g_ty), mask=mask)
        i += 1


@triton.jit(do_not_specialize=["B", "T"])
def _agru_bwd_kernel(gout_ptr, attn_ptr, w_ptr, h0_ptr, out_ptr, gates_ptr,
                     gx_ptr, gattn_ptr, gghh_ptr, gh0_ptr, scr_ptr,
                     B, T, H: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr,
                     BK: tl.constexpr, RESIDENT: tl.constexpr, USE_DOT: tl.constexpr,
                     REVERSE: tl.constexpr, IS_F64: tl.constexpr, PRECISION: tl.constexpr):
    ACC = tl.float64 if IS_F64 else tl.float32
    rows64, cols, row_ok, mask = _tile(B, H, HP, BLOCK_B)

    h0 = tl.load(h0_ptr + rows64[:, None] * H + cols[None, :], mask=mask, other=0.0).to(ACC)
    if RESIDENT:
        w_r = _load_square(w_ptr, H, HP, False).to(ACC)
        w_n = _load_square(w_ptr + H * H, H, HP, False).to(ACC)
    scr_rows = rows64 * (2 * HP)
    carry = tl.zeros([BLOCK_B, HP], dtype=ACC)

    i = 0
    while i < T:
        # Walk the forward order backwards; tp is the step whose state this step consumed.
        if REVERSE:
            t = i
            tp = i + 1
        else:
            t = T - 1 - i
            tp = t - 1
        first = i == T - 1  # the first step of the forward pass starts from h0
        step = rows64 * T + t
        g_at = gates_ptr + (step * (3 * H))[:, None] + cols[None, :]
        r = tl.load(g_at, mask=mask, other=0.0).to(ACC)
        n = tl.load(g_at + H, mask=mask, other=0.0).to(ACC)
        hn = tl.load(g_at + 2 * H, mask=mask, other=0.0).to(ACC)
        a = tl.load(attn_ptr + step, mask=row_ok, other=0.0).to(ACC)[:, None]
        h_seen = tl.load(out_ptr + ((rows64 * T + tp) * H)[:, None] + cols[None, :],
                         mask=mask & (i < T - 1), other=0.0).to(ACC)
        h_prev = tl.where(first, h0, h_seen)
        dh = tl.load(gout_ptr + (step * H)[:, None] + cols[None, :], mask=mask,
                     other=0.0).to(ACC) + carry

        da = tl.sum(dh * (n - h_prev), axis=1)
        tl.store(gattn_ptr + step, da.to(gattn_ptr.dtype.element_ty), mask=row_ok)
        dpn = dh * a * (1.0 - n * n)
        dpr = dpn * hn * r * (1.0 - r)
        dgn = dpn * r
        gx_at = gx_ptr + (step * (2 * H))[:, None] + cols[None, :]
        tl.store(gx_at, dpr.to(gx_ptr.dtype.element_ty), mask=mask)
        tl.store(gx_at + H, dpn.to(gx_ptr.dtype.element_ty), mask=mask)
        gg_at = gghh_ptr + (step * (2 * H))[:, None] + cols[None, :]
        tl.store(gg_at, dpr.to(gghh_ptr.dtype.element_ty), mask=mask)
        tl.store(gg_at + H, dgn.to(gghh_ptr.dtype.element_ty), mask=mask)

        if RESIDENT:
            back = _mm(dpr, w_r, USE_DOT, PRECISION) + _mm(dgn, w_n, USE_DOT, PRECISION)
        else:
            tl.store(scr_ptr + scr_rows[:, None] + cols[None, :], dpr, mask=row_ok[:, None])
            tl.store(scr_ptr + scr_rows[:, None] + HP + cols[None, :], dgn, mask=row_ok[:, None])
            tl.debug_barrier()
            back = _stream_mm(scr_ptr, scr_rows, row_ok, w_ptr, H, HP, BLOCK_B, BK, False,
                              USE_DOT, PRECISION)
            back += _stream_mm(scr_ptr + HP, scr_rows, row_ok, w_ptr + H * H, H, HP, BLOCK_B,
                               BK, False, USE_DOT, PRECISION)
            tl.debug_barrier()
        carry = tl.where(mask, dh * (1.0 - a) + back, 0.0)
        i += 1

    tl.store(gh0_ptr + rows64[:, None] * H + cols[None, :],
             carry.to(gh0_ptr.dtype.element_ty), mask=mask)


def agru_forward(xproj: Tensor, attn: Tensor, weight_hh: Tensor, bias_hh: Tensor, h0: Tensor,
                 reverse: bool) -> Tuple[Tensor, Tensor]:
    """Run the AGRU recurrence over precomputed input projections (docs/OPS.md ``agru_forward``).

    Returns ``(output [B, T, H], gates [B, T, 3H])``; ``output`` has the input dtype, ``gates``
    the state dtype (float32, or float64 for float64 inputs).
    """
    check_dims("xproj", xproj, 3)
    check_dims("weight_hh", weight_hh, 2)
    H = weight_hh.shape[1]
    if H == 0 or weight_hh.shape[0] != 2 * H:
        raise ValueError(f"weight_hh must have shape [2*H, H], got {tuple(weight_hh.shape)}")
    B, T = xproj.shape[0], xproj.shape[1]
    dev, dt = xproj.device, xproj.dtype
    check_device(xproj)
    check_tensor("xproj", xproj, (B, T, 2 * H), dev, (dt,))
    check_tensor("attn", attn, (B, T), dev, (dt,))
    check_tensor("weight_hh", weight_hh, (2 * H, H), dev, (dt,))
    check_tensor("bias_hh", bias_hh, (2 * H,), dev, (dt,))
    check_tensor("h0", h0, (B, H), dev, (dt,))
    if T == 0:
        raise ValueError("xproj has zero time steps; agru_forward needs at least one")

    cfg, acc, consts = launch_constants(B, H, 2, dt, dev)
    out_shape, gates_shape = agru_forward_shapes(B, T, H)
    output = new_buffer(*out_shape, dtype=dt, device=dev)
    gates = new_buffer(*gates_shape, dtype=acc, device=dev)
    scratch = new_buffer(1 if cfg.resident else B * consts["HP"], dtype=acc, device=dev)
    if B > 0:
        grid = (triton.cdiv(B, cfg.block_b),)
        launch(_agru_fwd_kernel, grid,
               xproj, attn, weight_hh, bias_hh, h0, output, gates, scratch, B, T,
               REVERSE=bool(reverse), **consts)
    return output, gates


def agru_backward(grad_output: Tensor, attn: Tensor, weight_hh: Tensor, h0: Tensor,
                  output: Tensor, gates: Tensor, reverse: bool
                  ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reverse loop of the AGRU (docs/OPS.md ``agru_backward``).

    Returns ``(grad_xproj [B, T, 2H], grad_attn [B, T], grad_ghh [B, T, 2H], grad_h0 [B, H])``
    in the dtypes of ``weight_hh``, ``attn``, ``weight_hh`` and ``h0``.
    """
    check_dims("output", output, 3)
    B, T, H = output.shape
    dev = output.device
    check_device(output)
    check_tensor("output", output, (B, T, H), dev, FLOAT_DTYPES)
    check_tensor("grad_output", grad_output, (B, T, H), dev, FLOAT_DTYPES)
    check_tensor("attn", attn, (B, T), dev, FLOAT_DTYPES)
    check_tensor("weight_hh", weight_hh, (2 * H, H), dev, FLOAT_DTYPES)
    check_tensor("h0", h0, (B, H), dev, FLOAT_DTYPES)
    check_tensor("gates", gates, (B, T, 3 * H), dev, FLOAT_DTYPES)
    if T == 0:
        raise ValueError("output has zero time steps; agru_backward needs at least one")

    cfg, acc, consts = launch_constants(B, H, 2, weight_hh.dtype, dev)
    grad_xproj, grad_attn, grad_ghh, grad_h0 = (
        new_buffer(*shape, dtype=like.dtype, device=dev)
        for shape, like in zip(agru_backward_shapes(B, T, H), (weight_hh, attn, weight_hh, h0)))
    scratch = new_buffer(1 if cfg.resident else B * 2 * consts["HP"], dtype=acc, device=dev)
    if B > 0:
        grid = (triton.cdiv(B, cfg.block_b),)
        launch(_agru_bwd_kernel, grid,
               grad_output, attn, weight_hh, h0, output, gates,
               grad_xproj, grad_attn, grad_ghh, grad_h0, scratch, B, T,
               REVERSE=bool(reverse), **consts)
    return grad_xproj, grad_attn, grad_ghh, grad_h0


# ---- the kernels as torch.ops.aghmn_fast.triton_* ops (torch.compile traces into them; fake
# tensors come for free), with the schemas and semantics of docs/OPS.md ----------------------

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


#: What compile_check compiles: both recurrences (two gate blocks), in both directions.
COMPILE_TARGETS = CompileTargets(gates=2, recurrences=(_agru_fwd_kernel, _agru_bwd_kernel),
                                 state_ptrs=frozenset({"gates_ptr", "scr_ptr"}))
