"""Raw-op checks of an executor (the CUDA sources on the SIMT emulator, or the registered ops on
a CUDA device: tests/cuda_emulator.py) against the ops' float64 conformance cases
(helpers/op_cases.py), shared by the CUDA launch tests and the register-kernel tests."""
import torch

from conformance import make_windows as conformance_windows
from conformance import randn
from helpers.op_cases import agru_op_expected, agru_op_inputs, window_op_expected, window_op_inputs


def _tol(dtype, want):
    """(rtol, atol) for comparing with a float64 reference of magnitude ``want``."""
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    if dtype == torch.float64:
        return 1e-10, 1e-12 * scale
    return 2e-4, 2e-5 * scale


def assert_matches(got, want, dtype, what):
    """``got`` (in ``dtype``, no NaN) equals the float64 ``want`` within ``dtype``'s tolerance."""
    assert got.dtype == dtype, what
    assert not got.isnan().any(), f"{what}: NaN (unwritten or poisoned output)"
    rtol, atol = _tol(dtype, want)
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _generator():
    """A generator seeded from the global RNG, so that torch.manual_seed fixes the inputs."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))


def agru_inputs(B, T, H, dtype):
    """Fresh random raw-op inputs in ``dtype`` (:func:`helpers.op_cases.agru_op_inputs`)."""
    return [t.to(dtype) for t in agru_op_inputs(B, T, H, _generator())]


def make_windows(Q, K, N):
    """``Q`` random windows of ``K`` slots over ``N`` utterances (the conformance layout)."""
    return conformance_windows(Q, K, N, _generator())


def window_inputs(D, N, Q, K, H, dtype):
    """([proj, pad_proj, weight_hh, bias_hh, grad_output] in ``dtype``, windows): fresh random
    raw window-GRU inputs."""
    gen = _generator()
    proj, pad, w, b = (t.to(dtype) for t in window_op_inputs(D, N, H, gen))
    windows = conformance_windows(Q, K, N, gen)
    return [proj, pad, w, b, randn(D, Q, K, H, gen=gen).to(dtype)], windows


def check_agru(run, B, T, H, dtype, reverse):
    """Raw AGRU ops on executor ``run`` against the float64 reference; returns its results."""
    xproj, attn, w, b, h0, go = agru_inputs(B, T, H, dtype)
    (out_ref, gates_ref), grads_ref = agru_op_expected(xproj, attn, w, b, h0, reverse, go)
    out, gates = run.agru_forward(xproj, attn, w, b, h0, reverse)
    assert_matches(out, out_ref, dtype, "output")
    assert_matches(gates, gates_ref, dtype, "gates")
    grads = run.agru_backward(go, attn, w, h0, out, gates, reverse)
    for name, got, want in zip(("grad_xproj", "grad_attn", "grad_ghh", "grad_h0"), grads,
                               grads_ref):
        assert_matches(got, want, dtype, name)
    return out, gates, grads


def check_window(run, D, N, Q, K, H, dtype):
    """Raw window-GRU ops on executor ``run`` against the float64 reference."""
    (proj, pad, w, b, go), windows = window_inputs(D, N, Q, K, H, dtype)
    (out_ref, gates_ref), grads_ref = window_op_expected(proj, pad, w, b, windows, go)
    out, gates = run.window_gru_forward(proj, pad, w, b, windows)
    assert_matches(out, out_ref, dtype, "output")
    assert_matches(gates, gates_ref, dtype, "gates")
    grads = run.window_gru_backward(go, w, windows, out, gates, N)
    for name, got, want in zip(("grad_proj", "grad_pad_proj", "grad_ghh"), grads, grads_ref):
        assert_matches(got, want, dtype, name)
    return out, gates, grads
