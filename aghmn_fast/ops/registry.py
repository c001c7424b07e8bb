"""The registry of implementations: ``(op, implementation) -> callable``, with capability checks.

Three implementations exist: ``"extension"`` (the compiled kernels, :mod:`.extension`),
``"triton"`` and ``"reference"``. The torch dispatcher alone picks the extension's CPU or CUDA
kernel; here the extension is registered once per device it has kernels for, under the
backend names users pass: ``"cpu"`` and ``"cuda"`` (``"extension"`` means whichever of the two
runs on the tensors' device). Every registered backend is a :class:`Backend`: the callables of
the three ops (the reference signatures, arguments already validated), the devices it runs on,
its priority (higher wins when ``backend=None``) and ``supports``, the capability check asked
before a call: a call it cannot take goes to the next backend for the device.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .agru.autograd import agru_fused
from .agru.reference import agru_ref
from .common import Kernels
from .window_gru.autograd import memory_bank_fused, window_gru_fused
from .window_gru.reference import memory_bank_ref, window_gru_ref

__all__ = ["Backend", "register_backend", "backends", "backend_errors", "resolve_backend",
           "candidates", "implementation_of", "CUDA_CHOICE", "LATENCY_ROWS", "OPS"]

#: The ops every backend implements, and for each how a call's first tensor, hidden size, gate
#: blocks and steps are read from its arguments (what the capability checks look at).
OPS: Dict[str, Callable] = {
    "agru": lambda x, attn, w_ih, w_hh, *rest: (x, w_hh.shape[1], 2, x.shape[1]),
    "memory_bank": lambda u, windows, flat: (u, u.shape[1], 3, windows.shape[1]),
    "window_gru": lambda proj, pad, w_hh, b_hh, windows: (proj, w_hh.shape[-1], 3,
                                                          windows.shape[-1]),
}


def _always(first, hidden, gates, steps) -> bool:
    return True


@dataclasses.dataclass
class Backend:
    """A registered backend: one implementation of the ops on ``devices``.

    ``supports(first, hidden, gates, steps)``: whether its kernels can take a call (see
    :data:`OPS`); ``refuses``: exception types its kernels raise only to refuse a call they
    cannot take (never for bad input), after which the call goes to the next backend too.
    """
    name: str
    agru: Callable
    memory_bank: Callable
    devices: Tuple[str, ...]
    priority: int  # higher wins when backend=None
    window_gru: Callable = window_gru_ref
    implementation: str = ""
    supports: Callable = _always
    refuses: Tuple[type, ...] = ()

    def __post_init__(self):
        self.implementation = self.implementation or self.name


#: ``backend=None`` on CUDA tensors, per (op, shape class): the backends to try, in order.
#: Shape classes: "latency" (at most :data:`LATENCY_ROWS` sequences / windows), "throughput".
#: A GUESS until measured (no GPU has run these kernels yet; replace it with the winners of the
#: first GPU run's timing table, benchmarks/gpu_suite.sh). At batch 1 both the CUDA and the
#: Triton AGRU keep weight_hh in registers for the whole loop (CUDA: csrc/common/recurrence.cuh,
#: float up to H = 128, double up to H = 64); the CUDA step then costs one barrier and two rounds
#: of warp shuffles, while Triton's broadcast multiply-and-sum over a tile padded to a power of
#: two reduces across warps through shared memory every step, so CUDA is guessed first. At
#: larger batches the CUDA kernels share each weight load over a tile of sequences.
CUDA_CHOICE: Dict[Tuple[str, str], Tuple[str, ...]] = {
    ("agru", "latency"): ("cuda", "triton"),
    ("agru", "throughput"): ("cuda", "triton"),
    ("memory_bank", "latency"): ("cuda", "triton"),
    ("memory_bank", "throughput"): ("cuda", "triton"),
    ("window_gru", "latency"): ("cuda", "triton"),
    ("window_gru", "throughput"): ("cuda", "triton"),
}
LATENCY_ROWS = 16

_REGISTRY: Dict[str, Backend] = {}
_LOAD_ERRORS: Dict[str, str] = {}
_loaded = False


def register_backend(name: str, *, agru: Callable, memory_bank: Callable,
                     devices: Sequence[str], priority: int,
                     window_gru: Optional[Callable] = None, implementation: Optional[str] = None,
                     supports: Optional[Callable] = None, refuses: Tuple[type, ...] = ()) -> None:
    """Register a backend: callables with the reference signatures (without ``backend``).

    ``window_gru`` (optional; the reference loop when None) runs the window GRU from precomputed
    projections, with the signature of :func:`aghmn_fast.reference.window_gru`.
    """
    _REGISTRY[name] = Backend(name, agru, memory_bank, tuple(devices), priority,
                              window_gru or window_gru_ref, implementation or name,
                              supports or _always, tuple(refuses))


def _on_kernels(kernels: Kernels) -> Dict[str, Callable]:
    return dict(agru=functools.partial(agru_fused, kernels),
                memory_bank=functools.partial(memory_bank_fused, kernels),
                window_gru=functools.partial(window_gru_fused, kernels))


register_backend("reference", agru=agru_ref, memory_bank=memory_bank_ref,
                 window_gru=window_gru_ref, devices=("cpu", "cuda", "meta"), priority=0)


def _load_extension() -> None:
    from . import extension
    try:
        kernels = extension.load_kernels()
    except ImportError as exc:
        _LOAD_ERRORS["cpu"] = _LOAD_ERRORS["cuda"] = f"ImportError: {exc}"
        return
    fns = _on_kernels(kernels)
    register_backend("cpu", **fns, devices=("cpu",), priority=10, implementation="extension",
                     supports=extension.cpu_supports)
    missing = extension.cuda_kernels_missing()
    if missing is not None:
        _LOAD_ERRORS["cuda"] = f"ImportError: {missing}"
        return
    # NotImplementedError: the CUDA launcher's refusal of a size or of a GPU without a kernel
    # image, should the capability check have let such a call through.
    register_backend("cuda", **fns, devices=("cuda",), priority=20, implementation="extension",
                     supports=extension.kernels_support, refuses=(NotImplementedError,))


def _load_triton() -> None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # any failure to import means no backend, reported by backend_errors
        _LOAD_ERRORS["triton"] = f"ImportError: triton cannot be imported ({type(exc).__name__}: {exc})"
        return
    from .triton_common import interpreting
    if not interpreting() and not torch.cuda.is_available():
        _LOAD_ERRORS["triton"] = ("ImportError: the Triton backend needs a CUDA device (or "
                                  "TRITON_INTERPRET=1 to run its kernels on CPU tensors in "
                                  "Triton's interpreter)")
        return
    from .agru.triton import triton_agru_backward, triton_agru_forward
    from .window_gru.triton import triton_window_gru_backward, triton_window_gru_forward
    from .agru.autograd import register_agru_autograd
    from .window_gru.autograd import register_window_gru_autograd
    kernels = Kernels(triton_agru_forward, triton_agru_backward, triton_window_gru_forward,
                      triton_window_gru_backward)
    register_agru_autograd(kernels.agru_forward, kernels.agru_backward)
    register_window_gru_autograd(kernels.window_gru_forward, kernels.window_gru_backward)
    # Under the interpreter (as in the test suite) Triton also runs on CPU tensors, below the
    # reference: an interpreted backend is never picked by default.
    if interpreting():
        register_backend("triton", **_on_kernels(kernels), devices=("cuda", "cpu"), priority=-1)
    else:
        register_backend("triton", **_on_kernels(kernels), devices=("cuda",), priority=5)


_LOADERS = (("extension", _load_extension), ("triton", _load_triton))


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name, loader in _LOADERS:
        try:
            loader()
        except Exception as exc:  # a backend that cannot load is reported, not fatal
            _LOAD_ERRORS[name] = f"{type(exc).__name__}: {exc}"


def reload() -> None:
    """Forget every loaded backend but the reference and load them again (after the build of
    the extension changed, and for tests)."""
    global _loaded
    for name in [n for n, b in _REGISTRY.items() if b.implementation in ("extension", "triton")]:
        del _REGISTRY[name]
    _LOAD_ERRORS.clear()
    _loaded = False
    _load()


def backends(device: Optional[str] = None) -> List[str]:
    """Names of the available backends, fastest first; only those for ``device`` if given."""
    _load()
    found = sorted(_REGISTRY.values(), key=lambda b: -b.priority)
    if device is not None:
        kind = torch.device(device).type
        found = [b for b in found if kind in b.devices]
    return [b.name for b in found]


def backend_errors() -> Dict[str, str]:
    """Why each optional backend that failed to load did so (empty when all loaded)."""
    _load()
    return dict(_LOAD_ERRORS)


def implementation_of(name: str) -> str:
    """The implementation ("extension", "triton", "reference", ...) behind backend ``name``."""
    _load()
    return _REGISTRY[name].implementation


def resolve_backend(backend: Optional[str], device: torch.device, op: Optional[str] = None,
                    rows: Optional[int] = None) -> Backend:
    """The backend that ``backend`` (a name or None = fastest) means for ``device``.

    With ``backend=None`` on CUDA, ``op`` and ``rows`` (batch or window count) choose from
    :data:`CUDA_CHOICE`; otherwise the highest-priority backend for the device. ``"extension"``
    names the compiled extension on ``device`` ("cpu" or "cuda").
    """
    _load()
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
    if backend == "extension" and device.type in ("cpu", "cuda"):
        backend = device.type
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


def candidates(backend: Optional[str], device: torch.device, op: str,
               rows: Optional[int]) -> Iterator[Backend]:
    """The backend ``backend`` means for this call, then every other backend for the device,
    fastest first: where a call goes when the ones before cannot take it."""
    chosen = resolve_backend(backend, device, op, rows)
    yield chosen
    for name in backends(device.type):
        if name != chosen.name:
            yield _REGISTRY[name]


def call(op: str, backend: Optional[str], rows: Optional[int], args: tuple):
    """Run ``op`` (arguments validated) on the first candidate backend that can take it."""
    first, hidden, gates, steps = OPS[op](*args)
    for impl in candidates(backend, first.device, op, rows):
        if not impl.supports(first, hidden, gates, steps):
            continue
        try:
            return getattr(impl, op)(*args)
        except impl.refuses:
            continue
    raise RuntimeError(f"no backend can run {op} on these {first.device.type} tensors")
