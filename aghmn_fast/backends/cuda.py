"""The "cuda" backend: the fused CUDA kernels (``csrc/cuda/``) behind the shared glue.

Registered only when the compiled extension loads and holds CUDA kernels of the ops (it is built
with them when torch has CUDA and a CUDA toolkit is found); otherwise importing this module raises
ImportError with the reason, which :func:`aghmn_fast.backend_errors` reports.

The kernels run float32 and float64, keep ``weight_hh`` in shared memory and fall back to reading
it from global memory when it does not fit. A call goes to the next backend for CUDA tensors
(Triton if available, else the reference), so callers never see a refusal, when
:func:`kernels_support` says the kernels cannot take it: another dtype (float16, bfloat16), a GPU
whose compute capability the extension holds no code for (:func:`runs_on`), or a hidden size
whose per-step buffers exceed the device's shared memory. Should the extension still refuse
(``NotImplementedError``: it raises that type only for a size that does not fit and for a
missing kernel image, never for bad input), the call falls back the same way.
"""
from __future__ import annotations

import functools
from typing import Tuple

import torch

from .. import _extension, ops

_OP = "aghmn_fast::agru_forward"
_DTYPES = (torch.float32, torch.float64)
#: Machine code (SASS) the extension is built with, and the PTX it embeds (setup.py's nvcc
#: flags; tests/test_gpu_readiness.py keeps the two in step). SASS for sm_XY runs on compute
#: capability X.Y' with Y' >= Y of the same major X; PTX for compute_XY is compiled by the
#: driver for any capability >= X.Y (newer GPUs: forward compatibility).
SASS_ARCHES: Tuple[Tuple[int, int], ...] = ((8, 0), (9, 0))
PTX_ARCH: Tuple[int, int] = (9, 0)
#: The kernels' largest hidden size (kMaxHidden in csrc/cuda/recurrence.cuh).
MAX_HIDDEN = 1 << 16


def runs_on(capability: Tuple[int, int]) -> bool:
    """Whether the extension holds code a GPU of compute ``capability`` (major, minor) can run."""
    major, minor = capability
    sass = any(major == m and minor >= n for m, n in SASS_ARCHES)
    return sass or tuple(capability) >= PTX_ARCH


@functools.lru_cache(maxsize=None)
def _device_limits(index: int) -> Tuple[Tuple[int, int], int]:
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024
    return (props.major, props.minor), int(smem)


def _min_shared_bytes(hidden: int, gates: int, steps: int, itemsize: int) -> int:
    # The smallest layout the launcher can fall back to (weights in global memory, one sequence
    # per block): forward bias + double-buffered state (+ the window GRU's slot indices), or
    # backward double-buffered gate gradients + carry + per-warp partial sums (<= 16 warps).
    forward = (gates + 2) * hidden * itemsize + (4 * steps if gates == 3 else 0)
    backward = (2 * gates + 1) * hidden * itemsize + 2 * 16 * itemsize
    return max(forward, backward) + 64  # alignment padding of the regions


def fits(capability: Tuple[int, int], shared_bytes: int, dtype: torch.dtype, hidden: int,
         gates: int, steps: int) -> bool:
    """Whether the kernels can run a ``dtype`` recurrence of ``gates`` gate blocks, ``hidden``
    units and ``steps`` steps on a GPU of ``capability`` with ``shared_bytes`` of shared memory
    per block (opt-in maximum)."""
    if dtype not in _DTYPES or hidden <= 0 or hidden > MAX_HIDDEN:
        return False
    itemsize = torch.empty((), dtype=dtype).element_size()
    return runs_on(capability) and _min_shared_bytes(hidden, gates, steps, itemsize) <= shared_bytes


def kernels_support(first: torch.Tensor, hidden: int, gates: int, steps: int) -> bool:
    """Whether the CUDA kernels can take a call whose first tensor is ``first`` (see
    :func:`fits`; the GPU is ``first``'s)."""
    if first.device.type != "cuda" or first.dtype not in _DTYPES:
        return False
    index = first.device.index if first.device.index is not None else torch.cuda.current_device()
    capability, smem = _device_limits(index)
    return fits(capability, smem, first.dtype, hidden, gates, steps)


def _require_cuda_kernels() -> None:
    try:
        _extension.load()
    except ImportError as exc:
        raise ImportError(f"the compiled extension is not available ({exc})") from exc
    if not torch._C._dispatch_has_kernel_for_dispatch_key(_OP, "CUDA"):
        why = ("torch has no CUDA" if torch.version.cuda is None
               else "it was built without CUDA sources (no CUDA toolkit found, or AGHMN_NO_CUDA=1)")
        raise ImportError(f"the compiled extension has no CUDA kernels: {why}")


_require_cuda_kernels()

from . import extension_ops  # noqa: E402  (loads the extension's autograd and fake rules)


def _fallback(device: torch.device) -> ops.Backend:
    for name in ops.backends(device.type):
        if name != "cuda":
            return ops.resolve_backend(name, device)
    raise RuntimeError("no fallback backend for CUDA tensors")  # "reference" always exists


def _call(kind: str, first: torch.Tensor, hidden: int, gates: int, steps: int, args: tuple):
    """Run op `kind` on the CUDA kernels, or on the next backend when they cannot take it."""
    if kernels_support(first, hidden, gates, steps):
        try:
            return getattr(extension_ops, kind)(*args)
        except NotImplementedError:  # the extension's refusal: size or kernel image
            pass
    return getattr(_fallback(first.device), kind)(*args)


def agru(x, attn, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, reverse=False):
    """Attention GRU on the CUDA kernels; see :func:`aghmn_fast.reference.agru`."""
    return _call("agru", x, weight_hh.shape[1], 2, x.shape[1],
                 (x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse))


def memory_bank(utterances, windows, flat_weights):
    """Fusion-GRU memory bank on the CUDA kernels; see :func:`aghmn_fast.reference.memory_bank`."""
    return _call("memory_bank", utterances, utterances.shape[1], 3, windows.shape[1],
                 (utterances, windows, flat_weights))


def window_gru(proj, pad_proj, weight_hh, bias_hh, windows):
    """Window GRU from projections on the CUDA kernels; see :func:`aghmn_fast.reference.window_gru`."""
    return _call("window_gru", proj, weight_hh.shape[-1], 3, windows.shape[-1],
                 (proj, pad_proj, weight_hh, bias_hh, windows))


# The glue's window_gru (from precomputed projections) is optional; without it the dispatcher
# uses the reference loop for that entry point.
ops.register_backend("cuda", agru=agru, memory_bank=memory_bank, devices=("cuda",), priority=20,
                     window_gru=window_gru if hasattr(extension_ops, "window_gru") else None)
