"""The reference ops against independent computations."""
import pytest
import torch

from aghmn_fast import reference
from aghmn_fast.ops import agru, memory_bank

from helpers.cases import raises_for

D64 = torch.float64


def _agru_args(B, T, D, H, dtype=D64, bias=True):
    x = torch.randn(B, T, D, dtype=dtype)
    attn = torch.rand(B, T, dtype=dtype)
    w_ih = torch.randn(2 * H, D, dtype=dtype) * 0.3
    w_hh = torch.randn(2 * H, H, dtype=dtype) * 0.3
    b_ih = torch.randn(2 * H, dtype=dtype) * 0.1 if bias else None
    b_hh = torch.randn(2 * H, dtype=dtype) * 0.1 if bias else None
    return x, attn, w_ih, w_hh, b_ih, b_hh


def _hand_step(x_t, a_t, h, w_ih, w_hh, b_ih, b_hh):
    H = h.shape[-1]
    W_r, W = w_ih[:H], w_ih[H:]
    U_r, U = w_hh[:H], w_hh[H:]
    r = torch.sigmoid(x_t @ W_r.T + b_ih[:H] + h @ U_r.T + b_hh[:H])
    n = torch.tanh(x_t @ W.T + b_ih[H:] + r * (h @ U.T + b_hh[H:]))
    return a_t[:, None] * n + (1 - a_t[:, None]) * h


@pytest.mark.parametrize("B,T,D,H", [(1, 1, 3, 2), (3, 5, 7, 6), (2, 11, 4, 9)])
def test_agru_matches_hand_unrolled(B, T, D, H):
    x, attn, w_ih, w_hh, b_ih, b_hh = _agru_args(B, T, D, H)
    h0 = torch.randn(B, H, dtype=D64)
    out, hn = reference.agru(x, attn, w_ih, w_hh, b_ih, b_hh, h0)
    h = h0
    for t in range(T):
        h = _hand_step(x[:, t], attn[:, t], h, w_ih, w_hh, b_ih, b_hh)
        torch.testing.assert_close(out[:, t], h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hn, h)


def test_raw_op_references_save_the_gates_and_read_grad_ghh():
    """The raw-op references (what tests/ops compares every kernel's ``gates`` and ``grad_ghh``
    with): gates per step [r | n | hn] (AGRU) and [r | z | n | hn] (window GRU) as computed by
    hand, and the tap's gradient equal to the gradient of h_prev @ weight_hh^T + bias_hh."""
    from aghmn_fast.ops.agru.reference import agru_forward_ref
    from aghmn_fast.ops.window_gru.reference import window_gru_forward_ref
    B, T, H = 2, 4, 3
    x, attn, _, w_hh, _, b_hh = _agru_args(B, T, 2 * H, H)
    h0 = torch.randn(B, H, dtype=D64)
    out, gates = agru_forward_ref(x, attn, w_hh, b_hh, h0, reverse=True)
    h = h0
    for t in reversed(range(T)):
        r = torch.sigmoid(x[:, t, :H] + h @ w_hh[:H].T + b_hh[:H])
        hn = h @ w_hh[H:].T + b_hh[H:]
        n = torch.tanh(x[:, t, H:] + r * hn)
        torch.testing.assert_close(gates[:, t], torch.cat([r, n, hn], -1), rtol=1e-12, atol=1e-12)
        h = attn[:, t, None] * n + (1 - attn[:, t, None]) * h
        torch.testing.assert_close(out[:, t], h, rtol=1e-12, atol=1e-12)
    # d(loss)/d(tap) = d(loss)/d(g): perturbing the tap is perturbing g = h_prev @ W^T + b.
    tap = torch.zeros(B, T, 2 * H, dtype=D64, requires_grad=True)
    b_leaf = b_hh.clone().requires_grad_()
    out, _ = agru_forward_ref(x, attn, w_hh, b_leaf, h0, ghh_tap=tap)
    g_tap, g_b = torch.autograd.grad(out.sum(), [tap, b_leaf])
    torch.testing.assert_close(g_tap.sum((0, 1)), g_b, rtol=1e-12, atol=1e-12)
    N, Q, K = 4, 3, 2
    proj, pad = torch.randn(2, N, 3 * H, dtype=D64), torch.randn(2, 3 * H, dtype=D64)
    w, b = torch.randn(2, 3 * H, H, dtype=D64) * 0.3, torch.randn(2, 3 * H, dtype=D64)
    windows = torch.tensor([[-1, 0], [2, 2], [3, -1]])
    out, gates = window_gru_forward_ref(proj, pad, w, b, windows)
    for d in range(2):
        h = torch.zeros(Q, H, dtype=D64)
        for k in (reversed(range(K)) if d else range(K)):
            p = torch.where(windows[:, k, None] < 0, pad[d], proj[d, windows[:, k].clamp(min=0)])
            g = h @ w[d].T + b[d]
            r = torch.sigmoid(p[:, :H] + g[:, :H])
            z = torch.sigmoid(p[:, H:2 * H] + g[:, H:2 * H])
            n = torch.tanh(p[:, 2 * H:] + r * g[:, 2 * H:])
            torch.testing.assert_close(gates[d, :, k], torch.cat([r, z, n, g[:, 2 * H:]], -1),
                                       rtol=1e-12, atol=1e-12)
            h = (1 - z) * n + z * h
            torch.testing.assert_close(out[d, :, k], h, rtol=1e-12, atol=1e-12)


def test_agru_zero_attention_keeps_state():
    x, attn, w_ih, w_hh, b_ih, b_hh = _agru_args(2, 6, 5, 4)
    attn[:, 2] = 0
    attn[:, 5] = 0
    h0 = torch.randn(2, 4, dtype=D64)
    out, hn = reference.agru(x, attn, w_ih, w_hh, b_ih, b_hh, h0)
    torch.testing.assert_close(out[:, 2], out[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(hn, out[:, 4], rtol=0, atol=0)
    attn.zero_()
    out, hn = reference.agru(x, attn, w_ih, w_hh, b_ih, b_hh, h0)
    torch.testing.assert_close(hn, h0, rtol=0, atol=0)


def test_agru_reverse_is_forward_on_flipped_input():
    x, attn, w_ih, w_hh, b_ih, b_hh = _agru_args(3, 7, 5, 4)
    out_r, hn_r = reference.agru(x, attn, w_ih, w_hh, b_ih, b_hh, reverse=True)
    out_f, hn_f = reference.agru(x.flip(1), attn.flip(1), w_ih, w_hh, b_ih, b_hh)
    torch.testing.assert_close(out_r, out_f.flip(1))
    torch.testing.assert_close(hn_r, hn_f)
    torch.testing.assert_close(hn_r, out_r[:, 0])


def test_agru_without_bias_equals_zero_bias():
    x, attn, w_ih, w_hh, b_ih, b_hh = _agru_args(2, 4, 3, 5)
    a = reference.agru(x, attn, w_ih, w_hh)
    b = reference.agru(x, attn, w_ih, w_hh, torch.zeros_like(b_ih), torch.zeros_like(b_hh))
    torch.testing.assert_close(a, b)


def _gru_and_flat(H, bidirectional):
    gru = torch.nn.GRU(H, H, batch_first=True, bidirectional=bidirectional).double()
    with torch.no_grad():
        for p in gru.parameters():
            p.normal_(0, 0.4)
    return gru, list(gru._flat_weights)


def _stacked_windows(u, windows):
    x = u[windows.clamp(min=0)] * (windows >= 0).unsqueeze(-1).to(u.dtype)
    return x


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("N,K,H", [(1, 1, 3), (7, 4, 5), (12, 10, 8)])
def test_memory_bank_matches_nn_gru(bidirectional, N, K, H):
    u = torch.randn(N, H, dtype=D64)
    gru, flat = _gru_and_flat(H, bidirectional)
    # every query t >= 1 of a dialogue of N utterances, plus a window with a repeated utterance
    rows = []
    for t in range(1, N + 1):
        lo = max(0, t - K)
        idx = list(range(lo, t))
        rows.append([-1] * (K - len(idx)) + idx)
    rows.append([N - 1] * K)
    windows = torch.tensor(rows, dtype=torch.int64)
    got = memory_bank(u, windows, flat, backend="reference")
    x = _stacked_windows(u, windows)
    f, _ = gru(x)
    expect = x + (f[..., :H] + f[..., H:] if bidirectional else f)
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)


def test_memory_bank_gradients_flow_to_every_input():
    u = torch.randn(5, 4, dtype=D64, requires_grad=True)
    gru, flat = _gru_and_flat(4, True)
    flat = [w.detach().clone().requires_grad_() for w in flat]
    windows = torch.tensor([[-1, -1, 0], [-1, 0, 1], [2, 3, 4]])
    assert torch.autograd.gradcheck(lambda u, *w: reference.memory_bank(u, windows, list(w)),
                                    (u, *flat))


AGRU_BAD_INPUTS = [
    (lambda a: a.update(x=torch.randn(2, 3)), "x must be 3-D"),
    (lambda a: a.update(attn=torch.rand(2, 4, dtype=D64)), "attn must have shape"),
    (lambda a: a.update(weight_hh=torch.randn(8, 3, dtype=D64)), "weight_hh must have shape"),
    (lambda a: a.update(weight_ih=a["weight_ih"].float()), "weight_ih has dtype"),
    (lambda a: a.update(h0=torch.randn(2, 5, dtype=D64)), "h0 must have shape"),
    (lambda a: a.update(attn=[1.0]), "attn must be a torch.Tensor"),
    (lambda a: a.update(bias_ih=torch.randn(3, dtype=D64)), "bias_ih must have shape"),
]


def test_agru_bad_input_names_the_argument():
    for bad, match in AGRU_BAD_INPUTS:   # one bad argument each, on fresh good ones; the match names it
        x, attn, w_ih, w_hh, b_ih, b_hh = _agru_args(2, 3, 5, 4)
        args = dict(x=x, attn=attn, weight_ih=w_ih, weight_hh=w_hh, bias_ih=b_ih, bias_hh=b_hh)
        bad(args)
        raises_for(match, (TypeError, ValueError), match, lambda: agru(**args))


def test_memory_bank_bad_input_names_the_argument():
    u = torch.randn(4, 3, dtype=D64)
    _, flat = _gru_and_flat(3, True)
    with pytest.raises(ValueError, match="windows holds an index outside"):
        memory_bank(u, torch.tensor([[0, 4]]), flat)
    with pytest.raises(TypeError, match="windows must be an int64"):
        memory_bank(u, torch.tensor([[0, 1]], dtype=torch.int32), flat)
    with pytest.raises(ValueError, match="flat_weights must be a list"):
        memory_bank(u, torch.tensor([[0, 1]]), flat[:3])
    with pytest.raises(TypeError, match=r"flat_weights\[1\]"):
        memory_bank(u, torch.tensor([[0, 1]]), [flat[0], flat[1].float()] + flat[2:])


def test_nan_check_is_opt_in():
    import aghmn_fast
    x, attn, w_ih, w_hh, b_ih, b_hh = _agru_args(1, 2, 3, 2)
    x[0, 0, 0] = float("nan")
    agru(x, attn, w_ih, w_hh, backend="reference")  # unchecked by default
    aghmn_fast.set_nan_check(True)
    try:
        with pytest.raises(ValueError, match="x contains NaN"):
            agru(x, attn, w_ih, w_hh)
    finally:
        aghmn_fast.set_nan_check(False)


def test_unknown_backend_is_a_clear_error():
    x, attn, w_ih, w_hh, b_ih, b_hh = _agru_args(1, 2, 3, 2)
    with pytest.raises(ValueError, match="backend 'nope' is not available"):
        agru(x, attn, w_ih, w_hh, backend="nope")


def test_backends_stays_a_function_after_backends_load():
    import aghmn_fast
    import aghmn_fast.ops.extension  # noqa: F401  (may fail to build elsewhere; here it exists)
    assert callable(aghmn_fast.backends) and "reference" in aghmn_fast.backends()


def test_op_modules_import_by_dotted_name():
    import aghmn_fast
    # `from` form: the attribute aghmn_fast.ops.agru is the op, the folder is aghmn_fast.ops.agru
    from aghmn_fast.ops.agru import reference as agru_reference
    from aghmn_fast.ops.window_gru import reference as window_reference
    assert callable(aghmn_fast.ops.agru) and callable(aghmn_fast.ops.window_gru)
    assert aghmn_fast.backends("cpu")[0] == "cpu"
    cpu = aghmn_fast.ops.resolve_backend("cpu", torch.device("cpu"))
    assert cpu is aghmn_fast.ops.resolve_backend("extension", torch.device("cpu"))
    assert cpu.implementation == "extension"
    ref = aghmn_fast.ops.resolve_backend("reference", torch.device("cpu"))
    assert ref.agru is agru_reference.agru_ref and ref.window_gru is window_reference.window_gru_ref
