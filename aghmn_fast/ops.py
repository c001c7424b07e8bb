"""The one dispatch point for the two hot ops: ``agru`` and ``memory_bank``.

Backends register themselves with :func:`register_backend`. ``backend=None`` picks the fastest
backend available for the tensors' device (CPU: "cpu" then "reference"; CUDA: per shape class
from :data:`CUDA_CHOICE`, else "cuda", "triton", then "reference").
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import reference
from ._validation import check_agru_args, check_memory_bank_args

__all__ = ["agru", "memory_bank", "window_gru", "backends", "register_backend", "backend_errors",
           "resolve_backend", "CUDA_CHOICE", "LATENCY_ROWS"]


@dataclasses.dataclass
class Backend:
    """A registered implementation of the ops. ``devices``: device types it runs on."""
    name: str
    agru: Callable
    memory_bank: Callable
    devices: Tuple[str, ...]
    priority: int  # higher wins when backend=None
    window_gru: Callable = reference.window_gru


#: ``backend=None`` on CUDA tensors, per (op, shape class): the backends to try, in order.
#: Shape classes: "latency" (at most :data:`LATENCY_ROWS` sequences / windows), "throughput".
#: A GUESS until measured (no GPU has run these kernels yet; replace it with the winners of the
#: first GPU run's timing table, benchmarks/gpu_suite.sh): at batch 1 the Triton AGRU keeps
#: weight_hh in registers while the CUDA kernel re-reads it from shared memory every step; at
#: larger batches the CUDA kernels share each weight load over a tile of sequences.
CUDA_CHOICE: Dict[Tuple[str, str], Tuple[str, ...]] = {
    ("agru", "latency"): ("triton", "cuda"),
    ("agru", "throughput"): ("cuda", "triton"),
    ("memory_bank", "latency"): ("cuda", "triton"),
    ("memory_bank", "throughput"): ("cuda", "triton"),
    ("window_gru", "latency"): ("cuda", "triton"),
    ("window_gru", "throughput"): ("cuda", "triton"),
}
LATENCY_ROWS = 16

_REGISTRY: Dict[str, Backend] = {}
_LOAD_ERRORS: Dict[str, str] = {}
_OPTIONAL_BACKENDS = ("aghmn_fast.backends.cpu", "aghmn_fast.backends.cuda",
                      "aghmn_fast.backends.triton")
_loaded = False


def register_backend(name: str, *, agru: Callable, memory_bank: Callable,
                     devices: Sequence[str], priority: int,
                     window_gru: Optional[Callable] = None) -> None:
    """Register a backend: callables with the reference signatures (without ``backend``).

    ``window_gru`` (optional; the reference loop when None) runs the window GRU from precomputed
    projections, with the signature of :func:`aghmn_fast.reference.window_gru`.
    """
    _REGISTRY[name] = Backend(name, agru, memory_bank, tuple(devices), priority,
                              window_gru or reference.window_gru)


register_backend("reference", agru=reference.agru, memory_bank=reference.memory_bank,
                 devices=("cpu", "cuda", "meta"), priority=0)


def _load_backends() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _OPTIONAL_BACKENDS:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a backend that cannot load is reported, not fatal
            _LOAD_ERRORS[module.rsplit(".", 1)[-1]] = f"{type(exc).__name__}: {exc}"


def backends(device: Optional[str] = None) -> List[str]:
    """Names of the available backends, fastest first; only those for ``device`` if given."""
    _load_backends()
    found = sorted(_REGISTRY.values(), key=lambda b: -b.priority)
    if device is not None:
        kind = torch.device(device).type
        found = [b for b in found if kind in b.devices]
    return [b.name for b in found]


def backend_errors() -> Dict[str, str]:
    """Why each optional backend that failed to load did so (empty when all loaded)."""
    _load_backends()
    return dict(_LOAD_ERRORS)


def resolve_backend(backend: Optional[str], device: torch.device, op: Optional[str] = None,
                    rows: Optional[int] = None) -> Backend:
    """The backend that ``backend`` (a name or None = fastest) means for ``device``.

    With ``backend=None`` on CUDA, ``op`` and ``rows`` (batch or window count) choose from
    :data:`CUDA_CHOICE`; otherwise the highest-priority backend for the device.
    """
    _load_backends()
    if backend is None:
        if device.type == "cuda" and op is not None and rows is not None:
            shape_class = "latency" if rows <= LATENCY_ROWS else "throughput"
            available = backends("cuda")
            for name in CUDA_CHOICE.get((op, shape_class), ()):
                if name in available:
                    return _REGISTRY[name]
        for name in backends(device.type):
            return _REGISTRY[name]
        raise RuntimeError(f"no backend runs on device type {device.type!r}")
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string or None, got {type(backend).__name__}")
    if backend not in _REGISTRY:
        why = _LOAD_ERRORS.get(backend)
        known = ", ".join(backends())
        raise ValueError(f"backend {backend!r} is not available"
                         + (f" ({why})" if why else "") + f"; available: {known}")
    chosen = _REGISTRY[backend]
    if device.type not in chosen.devices:
        raise ValueError(f"backend {backend!r} does not run on {device.type} tensors "
                         f"(it runs on {', '.join(chosen.devices)})")
    return chosen


def agru(x: Tensor, attn: Tensor, weight_ih: Tensor, weight_hh: Tensor,
         bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
         h0: Optional[Tensor] = None, reverse: bool = False,
         backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Attention GRU; see :func:`aghmn_fast.reference.agru` for the contract.

    ``backend``: "reference", "cpu", "triton", "cuda", or None for the fastest available one.
    """
    check_agru_args(x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0)
    return resolve_backend(backend, x.device, "agru", x.shape[0]).agru(
        x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse)


def memory_bank(utterances: Tensor, windows: Tensor, flat_weights: Sequence[Tensor],
                backend: Optional[str] = None) -> Tensor:
    """Fusion-GRU memory over windows; see :func:`aghmn_fast.reference.memory_bank`.

    ``backend``: "reference", "cpu", "triton", "cuda", or None for the fastest available one.
    """
    check_memory_bank_args(utterances, windows, flat_weights)
    chosen = resolve_backend(backend, utterances.device, "memory_bank", windows.shape[0])
    return chosen.memory_bank(utterances, windows, flat_weights)


def window_gru(proj: Tensor, pad_proj: Tensor, weight_hh: Tensor, bias_hh: Tensor, windows: Tensor,
               backend: Optional[str] = None) -> Tensor:
    """The window GRU from precomputed input projections; see
    :func:`aghmn_fast.reference.window_gru`. Returns the states [D, Q, K, H]."""
    rows = windows.shape[0] if isinstance(windows, Tensor) and windows.dim() >= 1 else None
    return resolve_backend(backend, proj.device, "window_gru", rows).window_gru(
        proj, pad_proj, weight_hh, bias_hh, windows)
