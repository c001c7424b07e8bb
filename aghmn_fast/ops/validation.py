"""Argument checks of the ops ``agru``, ``memory_bank`` and ``window_gru``: one per op, run once
per call by :mod:`aghmn_fast.ops` before any implementation (and by :mod:`aghmn_fast.reference`).

Each check raises a ``TypeError`` or ``ValueError`` whose message names the offending argument,
so that bad input never reaches a kernel (where it would crash or produce silent garbage).

The checks read only shapes, dtypes and devices, never tensor values, with two exceptions that
read values: the NaN/Inf check (off by default, ``AGHMN_CHECK_NAN=1``) and the range check of
``memory_bank``'s window indices. The latter runs always on CPU tensors, but on CUDA tensors
only when ``AGHMN_CHECK_WINDOWS=1`` (or :func:`set_window_check`): reading a value back is a
device synchronisation, which costs a GPU call its asynchrony and makes CUDA-graph capture of
the streaming step impossible. Without the check, the fused CUDA and Triton kernels treat an
index outside [-1, N) as an empty slot (memory-safe, but the result is then meaningless).
"""
from __future__ import annotations

import os

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_nan_check = os.environ.get("AGHMN_CHECK_NAN", "0") == "1"
_window_check = os.environ.get("AGHMN_CHECK_WINDOWS", "0") == "1"


def set_window_check(enabled: bool) -> None:
    """Check ``memory_bank``'s window indices on CUDA tensors too (True), at the cost of one
    device synchronisation per call, or only on CPU tensors (False, the default).

    ``AGHMN_CHECK_WINDOWS=1`` turns it on at import time; a debugging aid.
    """
    global _window_check
    _window_check = bool(enabled)


def window_check_enabled(device: torch.device) -> bool:
    """Whether window indices on ``device`` are range-checked (see :func:`set_window_check`);
    never on the meta device, whose tensors have no values."""
    if device.type == "meta":
        return False
    return device.type == "cpu" or _window_check


def set_nan_check(enabled: bool) -> None:
    """Turn the (costly, host-synchronising) NaN/Inf check of op inputs on or off.

    Off by default; ``AGHMN_CHECK_NAN=1`` turns it on at import time.
    """
    global _nan_check
    _nan_check = bool(enabled)


def _tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _float(name, t, dtype, device):
    _tensor(name, t)
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the input has dtype {dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the input is on {device}")
    return t


def _shape(name, t, shape):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _finite(name, t):
    if _nan_check and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def _windows(windows, N, dev, source):
    # [Q, K] int64 slot indices into N rows, -1 = empty; range-checked where that is cheap.
    _tensor("windows", windows)
    if windows.dtype != torch.int64:
        raise TypeError(f"windows must be an int64 tensor, got dtype {windows.dtype}")
    if windows.device != dev:
        raise ValueError(f"windows is on {windows.device} but {source} is on {dev}")
    if windows.dim() != 2:
        raise ValueError(f"windows must be 2-D [Q, K], got shape {tuple(windows.shape)}")
    Q, K = windows.shape
    if K == 0:
        raise ValueError("windows has K = 0 slots; the window GRU needs at least one")
    if windows.numel() and window_check_enabled(windows.device):
        lo, hi = (int(v) for v in torch.aminmax(windows))  # one reduction, one read-back
        if lo < -1 or hi >= N:
            raise ValueError(f"windows holds an index outside [-1, {N - 1}] "
                             f"({source} has {N} rows)")
    return Q, K


def check_agru_args(x, attn, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None):
    """Validate the arguments of ``agru``; return ``(B, T, D, H)``."""
    _float("x", x, None, None)
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D [batch, time, input_size], got shape {tuple(x.shape)}")
    B, T, D = x.shape
    if T == 0:
        raise ValueError("x has zero time steps; agru needs at least one")
    dt, dev = x.dtype, x.device
    _float("weight_hh", weight_hh, dt, dev)
    if weight_hh.dim() != 2 or weight_hh.shape[0] != 2 * weight_hh.shape[1] or weight_hh.shape[1] == 0:
        raise ValueError(f"weight_hh must have shape [2*H, H], got {tuple(weight_hh.shape)}")
    H = weight_hh.shape[1]
    _float("weight_ih", weight_ih, dt, dev)
    _shape("weight_ih", weight_ih, (2 * H, D))
    _float("attn", attn, dt, dev)
    _shape("attn", attn, (B, T))
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None:
            _float(name, b, dt, dev)
            _shape(name, b, (2 * H,))
    if h0 is not None:
        _float("h0", h0, dt, dev)
        _shape("h0", h0, (B, H))
    for name, t in (("x", x), ("attn", attn), ("h0", h0)):
        if t is not None:
            _finite(name, t)
    return B, T, D, H


def check_memory_bank_args(utterances, windows, flat_weights):
    """Validate the arguments of ``memory_bank``; return ``(N, Q, K, H, num_directions)``."""
    _float("utterances", utterances, None, None)
    if utterances.dim() != 2:
        raise ValueError(f"utterances must be 2-D [N, H], got shape {tuple(utterances.shape)}")
    N, H = utterances.shape
    dt, dev = utterances.dtype, utterances.device
    Q, K = _windows(windows, N, dev, "utterances")
    if not isinstance(flat_weights, (list, tuple)) or len(flat_weights) not in (4, 8):
        raise ValueError("flat_weights must be a list of 4 tensors (one direction) or 8 (two), "
                         "in torch.nn.GRU._flat_weights order")
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    shapes = ((3 * H, H), (3 * H, H), (3 * H,), (3 * H,))
    for i, w in enumerate(flat_weights):
        name = f"flat_weights[{i}] ({names[i % 4]}{'_reverse' if i >= 4 else ''})"
        _float(name, w, dt, dev)
        _shape(name, w, shapes[i % 4])
    _finite("utterances", utterances)
    return N, Q, K, H, len(flat_weights) // 4


def check_window_gru_args(proj, pad_proj, weight_hh, bias_hh, windows):
    """Validate the arguments of ``window_gru``; return ``(D, N, Q, K, H)``."""
    _float("proj", proj, None, None)
    if proj.dim() != 3 or proj.shape[0] not in (1, 2) or proj.shape[2] % 3 or proj.shape[2] == 0:
        raise ValueError(f"proj must have shape [D, N, 3*H] with D = 1 or 2, got "
                         f"{tuple(proj.shape)}")
    D, N, H3 = proj.shape
    H = H3 // 3
    dt, dev = proj.dtype, proj.device
    _float("pad_proj", pad_proj, dt, dev)
    _shape("pad_proj", pad_proj, (D, H3))
    _float("weight_hh", weight_hh, dt, dev)
    _shape("weight_hh", weight_hh, (D, H3, H))
    _float("bias_hh", bias_hh, dt, dev)
    _shape("bias_hh", bias_hh, (D, H3))
    Q, K = _windows(windows, N, dev, "proj")
    _finite("proj", proj)
    return D, N, Q, K, H
