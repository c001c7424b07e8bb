"""The window GRU and the memory bank built on it: every implementation (tests/ops/
conformance.py) against the float64 reference of aghmn_fast/ops/window_gru/reference.py, at the
raw-op level and through the public ``window_gru`` and ``memory_bank``."""
import pytest
import torch

from aghmn_fast.ops.window_gru.reference import memory_bank_ref, window_gru_ref
from conformance import (D64, F32, IMPLEMENTATIONS, assert_close, grads_of, make_windows, pairs,
                         randn, saved_dtype, scaled, sliding_windows)
from helpers.op_cases import window_op_expected, window_op_inputs

DIRECTIONS = pytest.mark.parametrize("D", [1, 2], ids=["UniF", "BiF"])


# ---- the raw ops: window_gru_forward / window_gru_backward -----------------------------------

# (N, Q, K, H): the model's H = 100 first (the representative of AGHMN_OPS_SUBSET=first,
# tests/ops/conftest.py); one slot; odd H; one warp's worth; 128; 256; a window count over one
# tile.
OP_SIZES = [(11, 6, 5, 100), (1, 1, 1, 3), (9, 7, 4, 5), (6, 5, 3, 33), (5, 4, 3, 128),
            (5, 3, 2, 256), (12, 37, 4, 13)]


@DIRECTIONS
@pytest.mark.parametrize("N,Q,K,H", OP_SIZES)
@pytest.mark.parametrize("impl, dtype", pairs(), indirect=["impl"])
def test_window_gru_ops_match_reference(impl, dtype, N, Q, K, H, D):
    gen = torch.Generator().manual_seed(1000 * N + 10 * Q + H)
    inputs = [t.to(dtype) for t in window_op_inputs(D, N, H, gen)]
    windows = make_windows(Q, K, N, gen)
    grad_output = randn(D, Q, K, H, gen=gen).to(dtype)
    (want_out, want_gates), want_grads = window_op_expected(*inputs, windows, grad_output)
    proj, pad, w, b = (impl.put(t) for t in inputs)
    windows_d, grad_output = impl.put(windows), impl.put(grad_output)
    out, gates = impl.kernels.window_gru_forward(proj, pad, w, b, windows_d)
    assert_close(out, want_out, dtype, "output")
    assert_close(gates, want_gates, dtype, "gates [r | z | n | hn]", saved_dtype(dtype))
    grads = impl.kernels.window_gru_backward(grad_output, w, windows_d, out, gates, N)
    for name, got, want in zip(("grad_proj", "grad_pad_proj", "grad_ghh"), grads, want_grads):
        assert_close(got, want, dtype, name)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)
def test_window_gru_ops_empty_windows(impl):
    """Q = 0, and windows without a single utterance, still write every output."""
    gen = torch.Generator().manual_seed(3)
    proj, pad, w, b = (impl.put(t) for t in window_op_inputs(2, 4, 5, gen))
    windows = impl.put(torch.zeros(0, 3, dtype=torch.int64))
    out, gates = impl.kernels.window_gru_forward(proj, pad, w, b, windows)
    assert out.shape == (2, 0, 3, 5) and gates.shape == (2, 0, 3, 20)
    gp, gpad, gt = impl.kernels.window_gru_backward(impl.put(randn(2, 0, 3, 5, gen=gen)), w,
                                                    windows, out, gates, 4)
    assert not gp.any() and not gpad.any() and gt.shape == (2, 0, 3, 15)
    empty = impl.put(torch.full((3, 2), -1, dtype=torch.int64))
    out, gates = impl.kernels.window_gru_forward(proj, pad, w, b, empty)
    gp, gpad, _ = impl.kernels.window_gru_backward(impl.put(randn(2, 3, 2, 5, gen=gen)), w,
                                                   empty, out, gates, 4)
    assert not gp.any() and gpad.abs().sum() > 0


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)
def test_window_gru_backward_is_deterministic(impl):
    """Many windows share each utterance: the sum of slot gradients onto utterances must not
    depend on timing or thread order (bitwise equal over repeated runs)."""
    gen = torch.Generator().manual_seed(8)
    proj, pad, w, b = (impl.put(t, F32) for t in window_op_inputs(2, 8, 13, gen))
    windows = impl.put(make_windows(40, 8, 8, gen))
    out, gates = impl.kernels.window_gru_forward(proj, pad, w, b, windows)
    grad_output = impl.put(randn(*out.shape, gen=gen), F32)
    first = impl.kernels.window_gru_backward(grad_output, w, windows, out, gates, 8)
    for _ in range(2):
        again = impl.kernels.window_gru_backward(grad_output, w, windows, out, gates, 8)
        for a, b_ in zip(first, again):
            assert torch.equal(a, b_)


# ---- the public functions: window_gru and memory_bank ----------------------------------------

@DIRECTIONS
@pytest.mark.parametrize("impl, dtype", pairs(), indirect=["impl"])
def test_window_gru_matches_reference(impl, dtype, D):
    """ops.window_gru from projections (the fused BiGRU reader's entry point): output and every
    gradient, with and without autograd."""
    gen = torch.Generator().manual_seed(11 + D)
    inputs = window_op_inputs(D, 7, 5, gen)
    windows = make_windows(5, 3, 7, gen)
    args = [impl.put(t, dtype, grad=True) for t in inputs]
    ref_args = [t.to(dtype).to(D64).requires_grad_() for t in inputs]
    got = impl.window_gru(*args, impl.put(windows))
    want = window_gru_ref(*ref_args, windows)
    assert_close(got, want, dtype, "output")
    upstream = (randn(*want.shape, gen=gen),)
    names = ("proj", "pad_proj", "weight_hh", "bias_hh")
    for name, g, r in zip(names, grads_of((got,), upstream, args),
                          grads_of((want,), upstream, ref_args)):
        assert_close(g, r, dtype, f"grad of {name}")
    with torch.no_grad():
        assert_close(impl.window_gru(*args, impl.put(windows)), want, dtype, "output, no grad")


def bank_inputs(N, H, D, gen):
    """(utterances, flat_weights) in float64, flat weights in torch.nn.GRU's order."""
    flat = []
    for _ in range(D):
        flat += [randn(3 * H, H, gen=gen, scale=scaled(H)), randn(3 * H, H, gen=gen, scale=scaled(H)),
                 randn(3 * H, gen=gen, scale=0.2), randn(3 * H, gen=gen, scale=0.2)]
    return randn(N, H, gen=gen), flat


# (N, K, extra windows, H): a dialogue of 40 first (the representative); one utterance; odd H;
# windows longer than the dialogue (K = 40); H = 50, whose 3H = 150 gradient columns span two
# blocks of the Triton scatter; a window count over one tile.
BANK_SIZES = [(40, 10, 5, 20), (1, 1, 0, 3), (6, 5, 3, 7), (11, 4, 9, 17), (5, 40, 2, 9),
              (5, 4, 3, 50), (20, 10, 27, 33)]


@DIRECTIONS
@pytest.mark.parametrize("N,K,extra,H", BANK_SIZES)
@pytest.mark.parametrize("impl, dtype", pairs(), indirect=["impl"])
def test_memory_bank_matches_reference(impl, dtype, N, K, extra, H, D):
    gen = torch.Generator().manual_seed(100 * N + K + H)
    windows = sliding_windows(N, K, extra, gen)
    u, flat = bank_inputs(N, H, D, gen)
    leaves = [impl.put(t, dtype, grad=True) for t in [u] + flat]
    ref_leaves = [t.to(dtype).to(D64).requires_grad_() for t in [u] + flat]
    got = impl.memory_bank(leaves[0], impl.put(windows), leaves[1:])
    want = memory_bank_ref(ref_leaves[0], windows, ref_leaves[1:])
    assert_close(got, want, dtype, "memory")
    upstream = (randn(*want.shape, gen=gen),)
    names = ["utterances"] + [f"flat_weights[{i}]" for i in range(len(flat))]
    for name, g, r in zip(names, grads_of((got,), upstream, leaves),
                          grads_of((want,), upstream, ref_leaves)):
        assert_close(g, r, dtype, f"grad of {name}")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)
def test_memory_bank_unused_utterances_get_zero_gradient(impl):
    gen = torch.Generator().manual_seed(7)
    u, flat = bank_inputs(4, 6, 2, gen)
    leaves = [impl.put(t, grad=True) for t in [u] + flat]
    windows = torch.tensor([[-1, -1, -1], [0, 0, 2], [-1, 2, 0]])  # utterances 1, 3 unused
    got = impl.memory_bank(leaves[0], impl.put(windows), leaves[1:])
    (g_u,) = torch.autograd.grad(got.sum(), [leaves[0]])
    assert not g_u[[1, 3]].any() and g_u[[0, 2]].abs().sum() > 0


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)
def test_window_gru_and_memory_bank_gradcheck(impl):
    gen = torch.Generator().manual_seed(12)
    windows = torch.tensor([[-1, 0, 1], [3, 3, -1], [2, 1, 0]])
    u, flat = bank_inputs(4, 3, 2, gen)
    leaves = [impl.put(t, grad=True) for t in [u] + flat]
    w = impl.put(windows)
    assert torch.autograd.gradcheck(lambda u, *f: impl.memory_bank(u, w, list(f)), leaves,
                                    eps=1e-6, atol=1e-7, fast_mode=impl.slow)
    args = [impl.put(t, grad=True) for t in window_op_inputs(2, 4, 3, gen)]
    assert torch.autograd.gradcheck(lambda *a: impl.window_gru(*a, w), args, eps=1e-6,
                                    atol=1e-7, fast_mode=impl.slow)


@DIRECTIONS
@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)
def test_window_gru_forward_op_gradcheck(impl, D):
    """The raw forward op's own registered autograd (for direct callers of the op)."""
    if not impl.registered:
        pytest.skip(f"{impl.name}'s raw ops are plain functions, not torch.library ops")
    gen = torch.Generator().manual_seed(13)
    args = [impl.put(t, grad=True) for t in window_op_inputs(D, 5, 3, gen)]
    windows = impl.put(torch.tensor([[-1, 0, 1], [2, 2, -1], [4, 3, 0], [-1, -1, 1]]))
    assert torch.autograd.gradcheck(lambda *a: impl.kernels.window_gru_forward(*a, windows)[0],
                                    args, eps=1e-6, atol=1e-7, fast_mode=impl.slow)


@pytest.mark.parametrize("impl, dtype", pairs(dtypes=(F32, D64)), indirect=["impl"])
def test_window_gru_opcheck(impl, dtype):
    if not impl.registered:
        pytest.skip(f"{impl.name}'s raw ops are plain functions, not torch.library ops")
    utils = ["test_schema", "test_autograd_registration", "test_faketensor"]
    if impl.name != "triton-interpreter":
        utils.append("test_aot_dispatch_dynamic")
    gen = torch.Generator().manual_seed(14)
    windows = impl.put(torch.tensor([[-1, 0, 1], [2, 2, -1], [4, 3, 0], [-1, -1, 1]]))
    for D in (1, 2):
        args = [impl.put(t, dtype, grad=True) for t in window_op_inputs(D, 5, 3, gen)]
        torch.library.opcheck(impl.kernels.window_gru_forward.default, (*args, windows),
                              test_utils=utils)
        out, gates = impl.kernels.window_gru_forward(*(a.detach() for a in args), windows)
        torch.library.opcheck(impl.kernels.window_gru_backward.default,
                              (torch.randn_like(out), args[2].detach(), windows, out, gates, 5),
                              test_utils=utils)
