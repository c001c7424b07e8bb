"""The conformance cases of the raw ops: random float64 inputs and the float64 reference's
results, outputs and gradients (by autograd through the references of
aghmn_fast/ops/<op>/reference.py). The op conformance suites (tests/ops) and the CUDA launch
tests (tests/test_cuda_ops.py) both compare against these."""
import torch

from aghmn_fast.ops.agru.reference import agru_forward_ref
from aghmn_fast.ops.window_gru.reference import window_gru_forward_ref
from conformance import D64, randn, scaled


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
