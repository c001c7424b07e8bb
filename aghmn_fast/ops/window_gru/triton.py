"""Triton kernels of the memory bank's window GRU (``window_gru_forward`` / ``_backward``).

Semantics: docs/OPS.md. One launch covers both directions: program (window tile, direction d)
runs the K slots of its windows in order (d = 0) or backwards (d = 1); the direction is the
program's grid index rather than a compile-time flag, so that both run as CTAs of one launch.
Each slot's input projection is gathered from the per-utterance ``proj`` by window index (an
empty slot takes ``pad_proj``), so an utterance is projected once however many windows hold it.

The backward kernel writes per-slot projection gradients; a second, deterministic kernel sums
them onto utterances: the slots are sorted by utterance index once with a stable torch sort,
and one program per (utterance, direction, column block) adds its slots in that fixed order.
No floating-point atomics, so the result is bitwise reproducible on every device.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op

from ..common import segment_offsets
from .reference import window_gru_backward_shapes, window_gru_forward_shapes
from ..triton_common import (FLOAT_DTYPES, CompileTargets, _load_square, _mm, _sigmoid,
                             _stream_mm, _tanh, _tile, check_device, check_dims, check_tensor,
                             launch, launch_constants, new_buffer)

__all__ = ["window_gru_forward", "window_gru_backward", "triton_window_gru_forward",
           "triton_window_gru_backward"]


@triton.jit(do_not_specialize=["Q", "K", "N"])
def _wgru_fwd_kernel(proj_ptr, pad_ptr, w_ptr, bias_ptr, win_ptr, out_ptr, gates_ptr, scr_ptr,
                     Q, K, N, H: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr,
                     BK: tl.constexpr, RESIDENT: tl.constexpr, USE_DOT: tl.constexpr,
                     IS_F64: tl.constexpr, PRECISION: tl.constexpr):
    ACC = tl.float64 if IS_F64 else tl.float32
    rows64, cols, row_ok, mask = _tile(Q, H, HP, BLOCK_B)
    d = tl.program_id(1)
    col_ok = cols < H
    w_d = w_ptr + d * (3 * H * H)
    b_r = tl.load(bias_ptr + d * (3 * H) + cols, mask=col_ok, other=0.0).to(ACC)
    b_z = tl.load(bias_ptr + d * (3 * H) + H + cols, mask=col_ok, other=0.0).to(ACC)
    b_n = tl.load(bias_ptr + d * (3 * H) + 2 * H + cols, mask=col_ok, other=0.0).to(ACC)
    pad_r = tl.load(pad_ptr + d * (3 * H) + cols, mask=col_ok, other=0.0).to(ACC)
    pad_z = tl.load(pad_ptr + d * (3 * H) + H + cols, mask=col_ok, other=0.0).to(ACC)
    pad_n = tl.load(pad_ptr + d * (3 * H) + 2 * H + cols, mask=col_ok, other=0.0).to(ACC)
    if RESIDENT:
        w_r = _load_square(w_d, H, HP, True).to(ACC)
        w_z = _load_square(w_d + H * H, H, HP, True).to(ACC)
        w_n = _load_square(w_d + 2 * H * H, H, HP, True).to(ACC)
    seq = (d * Q + rows64) * K  # slot 0 of each window of this direction
    scr_rows = (d * Q + rows64) * HP
    h = tl.zeros([BLOCK_B, HP], dtype=ACC)

    i = 0
    while i < K:
        k = i + d * (K - 1 - 2 * i)  # direction 1 walks the window backwards
        idx = tl.load(win_ptr + rows64 * K + k, mask=row_ok, other=-1)
        # Out-of-range indices are the caller's bug; masking them only keeps memory safe.
        has = (idx >= 0) & (idx < N)
        p_at = proj_ptr + ((d * N + idx) * (3 * H))[:, None] + cols[None, :]
        gmask = mask & has[:, None]
        pr = tl.where(has[:, None], tl.load(p_at, mask=gmask, other=0.0).to(ACC), pad_r[None, :])
        pz = tl.where(has[:, None], tl.load(p_at + H, mask=gmask, other=0.0).to(ACC),
                      pad_z[None, :])
        pn = tl.where(has[:, None], tl.load(p_at + 2 * H, mask=gmask, other=0.0).to(ACC),
                      pad_n[None, :])
        if RESIDENT:
            hr = _mm(h, w_r, USE_DOT, PRECISION)
            hz = _mm(h, w_z, USE_DOT, PRECISION)
            hn = _mm(h, w_n, USE_DOT, PRECISION)
        else:
            tl.store(scr_ptr + scr_rows[:, None] + cols[None, :], h, mask=row_ok[:, None])
            tl.debug_barrier()
            hr = _stream_mm(scr_ptr, scr_rows, row_ok, w_d, H, HP, BLOCK_B, BK, True,
                            USE_DOT, PRECISION)
            hz = _stream_mm(scr_ptr, scr_rows, row_ok, w_d + H * H, H, HP, BLOCK_B, BK, True,
                            USE_DOT, PRECISION)
            hn = _stream_mm(scr_ptr, scr_rows, row_ok, w_d + 2 * H * H, H, HP, BLOCK_B, BK,
                            True, USE_DOT, PRECISION)
            tl.debug_barrier()
        r = _sigmoid(pr + hr + b_r[None, :])
        z = _sigmoid(pz + hz + b_z[None, :])
        hn += b_n[None, :]
        n = _tanh(pn + r * hn)
        h = tl.where(mask, (1.0 - z) * n + z * h, 0.0)

        slot = seq + k
        tl.store(out_ptr + (slot * H)[:, None] + cols[None, :],
                 h.to(out_ptr.dtype.element_ty), mask=mask)
        g_at = gates_ptr + (slot * (4 * H))[:, None] + cols[None, :]
        g_ty = gates_ptr.dtype.element_ty
        tl.store(g_at, r.to(g_ty), mask=mask)
        tl.store(g_at + H, z.to(g_ty), mask=mask)
        tl.store(g_at + 2 * H, n.to(g_ty), mask=mask)
        tl.store(g_at + 3 * H, hn.to(g_ty), mask=mask)
        i += 1


@triton.jit(do_not_specialize=["Q", "K"])
def _wgru_bwd_kernel(gout_ptr, w_ptr, out_ptr, gates_ptr, gslot_ptr, gghh_ptr, scr_ptr,
                     Q, K, H: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr,
                     BK: tl.constexpr, RESIDENT: tl.constexpr, USE_DOT: tl.constexpr,
                     IS_F64: tl.constexpr, PRECISION: tl.constexpr):
    ACC = tl.float64 if IS_F64 else tl.float32
    rows64, cols, row_ok, mask = _tile(Q, H, HP, BLOCK_B)
    d = tl.program_id(1)
    w_d = w_ptr + d * (3 * H * H)
    if RESIDENT:
        w_r = _load_square(w_d, H, HP, False).to(ACC)
        w_z = _load_square(w_d + H * H, H, HP, False).to(ACC)
        w_n = _load_square(w_d + 2 * H * H, H, HP, False).to(ACC)
    seq = (d * Q + rows64) * K
    scr_rows = (d * Q + rows64) * (3 * HP)
    carry = tl.zeros([BLOCK_B, HP], dtype=ACC)

    i = 0
    while i < K:
        # This direction's forward order, walked backwards; kp is the slot visited before k.
        k = (K - 1 - i) + d * (2 * i - (K - 1))
        kp = k - 1 + 2 * d
        slot = seq + k
        g_at = gates_ptr + (slot * (4 * H))[:, None] + cols[None, :]
        r = tl.load(g_at, mask=mask, other=0.0).to(ACC)
        z = tl.load(g_at + H, mask=mask, other=0.0).to(ACC)
        n = tl.load(g_at + 2 * H, mask=mask, other=0.0).to(ACC)
        hn = tl.load(g_at + 3 * H, mask=mask, other=0.0).to(ACC)
        # The first visited slot started from h = 0.
        h_prev = tl.load(out_ptr + ((seq + kp) * H)[:, None] + cols[None, :],
                         mask=mask & (i < K - 1), other=0.0).to(ACC)
        dh = tl.load(gout_ptr + (slot * H)[:, None] + cols[None, :], mask=mask,
                     other=0.0).to(ACC) + carry

        dz = dh * (h_prev - n) * z * (1.0 - z)
        dpn = dh * (1.0 - z) * (1.0 - n * n)
        dr = dpn * hn * r * (1.0 - r)
        dgn = dpn * r
        s_at = gslot_ptr + (slot * (3 * H))[:, None] + cols[None, :]
        s_ty = gslot_ptr.dtype.element_ty
        tl.store(s_at, dr.to(s_ty), mask=mask)
        tl.store(s_at + H, dz.to(s_ty), mask=mask)
        tl.store(s_at + 2 * H, dpn.to(s_ty), mask=mask)
        gg_at = gghh_ptr + (slot * (3 * H))[:, None] + cols[None, :]
        gg_ty = gghh_ptr.dtype.element_ty
        tl.store(gg_at, dr.to(gg_ty), mask=mask)
        tl.store(gg_at + H, dz.to(gg_ty), mask=mask)
        tl.store(gg_at + 2 * H, dgn.to(gg_ty), mask=mask)

        if RESIDENT:
            back = (_mm(dr, w_r, USE_DOT, PRECISION) + _mm(dz, w_z, USE_DOT, PRECISION)
                    + _mm(dgn, w_n, USE_DOT, PRECISION))
        else:
            sc_at = scr_ptr + scr_rows[:, None] + cols[None, :]
            tl.store(sc_at, dr, mask=row_ok[:, None])
            tl.store(sc_at + HP, dz, mask=row_ok[:, None])
            tl.store(sc_at + 2 * HP, dgn, mask=row_ok[:, None])
            tl.debug_barrier()
            back = _stream_mm(scr_ptr, scr_rows, row_ok, w_d, H, HP, BLOCK_B, BK, False,
                              USE_DOT, PRECISION)
            back += _stream_mm(scr_ptr + HP, scr_rows, row_ok, w_d + H * H, H, HP, BLOCK_B,
                               BK, False, USE_DOT, PRECISION)
            back += _stream_mm(scr_ptr + 2 * HP, scr_rows, row_ok, w_d + 2 * H * H, H, HP,
                               BLOCK_B, BK, False, USE_DOT, PRECISION)
            tl.debug_barrier()
        carry = tl.where(mask, dh * z + back, 0.0)
        i += 1


@triton.jit(do_not_specialize=["N", "QK"])
def _segment_sum_kernel(gslot_ptr, order_ptr, offsets_ptr, gproj_ptr, gpad_ptr, N, QK,
                        C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    # Segment seg < N is utterance seg; segment N gathers the empty slots (pad_proj).
    seg = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    start = tl.load(offsets_ptr + seg)
    end = tl.load(offsets_ptr + seg + 1)
    acc = tl.zeros([BLOCK_C], dtype=gslot_ptr.dtype.element_ty)
    s = start
    while s < end:
        at = s + tl.arange(0, BLOCK_S)
        ok = at < end
        slot = tl.load(order_ptr + at, mask=ok, other=0)
        g = tl.load(gslot_ptr + ((d * QK + slot) * C)[:, None] + cols[None, :],
                    mask=ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.sum(g, axis=0)
        s += BLOCK_S
    tl.store(gproj_ptr + (d * N + seg) * C + cols, acc.to(gproj_ptr.dtype.element_ty),
             mask=col_ok & (seg < N))
    tl.store(gpad_ptr + d * C + cols, acc.to(gpad_ptr.dtype.element_ty),
             mask=col_ok & (seg == N))


def _check_windows(windows: Tensor, device: torch.device) -> Tuple[int, int]:
    check_dims("windows", windows, 2)
    check_tensor("windows", windows, tuple(windows.shape), device, (torch.int64,))
    Q, K = windows.shape
    if K == 0:
        raise ValueError("windows has K = 0 slots; the window GRU needs at least one")
    return Q, K


def window_gru_forward(proj: Tensor, pad_proj: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                       windows: Tensor) -> Tuple[Tensor, Tensor]:
    """Run the window GRU of every window, both directions in one launch (docs/OPS.md).

    Returns ``(output [D, Q, K, H], gates [D, Q, K, 4H])``; ``output`` has the dtype of
    ``proj``, ``gates`` the state dtype (float32, or float64 for float64 inputs). Window
    indices must lie in [-1, N) (not checked here, to avoid a device sync; the public
    ``memory_bank`` checks them).
    """
    check_dims("proj", proj, 3)
    D, N, H3 = proj.shape
    if D not in (1, 2) or H3 % 3 or H3 == 0:
        raise ValueError(f"proj must have shape [D in (1, 2), N, 3*H], got {tuple(proj.shape)}")
    H = H3 // 3
    dev, dt = proj.device, proj.dtype
    check_device(proj)
    check_tensor("proj", proj, (D, N, 3 * H), dev, FLOAT_DTYPES)
    check_tensor("pad_proj", pad_proj, (D, 3 * H), dev, (dt,))
    check_tensor("weight_hh", weight_hh, (D, 3 * H, H), dev, (dt,))
    check_tensor("bias_hh", bias_hh, (D, 3 * H), dev, (dt,))
    Q, K = _check_windows(windows, dev)

    cfg, acc, consts = launch_constants(Q, H, 3, dt, dev)
    out_shape, gates_shape = window_gru_forward_shapes(D, Q, K, H)
    output = new_buffer(*out_shape, dtype=dt, device=dev)
    gates = new_buffer(*gates_shape, dtype=acc, device=dev)
    scratch = new_buffer(1 if cfg.resident else D * Q * consts["HP"], dtype=acc,
                          device=dev)
    if Q > 0:
        grid = (triton.cdiv(Q, cfg.block_b), D)
        launch(_wgru_fwd_kernel, grid,
               proj, pad_proj, weight_hh, bias_hh, windows, output, gates, scratch, Q, K, N,
               **consts)
    return output, gates


def _segments(windows: Tensor, num_utterances: int) -> Tuple[Tensor, Tensor]:
    # Slots sorted by utterance (empty slots last, as segment N), each segment in slot order.
    key = windows.reshape(-1)
    key = torch.where(key < 0, torch.full_like(key, num_utterances), key)
    return segment_offsets(key, num_utterances + 1)


def _segment_sum_constants(H: int):
    """The segment sum's constexprs (and warps) for hidden size ``H``: one launch adds the
    3H-wide slot gradients of each utterance."""
    C = 3 * H
    return dict(C=C, BLOCK_S=16, BLOCK_C=min(triton.next_power_of_2(C), 128), num_warps=4)


def window_gru_backward(grad_output: Tensor, weight_hh: Tensor, windows: Tensor, output: Tensor,
                        gates: Tensor, num_utterances: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Reverse loops of the window GRU plus the deterministic scatter onto utterances.

    Returns ``(grad_proj [D, N, 3H], grad_pad_proj [D, 3H], grad_ghh [D, Q, K, 3H])`` in the
    dtype of ``weight_hh``; see docs/OPS.md ``window_gru_backward``.
    """
    check_dims("output", output, 4)
    D, Q, K, H = output.shape
    dev = output.device
    check_device(output)
    if D not in (1, 2):
        raise ValueError(f"output must have shape [D in (1, 2), Q, K, H], "
                         f"got {tuple(output.shape)}")
    if not isinstance(num_utterances, (int, torch.SymInt)) or num_utterances < 0:
        raise ValueError(f"num_utterances must be a non-negative int, got {num_utterances!r}")
    check_tensor("output", output, (D, Q, K, H), dev, FLOAT_DTYPES)
    check_tensor("grad_output", grad_output, (D, Q, K, H), dev, FLOAT_DTYPES)
    check_tensor("weight_hh", weight_hh, (D, 3 * H, H), dev, FLOAT_DTYPES)
    check_tensor("gates", gates, (D, Q, K, 4 * H), dev, FLOAT_DTYPES)
    _check_windows(windows, dev)
    if tuple(windows.shape) != (Q, K):
        raise ValueError(f"windows must have shape {(Q, K)}, got {tuple(windows.shape)}")

    N, dt = num_utterances, weight_hh.dtype
    cfg, acc, consts = launch_constants(Q, H, 3, dt, dev)
    grad_slot = new_buffer(D, Q, K, 3 * H, dtype=acc, device=dev)
    grad_proj, grad_pad, grad_ghh = (new_buffer(*shape, dtype=dt, device=dev)
                                     for shape in window_gru_backward_shapes(D, N, Q, K, H))
    scratch = new_buffer(1 if cfg.resident else D * Q * 3 * consts["HP"], dtype=acc,
                          device=dev)
    if Q > 0:
        grid = (triton.cdiv(Q, cfg.block_b), D)
        launch(_wgru_bwd_kernel, grid,
               grad_output, weight_hh, output, gates, grad_slot, grad_ghh, scratch, Q, K, **consts)
    order, offsets = _segments(windows, N)
    sums = _segment_sum_constants(H)
    grid = (N + 1, D, triton.cdiv(sums["C"], sums["BLOCK_C"]))
    launch(_segment_sum_kernel, grid,
           grad_slot, order, offsets, grad_proj, grad_pad, N, Q * K, **sums)
    return grad_proj, grad_pad, grad_ghh


# ---- the kernels as torch.ops.aghmn_fast.triton_* ops (docs/OPS.md) -----------------------------

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


#: What compile_check compiles: both recurrences (three gate blocks) and the segment sum of the
#: slot gradients (which reads them in the state dtype).
COMPILE_TARGETS = CompileTargets(gates=3, recurrences=(_wgru_fwd_kernel, _wgru_bwd_kernel),
                                 per_hidden=((_segment_sum_kernel, _segment_sum_constants),),
                                 state_ptrs=frozenset({"gates_ptr", "scr_ptr", "gslot_ptr"}),
                                 index_ptrs=frozenset({"win_ptr", "order_ptr", "offsets_ptr"}))
