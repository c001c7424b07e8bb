"""The attention GRU: every implementation (tests/ops/conformance.py) against the float64
reference of aghmn_fast/ops/agru/reference.py, at the raw-op and the public level."""
import pytest
import torch

from aghmn_fast import ops
from aghmn_fast.ops.agru.reference import agru_ref
from conformance import (D64, DTYPES, F32, IMPLEMENTATIONS, ON_GPU_TRITON, assert_close, grads_of,
                         pairs, randn, saved_dtype, scaled)
from helpers.op_cases import agru_op_expected, agru_op_inputs

REVERSE = pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])


#: The registry backend (aghmn_fast.ops.backends) whose kernels each implementation of the sweep
#: runs: the emulated CUDA implementation runs the cuda backend's sources, the interpreter the
#: triton backend's.
RUNS_BACKEND = {"cpu": "cpu", "triton-interpreter": "triton", "emulated-cuda": "cuda",
                "cuda": "cuda", "triton-gpu": "triton"}


def test_every_implementation_is_swept():
    """Every backend the package registers (or tried to, and reports why it could not) is run by
    an implementation of the sweep, and this machine sweeps every implementation it can run: the
    CPU ones always (the GPU suite's AGHMN_TRITON_GPU=1 run leaves them to CI), the GPU ones
    exactly when a CUDA device is present."""
    assert set(RUNS_BACKEND) == set(DTYPES)
    # A loader that raised unexpectedly reports under its own name ("extension"), not a backend's.
    known = (set(ops.backends()) | set(ops.backend_errors())) - {"reference", "extension"}
    unswept = known - set(RUNS_BACKEND.values())
    assert not unswept, f"backends no implementation of tests/ops/conformance.py sweeps: {unswept}"
    cuda = torch.cuda.is_available()
    if ON_GPU_TRITON:
        expected = {"cuda", "triton-gpu"} if cuda else set()
    else:
        expected = {"cpu", "triton-interpreter", "emulated-cuda"} | ({"cuda"} if cuda else set())
    assert set(IMPLEMENTATIONS) == expected, (
        f"swept here: {sorted(IMPLEMENTATIONS)}, runnable here: {sorted(expected)}")
    assert len(IMPLEMENTATIONS) == len(set(IMPLEMENTATIONS))


# ---- the raw ops: agru_forward / agru_backward -----------------------------------------------

# (B, T, H): H = 100 (the model's) at batch 1, the streaming case, first (the representative of
# AGHMN_OPS_SUBSET=first, tests/ops/conftest.py); a single unit and step; odd H; one warp's
# worth; 128; 256 (beyond a 32-lane tile, weights beyond the on-chip budget of some kernel
# variants); a batch over one tile.
OP_SIZES = [(1, 12, 100), (1, 1, 1), (3, 7, 5), (2, 9, 33), (1, 5, 128), (2, 4, 256),
            (11, 5, 20)]


@REVERSE
@pytest.mark.parametrize("B,T,H", OP_SIZES)
@pytest.mark.parametrize("impl, dtype", pairs(), indirect=["impl"])
def test_agru_ops_match_reference(impl, dtype, B, T, H, reverse):
    gen = torch.Generator().manual_seed(1000 * B + 10 * T + H)
    inputs = [t.to(dtype) for t in agru_op_inputs(B, T, H, gen)]  # the reference sees these roundings
    (want_out, want_gates), want_grads = agru_op_expected(*inputs[:5], reverse, inputs[5])
    xproj, attn, w, b, h0, grad_output = (impl.put(t) for t in inputs)
    out, gates = impl.kernels.agru_forward(xproj, attn, w, b, h0, reverse)
    assert_close(out, want_out, dtype, "output")
    assert_close(gates, want_gates, dtype, "gates [r | n | hn]", saved_dtype(dtype))
    grads = impl.kernels.agru_backward(grad_output, attn, w, h0, out, gates, reverse)
    for name, got, want in zip(("grad_xproj", "grad_attn", "grad_ghh", "grad_h0"), grads,
                               want_grads):
        assert_close(got, want, dtype, name)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)
def test_agru_ops_all_zero_attention_keep_h0(impl):
    """Attention 0 everywhere: every state is h0 exactly, grad_h0 is the summed upstream
    gradient, and nothing reaches the inputs."""
    gen = torch.Generator().manual_seed(5)
    xproj, attn, w, b, h0, grad_output = (impl.put(t) for t in agru_op_inputs(2, 5, 33, gen))
    attn.zero_()
    out, gates = impl.kernels.agru_forward(xproj, attn, w, b, h0, False)
    assert torch.equal(out, h0.unsqueeze(1).expand_as(out))
    grads = impl.kernels.agru_backward(grad_output, attn, w, h0, out, gates, False)
    torch.testing.assert_close(grads[3], grad_output.sum(1))
    assert not grads[0].any()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)
def test_agru_ops_empty_batch(impl):
    gen = torch.Generator().manual_seed(6)
    xproj, attn, w, b, h0, grad_output = (impl.put(t) for t in agru_op_inputs(0, 4, 5, gen))
    out, gates = impl.kernels.agru_forward(xproj, attn, w, b, h0, False)
    assert out.shape == (0, 4, 5) and gates.shape == (0, 4, 15)
    grads = impl.kernels.agru_backward(grad_output, attn, w, h0, out, gates, False)
    assert [tuple(g.shape) for g in grads] == [(0, 4, 10), (0, 4), (0, 4, 10), (0, 5)]


# ---- the public function: agru ---------------------------------------------------------------

NAMES = ("x", "attn", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0")


def public_inputs(B, T, D, H, gen, bias=True, h0=True):
    """(x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0) in float64 (biases and h0 None when
    not wanted); the last two steps of sequence 0 are padding (attention 0)."""
    attn = torch.rand(B, T, generator=gen, dtype=D64)
    if T > 2:
        attn[0, -2:] = 0
    return (randn(B, T, D, gen=gen), attn, randn(2 * H, D, gen=gen, scale=scaled(D)),
            randn(2 * H, H, gen=gen, scale=scaled(H)),
            randn(2 * H, gen=gen, scale=0.1) if bias else None,
            randn(2 * H, gen=gen, scale=0.1) if bias else None,
            randn(B, H, gen=gen, scale=0.5) if h0 else None)


def check_public(impl, dtype, inputs, reverse, gen):
    """Output, h_n and the gradient of every input that exists, against the reference."""
    args = [impl.put(t, dtype, grad=True) for t in inputs]
    ref_args = [None if t is None else t.to(dtype).to(D64).requires_grad_() for t in inputs]
    out, h_n = impl.agru(*args, reverse=reverse)
    want_out, want_hn = agru_ref(*ref_args, reverse=reverse)
    assert_close(out, want_out, dtype, "output")
    assert_close(h_n, want_hn, dtype, "h_n")
    upstream = (randn(*want_out.shape, gen=gen), randn(*want_hn.shape, gen=gen))
    present = [i for i, t in enumerate(args) if t is not None]
    grads = grads_of((out, h_n), upstream, [args[i] for i in present])
    want = grads_of((want_out, want_hn), upstream, [ref_args[i] for i in present])
    for i, got, ref in zip(present, grads, want):
        assert_close(got, ref, dtype, f"grad of {NAMES[i]}")


# (B, T, D, H): a long sequence at the model's H = 100 first (the representative), T = 1, B = 1,
# odd H, H not a multiple of 8 or 16, B over a tile (37).
PUBLIC_SIZES = [(2, 40, 16, 100), (1, 1, 3, 2), (3, 1, 5, 7), (1, 5, 4, 9), (2, 7, 6, 17),
                (5, 13, 8, 33), (37, 6, 10, 20)]


@REVERSE
@pytest.mark.parametrize("B,T,D,H", PUBLIC_SIZES)
@pytest.mark.parametrize("impl, dtype", pairs(), indirect=["impl"])
def test_agru_matches_reference(impl, dtype, B, T, D, H, reverse):
    gen = torch.Generator().manual_seed(1000 * B + 100 * T + H)
    check_public(impl, dtype, public_inputs(B, T, D, H, gen), reverse, gen)


@REVERSE
@pytest.mark.parametrize("impl, dtype", pairs(dtypes=(F32, D64)), indirect=["impl"])
def test_agru_without_bias_or_h0(impl, dtype, reverse):
    gen = torch.Generator().manual_seed(7)
    check_public(impl, dtype, public_inputs(3, 6, 5, 11, gen, bias=False, h0=False), reverse,
                 gen)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)
def test_agru_zero_attention_keeps_state_exactly(impl):
    gen = torch.Generator().manual_seed(8)
    x, attn, w_ih, w_hh, b_ih, b_hh, h0 = (impl.put(t, F32) for t in
                                           public_inputs(2, 6, 4, 10, gen))
    attn[:, 3:] = 0
    out, h_n = impl.agru(x, attn, w_ih, w_hh, b_ih, b_hh, h0)
    assert torch.equal(h_n, out[:, 2])
    out_r, _ = impl.agru(x, attn, w_ih, w_hh, b_ih, b_hh, h0, reverse=True)
    assert torch.equal(out_r[:, 3], h0)  # reverse: the padded tail comes first and keeps h0


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)
def test_agru_without_autograd_and_noncontiguous_inputs(impl):
    """No input requires grad (the path that skips the autograd node) and transposed-layout
    inputs: the same values as the reference."""
    gen = torch.Generator().manual_seed(9)
    inputs = public_inputs(3, 5, 4, 6, gen)
    x, attn, w_ih, w_hh, b_ih, b_hh, h0 = (impl.put(t) for t in inputs)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)
    at = attn.t().contiguous().t()
    wt = w_hh.t().contiguous().t()
    assert not (xt.is_contiguous() or at.is_contiguous() or wt.is_contiguous())
    out, h_n = impl.agru(xt, at, w_ih, wt, b_ih, b_hh, h0)
    want_out, want_hn = agru_ref(*inputs)
    assert_close(out, want_out, D64, "output")
    assert_close(h_n, want_hn, D64, "h_n")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)
def test_agru_double_backward_raises(impl):
    """The backward kernels have no derivative: asking for one is an error, never zeros."""
    gen = torch.Generator().manual_seed(10)
    args = [impl.put(t, grad=True) for t in public_inputs(2, 3, 4, 5, gen)]
    out, _ = impl.agru(*args)
    grad_x, = torch.autograd.grad(out.sum(), args[0], create_graph=True)
    with pytest.raises(RuntimeError):
        grad_x.sum().backward()


@REVERSE
@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)
def test_agru_gradcheck(impl, reverse):
    gen = torch.Generator().manual_seed(11)
    args = [impl.put(t, grad=True) for t in public_inputs(2, 3, 4, 3, gen)]
    assert torch.autograd.gradcheck(lambda *a: impl.agru(*a, reverse=reverse), args, eps=1e-6,
                                    atol=1e-7, fast_mode=impl.slow)


@REVERSE
@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)
def test_agru_forward_op_gradcheck(impl, reverse):
    """The raw forward op's own registered autograd (for direct callers of the op)."""
    if not impl.registered:
        pytest.skip(f"{impl.name}'s raw ops are plain functions, not torch.library ops")
    gen = torch.Generator().manual_seed(12)
    args = [impl.put(t, grad=True) for t in agru_op_inputs(2, 4, 3, gen)[:5]]
    assert torch.autograd.gradcheck(lambda *a: impl.kernels.agru_forward(*a, reverse)[0], args,
                                    eps=1e-6, atol=1e-7, fast_mode=impl.slow)


@pytest.mark.parametrize("impl, dtype", pairs(dtypes=(F32, D64)), indirect=["impl"])
def test_agru_opcheck(impl, dtype):
    """torch.library.opcheck of both ops: schema, autograd registration, fake tensors, and
    (where kernels compile: not under the Triton interpreter) AOT dispatch."""
    if not impl.registered:
        pytest.skip(f"{impl.name}'s raw ops are plain functions, not torch.library ops")
    utils = ["test_schema", "test_autograd_registration", "test_faketensor"]
    if impl.name != "triton-interpreter":
        utils.append("test_aot_dispatch_dynamic")
    gen = torch.Generator().manual_seed(13)
    for reverse in (False, True):
        inputs = agru_op_inputs(3, 4, 5, gen)
        args = [impl.put(t, dtype, grad=True) for t in inputs[:5]]
        torch.library.opcheck(impl.kernels.agru_forward.default, (*args, reverse),
                              test_utils=utils)
        xproj, attn, w, b, h0 = (a.detach() for a in args)
        out, gates = impl.kernels.agru_forward(xproj, attn, w, b, h0, reverse)
        torch.library.opcheck(impl.kernels.agru_backward.default,
                              (impl.put(inputs[5], dtype), attn, w, h0, out, gates, reverse),
                              test_utils=utils)
