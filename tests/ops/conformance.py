"""What the op conformance suites (tests/ops/test_<op>.py) sweep, and how they compare.

Every implementation of the ops runs the same checks against the float64 reference of
``aghmn_fast.ops.<op>.reference``, at two levels: the raw ops of docs/OPS.md (``agru_forward`` /
``agru_backward``, ``window_gru_forward`` / ``window_gru_backward``: outputs, saved gates and every
gradient output) and the public functions (``agru``, ``window_gru``, ``memory_bank``: outputs and
the gradient of every input, through the implementation's autograd).

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
import math
import os
from typing import Optional, Tuple

import pytest
import torch

from aghmn_fast import ops
from aghmn_fast.ops.agru.autograd import agru_fused
from aghmn_fast.ops.agru.reference import agru_forward_ref
from aghmn_fast.ops.common import Kernels
from aghmn_fast.ops.window_gru.autograd import memory_bank_fused, window_gru_fused
from aghmn_fast.ops.window_gru.reference import window_gru_forward_ref

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
    """One implementation: its raw kernels and how its public functions are reached."""
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

    def agru(self, *args, reverse=False):
        if self.backend is not None:
            return ops.agru(*args, reverse=reverse, backend=self.backend)
        return agru_fused(self.kernels, *args, reverse=reverse)

    def window_gru(self, *args):
        if self.backend is not None:
            return ops.window_gru(*args, backend=self.backend)
        return window_gru_fused(self.kernels, *args)

    def memory_bank(self, utterances, windows, flat_weights):
        if self.backend is not None:
            return ops.memory_bank(utterances, windows, flat_weights, backend=self.backend)
        return memory_bank_fused(self.kernels, utterances, windows, flat_weights)


def _namespace_kernels(prefix: str) -> Kernels:
    ns = torch.ops.aghmn_fast
    return Kernels(*(getattr(ns, prefix + name) for name in Kernels._fields))


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
        kernels = Kernels(emulated.agru_forward, emulated.agru_backward,
                          emulated.window_gru_forward, emulated.window_gru_backward)
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

#: dtype -> (kind, tolerance). "max": max |got - want| <= tol * max(1, max |want|);
#: "rms": relative RMS error <= tol (bfloat16 / float16 results: a few elements may round far).
TOLERANCE = {D64: ("max", 1e-10), F32: ("max", 2e-5), BF16: ("rms", 2e-2), F16: ("rms", 5e-3)}


def saved_dtype(dtype):
    """The dtype of the saved activations (gates) for inputs in ``dtype``: float16/bfloat16
    inputs keep float32 state (docs/OPS.md)."""
    return F32 if dtype in (BF16, F16) else dtype


def assert_close(got: Optional[torch.Tensor], want: torch.Tensor, dtype, what: str,
                 stored=None) -> None:
    """``got`` (in ``dtype``, any device) against the float64 reference ``want``; no NaN or Inf
    anywhere (outputs are NaN-poisoned where the harness allows, so unwritten elements fail).
    ``stored``: the dtype ``got`` must have when it differs from ``dtype`` (saved state)."""
    assert got is not None, f"{what}: missing (no gradient)"
    stored = dtype if stored is None else stored
    assert got.dtype == stored, f"{what}: dtype {got.dtype}, expected {stored}"
    got = got.detach().to("cpu", D64)
    want = want.detach().to("cpu", D64)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{what}: NaN/Inf (unwritten or poisoned output)"
    if not want.numel():
        return
    kind, tol = TOLERANCE[dtype]
    if kind == "rms":
        rel = ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
        assert rel <= tol, f"{what}: relative RMS error {rel:.3g} > {tol:g}"
        return
    err = (got - want).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * {scale:.3g}"


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


# ---- raw-op inputs and their float64 reference results ----------------------------------------

def agru_op_inputs(B, T, H, gen):
    """(xproj, attn, weight_hh, bias_hh, h0, grad_output) in float64; position 1 is a pad step
    (attention 0: the state must pass through unchanged)."""
    attn = torch.rand(B, T, generator=gen, dtype=D64)
    if T > 2:
        attn[:, 1] = 0
    return (randn(B, T, 2 * H, gen=gen), attn, randn(2 * H, H, gen=gen, scale=scaled(H)),
            randn(2 * H, gen=gen, scale=0.1), randn(B, H, gen=gen, scale=0.5),
            randn(B, T, H, gen=gen))


def agru_op_expected(xproj, attn, weight_hh, bias_hh, h0, reverse, grad_output):
    """Reference (output, gates) and (grad_xproj, grad_attn, grad_ghh, grad_h0), float64."""
    xproj, attn, h0 = (t.detach().to(D64).requires_grad_() for t in (xproj, attn, h0))
    tap = torch.zeros(*xproj.shape, dtype=D64, requires_grad=True)
    out, gates = agru_forward_ref(xproj, attn, weight_hh.to(D64), bias_hh.to(D64), h0, reverse,
                                  ghh_tap=tap)
    grads = torch.autograd.grad(out, [xproj, attn, tap, h0], grad_output.to(D64))
    return (out.detach(), gates.detach()), grads


def window_op_inputs(D, N, H, gen):
    """(proj, pad_proj, weight_hh, bias_hh) in float64."""
    return (randn(D, N, 3 * H, gen=gen), randn(D, 3 * H, gen=gen, scale=0.1),
            randn(D, 3 * H, H, gen=gen, scale=scaled(H)), randn(D, 3 * H, gen=gen, scale=0.1))


def window_op_expected(proj, pad_proj, weight_hh, bias_hh, windows, grad_output):
    """Reference (output, gates) and (grad_proj, grad_pad_proj, grad_ghh), float64."""
    proj, pad_proj = (t.detach().to(D64).requires_grad_() for t in (proj, pad_proj))
    D, Q, K, H = grad_output.shape
    tap = torch.zeros(D, Q, K, 3 * H, dtype=D64, requires_grad=True)
    out, gates = window_gru_forward_ref(proj, pad_proj, weight_hh.to(D64), bias_hh.to(D64),
                                        windows, ghh_tap=tap)
    grads = torch.autograd.grad(out, [proj, pad_proj, tap], grad_output.to(D64),
                                allow_unused=True)
    return (out.detach(), gates.detach()), [torch.zeros_like(t) if g is None else g
                                            for g, t in zip(grads, (proj, pad_proj, tap))]
