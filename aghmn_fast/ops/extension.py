"""The compiled extension as an implementation of the ops: its kernels (``torch.ops.aghmn_fast.*``,
schemas in ``csrc/library.cpp``) with their fake and autograd rules, and what its CUDA kernels
can take.

One implementation, two devices: the torch dispatcher alone picks the CPU or the CUDA kernel of
each op from the tensors' device. The Python layer only asks, before choosing this
implementation, whether its kernels can take a call (:func:`cpu_supports`,
:func:`kernels_support`): the kernels run float32 and float64; the CUDA kernels also need a GPU
whose compute capability the extension holds code for (:func:`runs_on`) and per-step buffers
that fit the device's shared memory (:func:`fits`). A call they cannot take goes to the next
implementation (Triton where available, else the reference), so callers never see a refusal.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

from .. import _extension
from .common import Kernels
from .cuda_arches import PTX_ARCH, SASS_ARCHES  # the build's GPU code (one list)
from .catalog import specs
from .spec import OpSpec

_DTYPES = (torch.float32, torch.float64)
#: The kernels' largest hidden size (kMaxHidden in csrc/common/recurrence.cuh).
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


def fits(capability: Tuple[int, int], shared_bytes: int, dtype: torch.dtype, hidden: int,
         steps: int, spec: OpSpec) -> bool:
    """Whether the CUDA kernels of the op folder ``spec`` can run a ``dtype`` recurrence of
    ``hidden`` units and ``steps`` steps on a GPU of ``capability`` with ``shared_bytes`` of
    shared memory per block (opt-in maximum); ``spec.min_shared_bytes`` is the op's need."""
    if dtype not in _DTYPES or hidden <= 0 or hidden > MAX_HIDDEN:
        return False
    itemsize = torch.empty((), dtype=dtype).element_size()
    return (runs_on(capability)
            and spec.min_shared_bytes(hidden, steps, itemsize) <= shared_bytes)


def kernels_support(spec: OpSpec, first: torch.Tensor, hidden: int, steps: int) -> bool:
    """Whether the CUDA kernels of ``spec`` can take a call whose first tensor is ``first``
    (see :func:`fits`; the GPU is ``first``'s)."""
    if first.device.type != "cuda" or first.dtype not in _DTYPES:
        return False
    index = first.device.index if first.device.index is not None else torch.cuda.current_device()
    capability, smem = _device_limits(index)
    return fits(capability, smem, first.dtype, hidden, steps, spec)


def cuda_kernels_missing() -> Optional[str]:
    """Why the loaded extension holds no CUDA kernels of the ops (None when it does)."""
    raw = [f"aghmn_fast::{name}" for spec in specs() for name in spec.raw_ops]
    if all(torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA") for op in raw):
        return None
    why = ("torch has no CUDA" if torch.version.cuda is None
           else "it was built without CUDA sources (no CUDA toolkit found, or AGHMN_NO_CUDA=1)")
    return f"the compiled extension has no CUDA kernels: {why}"


def cpu_supports(spec: OpSpec, first: torch.Tensor, hidden: int, steps: int) -> bool:
    """Whether the CPU kernels take a call whose first tensor is ``first`` (float32, float64)."""
    return first.dtype in _DTYPES


_kernels: Optional[Kernels] = None


def load_kernels() -> Kernels:
    """Load the extension (ImportError when it is not built) and register its ops' fake and
    autograd rules, once; return its raw kernels (every op folder's)."""
    global _kernels
    if _kernels is None:
        _extension.load()
        ns = torch.ops.aghmn_fast
        kernels = Kernels({name: getattr(ns, name).default
                           for spec in specs() for name in spec.raw_ops})
        for spec in specs():
            spec.register_fakes(kernels)
            spec.register_autograd(kernels)
        _kernels = kernels
    return _kernels
