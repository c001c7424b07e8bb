"""aghmn_fast.nn.AGRU: shapes, parameters, agreement with the reference op, variable lengths."""
import math

import pytest
import torch

from aghmn_fast import reference
from aghmn_fast.nn import AGRU

F64 = torch.float64


def test_parameters_follow_torch_gru_naming_and_init():
    layer = AGRU(7, 5, bidirectional=True)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {
        "weight_ih_l0": (10, 7), "weight_hh_l0": (10, 5), "bias_ih_l0": (10,), "bias_hh_l0": (10,),
        "weight_ih_l0_reverse": (10, 7), "weight_hh_l0_reverse": (10, 5),
        "bias_ih_l0_reverse": (10,), "bias_hh_l0_reverse": (10,),
    }
    assert all(torch.equal(p, torch.zeros_like(p)) for n, p in layer.named_parameters() if "bias" in n)
    big = AGRU(300, 200)
    for gate in big.weight_ih_l0.detach().split(200):  # Xavier-normal per [H, in] gate block
        assert abs(gate.std().item() - math.sqrt(2 / 500)) < 0.1 * math.sqrt(2 / 500)
    assert [n for n, _ in AGRU(3, 2, bias=False).named_parameters()] == ["weight_ih_l0", "weight_hh_l0"]
    assert "bidirectional=True" in repr(layer)


def _reference_layer(layer, x, attn, h0):
    outs, finals = [], []
    for d, suffix in enumerate(("", "_reverse")[:layer.num_directions]):
        get = lambda name: getattr(layer, name + suffix)  # noqa: E731
        out, hn = reference.agru(x, attn, get("weight_ih_l0"), get("weight_hh_l0"),
                                 get("bias_ih_l0"), get("bias_hh_l0"),
                                 None if h0 is None else h0[d], reverse=d == 1)
        outs.append(out)
        finals.append(hn)
    return torch.cat(outs, -1), torch.stack(finals)


@pytest.mark.parametrize("backend", ["cpu", "reference", None])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_matches_reference_with_all_gradients(backend, bidirectional, with_h0):
    B, T, D, H = 3, 6, 5, 7
    layer = AGRU(D, H, batch_first=True, bidirectional=bidirectional, backend=backend).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)  # non-zero biases too
    nd = layer.num_directions
    x = torch.randn(B, T, D, dtype=F64, requires_grad=True)
    attn = torch.rand(B, T, dtype=F64, requires_grad=True)
    h0 = torch.randn(nd, B, H, dtype=F64, requires_grad=True) if with_h0 else None
    out, hn = layer(x, attn, h0)
    assert out.shape == (B, T, nd * H) and hn.shape == (nd, B, H)
    r_out, r_hn = _reference_layer(layer, x, attn, h0)
    torch.testing.assert_close(out, r_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hn, r_hn, rtol=1e-10, atol=1e-12)
    go, gh = torch.randn_like(out), torch.randn_like(hn)
    leaves = [x, attn] + ([h0] if with_h0 else []) + list(layer.parameters())
    grads = torch.autograd.grad((out * go).sum() + (hn * gh).sum(), leaves)
    r_grads = torch.autograd.grad((r_out * go).sum() + (r_hn * gh).sum(), leaves)
    for g, rg in zip(grads, r_grads):
        torch.testing.assert_close(g, rg, rtol=1e-10, atol=1e-12)


def test_time_major_layout():
    layer = AGRU(4, 6, bidirectional=True)  # time-major by default, as torch.nn.GRU
    x, attn = torch.randn(5, 2, 4), torch.rand(5, 2)  # [T, B, D], [T, B]
    out, hn = layer(x, attn)
    assert out.shape == (5, 2, 12) and hn.shape == (2, 2, 6)
    layer_bf = AGRU(4, 6, batch_first=True, bidirectional=True)
    layer_bf.load_state_dict(layer.state_dict())
    out_bf, hn_bf = layer_bf(x.transpose(0, 1), attn.t())
    torch.testing.assert_close(out, out_bf.transpose(0, 1))
    torch.testing.assert_close(hn, hn_bf)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_zero_attention_padding_gives_variable_lengths_in_both_directions(backend):
    torch.manual_seed(1)
    layer = AGRU(4, 9, batch_first=True, bidirectional=True, backend=backend)
    lengths = [6, 3, 1]
    T = max(lengths)
    x = torch.randn(len(lengths), T, 4)
    attn = torch.rand(len(lengths), T)
    for b, n in enumerate(lengths):
        attn[b, n:] = 0
        x[b, n:] = torch.randn(T - n, 4) * 10  # garbage in the padding must not matter
    out, hn = layer(x, attn)
    for b, n in enumerate(lengths):
        o, h = layer(x[b:b + 1, :n], attn[b:b + 1, :n])
        torch.testing.assert_close(out[b:b + 1, :n], o, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(hn[:, b:b + 1], h, rtol=1e-6, atol=1e-6)


def test_bad_h0_shape_is_rejected():
    layer = AGRU(3, 4, batch_first=True, bidirectional=True)
    with pytest.raises(ValueError, match="h0"):
        layer(torch.randn(2, 5, 3), torch.rand(2, 5), torch.zeros(1, 2, 4))


@pytest.mark.parametrize("batch_first", [False, True])
def test_missing_attention_weights_name_attn(batch_first):
    layer = AGRU(4, 3, batch_first=batch_first)
    with pytest.raises(TypeError, match=r"attn must be a tensor, got NoneType"):
        layer(torch.randn(5, 2, 4), None)
    with pytest.raises(TypeError, match=r"x must be a tensor, got list"):
        layer([[1.0]], torch.rand(5, 2))


def test_signature_defaults_and_weight_names_match_torch_gru():
    """A drop-in for torch.nn.GRU: same arguments, same defaults, same parameter names."""
    import inspect
    gru_params = inspect.signature(torch.nn.GRU.__init__).parameters
    agru_params = inspect.signature(AGRU.__init__).parameters
    # torch.nn.GRU takes *args, **kwargs; its documented arguments live on RNNBase
    rnn_params = inspect.signature(torch.nn.RNNBase.__init__).parameters
    expected = {n: p.default for n, p in rnn_params.items()
                if n not in ("self", "mode", "proj_size") and p.kind is not p.VAR_KEYWORD}
    if "input_size" in gru_params:  # newer torch spells them on GRU itself
        expected = {n: p.default for n, p in gru_params.items()
                    if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    ours = {n: p.default for n, p in agru_params.items() if n in expected}
    assert ours == expected
    assert list(ours) == list(expected)  # same positional order
    for bidirectional in (False, True):
        for bias in (False, True):
            gru = torch.nn.GRU(3, 4, bias=bias, bidirectional=bidirectional)
            layer = AGRU(3, 4, bias=bias, bidirectional=bidirectional)
            assert [n for n, _ in layer.named_parameters()] == [n for n, _ in gru.named_parameters()]
    layer = AGRU(3, 4, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    with pytest.raises(ValueError, match="num_layers"):
        AGRU(3, 4, num_layers=2)
    with pytest.raises(ValueError, match="dropout"):
        AGRU(3, 4, dropout=0.5)
