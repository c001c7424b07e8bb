"""What the op conformance suites (tests/ops/test_<op>.py) sweep, and how they compare.

Every implementation of the ops runs the same checks against the float64 reference of
``aghmn_fast.ops.<op>.reference``, at two levels: the raw ops of docs/OPS.md (outputs, saved gates and
every gradient output) and the public functions (outputs and the gradient of every input, through
the implementation's autograd). Nothing here names an op: the ops are the op folders' specs
(``aghmn_fast/ops/<op>/op.py``), and each op's inputs and float64 expectations are in its own
``tests/ops/test_<op>.py``.

Implementations (each with the dtypes its kernels run):

- ``cpu``: the compiled extension's C++ kernels (``torch.ops.aghmn_fast.*`` on CPU tensors).
- ``triton-interpreter``: the Triton kernels in Triton's interpreter on CPU tensors (the suite's
  default environment, ``TRITON_INTERPRET=1``).
- ``emulated-cuda``: the CUDA kernels and launchers compiled for the CPU SIMT emulator
  (tests/cuda_emulator.py), behind the same autograd Functions as the others.
- ``cuda`` and ``triton-gpu``: the compiled CUDA and Triton kernels on a GPU (skipped without
  one; ``AGHMN_TRITON_GPU=1`` selects compiled Triton instead of the interpreter).

The reference itself is the oracle; tests/test_reference.py checks it against ``torch.nn.GRU``
and a hand-unrolled step.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional, Tuple

import pytest
import torch

from aghmn_fast import ops
from aghmn_fast.ops.common import Kernels
from aghmn_fast.ops.registry import OPS
from aghmn_fast.ops.catalog import specs

D64, F32 = torch.float64, torch.float32
BF16, F16 = torch.bfloat16, torch.float16
ON_GPU_TRITON = os.environ.get("AGHMN_TRITON_GPU", "0") == "1"

#: name -> the dtypes its kernels run.
DTYPES = {
    "cpu": (F32, D64),
    "triton-interpreter": (F32, D64, BF16, F16),
    "emulated-cuda": (F32, D64),
    "cuda": (F32, D64),
    "triton-gpu": (F32, D64, BF16, F16),
}


def _here():
    """The implementations this machine sweeps, known at collection so that a CPU machine does
    not list hundreds of GPU skips (test_agru.py reports the missing ones, once). With
    ``AGHMN_TRITON_GPU=1`` (the GPU suite, benchmarks/gpu_suite.sh) only the GPU ones: the CPU
    ones gain nothing from a GPU loan and CI runs them."""
    if ON_GPU_TRITON:
        return ("cuda", "triton-gpu") if torch.cuda.is_available() else ()
    names = ("cpu", "triton-interpreter", "emulated-cuda")
    return names + (("cuda",) if torch.cuda.is_available() else ())


IMPLEMENTATIONS = _here()


def pairs(*, dtypes=None, names=IMPLEMENTATIONS):
    """pytest params (implementation, dtype) for every implementation and each of its dtypes
    (restricted to ``dtypes`` if given)."""
    return [pytest.param(name, dtype, id=f"{name}-{str(dtype).replace('torch.', '')}")
            for name in names for dtype in DTYPES[name] if dtypes is None or dtype in dtypes]


@dataclasses.dataclass
class Implementation:
    """One implementation: its raw kernels (every op folder's, ``impl.kernels.<raw op>``) and
    its public functions (``impl.<function>(*args)``: through the registry under ``backend``,
    or, without one, the function's autograd over ``kernels``)."""
    name: str
    device: torch.device
    kernels: Kernels
    backend: Optional[str]  # registry name for ops.agru(..., backend=); None: the Functions
    registered: bool        # the raw ops are torch.library ops (opcheck applies)

    @property
    def slow(self) -> bool:
        """Interpreted or emulated: gradcheck uses its fast mode (a random projection of the
        Jacobian instead of every column)."""
        return self.name in ("triton-interpreter", "emulated-cuda")

    def put(self, t: Optional[torch.Tensor], dtype=None, grad=False):
        """``t`` on this implementation's device (in ``dtype`` if given), a fresh leaf."""
        if t is None:
            return None
        t = t.detach().to(self.device, dtype if dtype is not None and t.is_floating_point()
                          else t.dtype)
        return t.requires_grad_(grad)

    def __getattr__(self, name: str):
        if name not in OPS:
            raise AttributeError(name)
        if self.backend is not None:
            public = getattr(ops, name)
            return lambda *args, **kwargs: public(*args, **kwargs, backend=self.backend)
        fused = OPS[name][1].fused
        return lambda *args, **kwargs: fused(self.kernels, *args, **kwargs)


def raw_op_names():
    """Every op folder's raw ops (docs/OPS.md)."""
    return [name for spec in specs() for name in spec.raw_ops]


def _namespace_kernels(prefix: str) -> Kernels:
    ns = torch.ops.aghmn_fast
    return Kernels({name: getattr(ns, prefix + name) for name in raw_op_names()})


def _triton_available() -> None:
    pytest.importorskip("triton", reason="triton cannot be imported: no Triton backend")
    if "triton" not in ops.backends():
        pytest.fail(f"triton imports but its backend did not load: "
                    f"{ops.backend_errors().get('triton')}")


def make_implementation(name: str, request) -> Implementation:
    """The implementation ``name``, or a skip saying why it cannot run here."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    if name == "cpu":
        if "cpu" not in ops.backends("cpu"):
            pytest.skip(f"the C++ CPU ops are not built: {ops.backend_errors().get('cpu')}")
        return Implementation(name, cpu, _namespace_kernels(""), "cpu", True)
    if name == "triton-interpreter":
        if ON_GPU_TRITON:
            pytest.skip("AGHMN_TRITON_GPU=1: Triton runs compiled on the GPU, not interpreted")
        _triton_available()
        return Implementation(name, cpu, _namespace_kernels("triton_"), "triton", True)
    if name == "emulated-cuda":
        emulated = request.getfixturevalue("emulated")
        kernels = Kernels({name: getattr(emulated, name) for name in raw_op_names()})
        return Implementation(name, cpu, kernels, None, False)
    if name == "cuda":
        from cuda_emulator import require_cuda
        require_cuda()
        return Implementation(name, gpu, _namespace_kernels(""), "cuda", True)
    if name == "triton-gpu":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        if not ON_GPU_TRITON:
            pytest.skip("Triton on the GPU runs with AGHMN_TRITON_GPU=1 (benchmarks/gpu_suite.sh)")
        _triton_available()
        return Implementation(name, gpu, _namespace_kernels("triton_"), "triton", True)
    raise ValueError(f"unknown implementation {name!r}")


# ---- comparison ------------------------------------------------------------------------------

#: dtype -> (kind, tolerance), for every implementation and device: the one table of the
#: conformance sweep, which is also the GPU suite's correctness stage (benchmarks/gpu_suite.py).
#: "max": max |got - want| <= tol * max(1, max |want|); "rms": relative RMS error <= tol. The
#: reference sees the inputs rounded to ``dtype``, so the error is the implementation's own
#: arithmetic, not the rounding of its inputs. Why these values (the measured worst cases are in
#: docs/results/gpu-status.md, "Conformance tolerances"):
#: - float32 1e-5: the kernel spec's bound for the C++ kernels and docs/RESULTS.md's GPU target;
#:   the whole CPU sweep stays well inside it. No GPU entry: TF32 is off unless asked for
#:   (:data:`TF32_TOLERANCE`), and a GPU's other summation order (warp shuffles, tl.sum trees)
#:   moves a sum of H terms by a few ulp of its terms, far below 1e-5 at the model's sizes. The
#:   kernel spec allows ~1e-4 for Triton/CUDA; no GPU has run them yet, and the GPU suite's
#:   correctness stage records every error, so a first GPU run shows which bound holds.
#: - float64 1e-10: the kernels and the reference differ only in summation order.
#: - bfloat16 2e-2 and float16 5e-3, relative RMS: results are rounded to the half type (unit
#:   roundoff 2^-8 and 2^-11) after half-precision input projections, the state stays float32.
#:   The RMS and not the maximum: a gradient element summed from cancelling terms can round far
#:   from its small true value while the tensor as a whole is right.
TOLERANCE = {D64: ("max", 1e-10), F32: ("max", 1e-5), BF16: ("rms", 2e-2), F16: ("rms", 5e-3)}

#: float32 with TF32 allowed (``triton_common.set_allow_tf32``, off by default), the one
#: device-specific bound: on a GPU ``tl.dot`` then rounds h and the weights to 10 mantissa bits
#: before every step's matmul (about 3e-4 relative per step, compounding over the steps).
TF32_TOLERANCE = ("max", 3e-3)

#: ``AGHMN_CONFORMANCE_LOG=<file>``: every comparison of :func:`assert_close` appends one JSON
#: line to the file (the running test, what was compared, dtype, measured error, tolerance), so
#: that a run reports how close each implementation came, not only whether it passed (the GPU
#: suite's correctness stage reads it).
LOG_ENV = "AGHMN_CONFORMANCE_LOG"


def saved_dtype(dtype):
    """The dtype of the saved activations (gates) for inputs in ``dtype``: float16/bfloat16
    inputs keep float32 state (docs/OPS.md)."""
    return F32 if dtype in (BF16, F16) else dtype


def relative_error(got: torch.Tensor, want: torch.Tensor, kind: str) -> float:
    """The error a tolerance of ``kind`` bounds: max |got - want| / max(1, max |want|) ("max"),
    or |got - want| / |want| in the 2-norm ("rms"); inf when ``got`` is not finite."""
    got = got.detach().to("cpu", D64)
    want = want.detach().to("cpu", D64)
    if not torch.isfinite(got).all():
        return math.inf
    if not want.numel():
        return 0.0
    if kind == "rms":
        return ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
    return (got - want).abs().max().item() / max(1.0, want.abs().max().item())


def _log(what: str, dtype, kind: str, tol: float, error: Optional[float]) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    if error is not None and not math.isfinite(error):
        error = None  # strict JSON; the test's failure message says NaN/Inf
    with open(path, "a") as f:
        f.write(json.dumps({"test": test, "what": what, "dtype": str(dtype).replace("torch.", ""),
                            "kind": kind, "error": error, "tolerance": tol}) + "\n")


def assert_close(got: Optional[torch.Tensor], want: torch.Tensor, dtype, what: str,
                 stored=None, tolerance: Optional[Tuple[str, float]] = None) -> None:
    """``got`` (in ``dtype``, any device) against the float64 reference ``want`` within
    ``TOLERANCE[dtype]`` (or ``tolerance``, a (kind, bound) with a reason: :data:`TF32_TOLERANCE`);
    no NaN or Inf anywhere (outputs are NaN-poisoned where the harness allows, so unwritten
    elements fail). ``stored``: the dtype ``got`` must have when it differs from ``dtype`` (saved
    state). Logged under :data:`LOG_ENV` (error None: no finite value to compare)."""
    kind, tol = TOLERANCE[dtype] if tolerance is None else tolerance
    error = None
    try:
        assert got is not None, f"{what}: missing (no gradient)"
        stored = dtype if stored is None else stored
        assert got.dtype == stored, f"{what}: dtype {got.dtype}, expected {stored}"
        assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        error = relative_error(got, want, kind)
        assert math.isfinite(error), f"{what}: NaN/Inf (unwritten or poisoned output)"
        label = "relative RMS error" if kind == "rms" else "max error / max(1, max |reference|)"
        assert error <= tol, f"{what}: {label} {error:.3g} > {tol:g}"
    finally:
        _log(what, dtype, kind, tol, error)


def grads_of(outputs: Tuple[torch.Tensor, ...], upstream: Tuple[torch.Tensor, ...], leaves):
    """Gradients of ``sum(output * upstream)`` with respect to ``leaves`` (upstream cast to each
    output's dtype and device)."""
    total = sum((o * u.to(o.device, o.dtype)).sum() for o, u in zip(outputs, upstream))
    return torch.autograd.grad(total, leaves)


def randn(*shape, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=D64) * scale


def make_windows(Q: int, K: int, N: int, gen: torch.Generator) -> torch.Tensor:
    """[Q, K] windows as the model builds them (left padding), plus the hard cases: holes, a
    window with no utterance at all, one utterance in every slot, repeats within and across
    windows, and utterances no window uses (N - 2 and N - 1 when N > 2)."""
    used = max(1, N - 2)
    w = torch.randint(0, used, (Q, K), generator=gen)
    for q in range(Q):
        w[q, : q % K] = -1
    if Q > 1:
        w[1] = 0
    if Q > 2:
        w[2] = -1
    if Q > 3 and K > 2:
        w[3, K // 2] = -1
    return w


def sliding_windows(N: int, K: int, extra: int = 0,
                    gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """The windows the model builds (the K utterances up to each one, -1 before the start),
    plus ``extra`` random ones with repeats and empty slots anywhere (drawn from ``gen``, a
    generator seeded 0 when None)."""
    idx = torch.arange(N).unsqueeze(1) - torch.arange(K - 1, -1, -1).unsqueeze(0)
    windows = torch.where(idx < 0, torch.full_like(idx, -1), idx)
    if extra:
        gen = torch.Generator().manual_seed(0) if gen is None else gen
        rand = torch.randint(-1, N, (extra, K), generator=gen)
        rand[0] = rand[0, 0].clamp(min=0)  # one window repeating a single utterance
        windows = torch.cat([windows, rand])
    return windows


def scaled(H: int) -> float:
    """Weight scale that keeps the gates out of saturation for hidden size H."""
    return 1.0 / math.sqrt(H)
