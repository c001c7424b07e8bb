"""The registry of implementations: ``(op, implementation) -> callable``, with capability checks.

Three implementations exist: ``"extension"`` (the compiled kernels, :mod:`.extension`),
``"triton"`` and ``"reference"``. The torch dispatcher alone picks the extension's CPU or CUDA
kernel; here the extension is registered once per device it has kernels for, under the
backend names users pass: ``"cpu"`` and ``"cuda"`` (``"extension"`` means whichever of the two
runs on the tensors' device). Every registered backend is a :class:`Backend`: a callable per
public function (the reference signatures, arguments already validated), the devices it runs on,
its priority (higher wins when ``backend=None``) and ``supports``, the capability check asked
before a call: a call it cannot take goes to the next backend for the device.

The ops are not named here: they are the op folders' specs (:mod:`.spec`); a backend built on an
implementation's raw kernels gets every op's function from them (:func:`functions_on`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .common import Kernels
from .catalog import functions
from .spec import OpSpec

__all__ = ["Backend", "register_backend", "backends", "backend_errors", "resolve_backend",
           "candidates", "functions_on", "CUDA_CHOICE", "CUDA_DEFAULT", "LATENCY_ROWS", "OPS"]

#: Public function name -> (its op folder's spec, the function): every op a backend implements.
OPS = functions()


def _always(spec: OpSpec, first, hidden: int, steps: int) -> bool:
    return True


@dataclasses.dataclass
class Backend:
    """A registered backend: one implementation of the ops on ``devices``.

    ``functions``: public function name -> callable (every op of :data:`OPS`; a missing one is
    the reference); ``supports(spec, first, hidden, steps)``: whether its kernels can take a call
    of the op folder ``spec`` (what :class:`~aghmn_fast.ops.spec.Function` ``.dims`` reads);
    ``refuses``: exception types its kernels raise only to refuse a call they cannot take (never
    for bad input), after which the call goes to the next backend too. The functions are also
    attributes (``backend.agru``).
    """
    name: str
    devices: Tuple[str, ...]
    priority: int  # higher wins when backend=None
    functions: Dict[str, Callable] = dataclasses.field(default_factory=dict)
    implementation: str = ""
    supports: Callable = _always
    refuses: Tuple[type, ...] = ()

    def __post_init__(self):
        self.implementation = self.implementation or self.name
        unknown = sorted(set(self.functions) - set(OPS))
        if unknown:
            raise ValueError(f"backend {self.name!r}: no op named {', '.join(unknown)} "
                             f"(ops: {', '.join(OPS)})")
        self.functions = {name: self.functions.get(name) or fn.reference
                          for name, (_, fn) in OPS.items()}

    def __getattr__(self, name: str) -> Callable:
        functions = self.__dict__.get("functions", {})
        if name in functions:
            return functions[name]
        raise AttributeError(name)


#: ``backend=None`` on CUDA tensors: the backends to try, in order, for every (op, shape class)
#: that :data:`CUDA_CHOICE` does not name. Shape classes: "latency" (at most
#: :data:`LATENCY_ROWS` sequences / windows), "throughput". A GUESS until measured (no GPU has
#: run these kernels yet; replace it with the winners of the first GPU run's timing table,
#: benchmarks/gpu_suite.sh). At batch 1 both the CUDA and the Triton AGRU keep weight_hh in
#: registers for the whole loop (csrc/common/recurrence.cuh); the CUDA step then costs one
#: barrier and two rounds of warp shuffles, while Triton's broadcast multiply-and-sum over a
#: tile padded to a power of two reduces across warps through shared memory every step, so CUDA
#: is guessed first. At larger batches the CUDA kernels share each weight load over a tile of
#: sequences.
CUDA_DEFAULT: Tuple[str, ...] = ("cuda", "triton")
#: (op, shape class) -> the backends to try, where a measurement says otherwise than
#: :data:`CUDA_DEFAULT` (none yet).
CUDA_CHOICE: Dict[Tuple[str, str], Tuple[str, ...]] = {}
LATENCY_ROWS = 16

_REGISTRY: Dict[str, Backend] = {}
_LOAD_ERRORS: Dict[str, str] = {}
_loaded = False


def register_backend(name: str, *, devices: Sequence[str], priority: int,
                     implementation: Optional[str] = None, supports: Optional[Callable] = None,
                     refuses: Tuple[type, ...] = (), **functions: Callable) -> None:
    """Register a backend: one callable per public function, by name (``agru=...``,
    ``memory_bank=...``, ...; the reference signatures, without ``backend``). A function left
    out runs its reference loop; an unknown name raises ``ValueError``.
    """
    _REGISTRY[name] = Backend(name, tuple(devices), priority, dict(functions),
                              implementation or name, supports or _always, tuple(refuses))


def functions_on(kernels: Kernels) -> Dict[str, Callable]:
    """Every public function over an implementation's raw ``kernels`` (its fused path)."""
    return {name: functools.partial(fn.fused, kernels) for name, (_, fn) in OPS.items()}


register_backend("reference", devices=("cpu", "cuda", "meta"), priority=0)


def _load_extension() -> None:
    from . import extension
    try:
        kernels = extension.load_kernels()
    except ImportError as exc:
        _LOAD_ERRORS["cpu"] = _LOAD_ERRORS["cuda"] = f"ImportError: {exc}"
        return
    fns = functions_on(kernels)
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
    from .catalog import specs
    kernels = Kernels()
    for spec in specs():
        kernels.update(spec.load_triton())
    for spec in specs():
        spec.register_autograd(kernels)
    # Under the interpreter (as in the test suite) Triton also runs on CPU tensors, below the
    # reference: an interpreted backend is never picked by default.
    if interpreting():
        register_backend("triton", **functions_on(kernels), devices=("cuda", "cpu"), priority=-1)
    else:
        register_backend("triton", **functions_on(kernels), devices=("cuda",), priority=5)


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
            for name in CUDA_CHOICE.get((op, shape_class), CUDA_DEFAULT):
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
    spec, function = OPS[op]
    first, hidden, steps = function.dims(*args)
    for impl in candidates(backend, first.device, op, rows):
        if not impl.supports(spec, first, hidden, steps):
            continue
        try:
            return impl.functions[op](*args)
        except impl.refuses:
            continue
    raise RuntimeError(f"no backend can run {op} on these {first.device.type} tensors")
