"""The AGHMN model: variants, shapes, windows, batched == per-dialogue."""
import pytest
import torch

from aghmn_fast.models import AGHMN, AGHMNConfig, dialogue_windows, make_batch

DIALOGUES = [[[2, 3, 4], [5, 6], [7], [8, 9, 10, 11], [12]],
             [[8, 9]],
             [[13, 14, 15, 2], [3], [4, 4, 4], [16, 17]]]
LABELS = [[0, 1, 2, 3, 4], [5], [6, 0, 1, 2]]


def _model(**kw):
    cfg = dict(vocab_size=20, embedding_dim=8, num_classes=7, hidden_size=6, window=3,
               backend="reference")
    cfg.update(kw)
    torch.manual_seed(0)
    return AGHMN(AGHMNConfig(**cfg), torch.randn(cfg["vocab_size"], cfg["embedding_dim"]))


def test_windows_left_padded_most_recent_last():
    windows, q = dialogue_windows([4, 1, 3], 2)
    assert windows.tolist() == [[-1, 0], [0, 1], [1, 2], [-1, 5], [5, 6]]
    assert q.tolist() == [1, 2, 3, 6, 7]
    with pytest.raises(ValueError, match="empty dialogue"):
        dialogue_windows([2, 0], 2)
    with pytest.raises(ValueError, match="window must be"):
        dialogue_windows([2], 0)


@pytest.mark.parametrize("reader", ["bigru", "cnn"])
@pytest.mark.parametrize("fusion,summary", [("bif", "agru"), ("unif", "agru"), ("bif", "biagru"),
                                            ("unif", "att"), ("bif", "att"), ("none", "none")])
def test_variants_shapes_and_log_probs(reader, fusion, summary):
    m = _model(reader=reader, fusion=fusion, summary=summary, hops=2).eval()
    out = m(make_batch(DIALOGUES, 3))
    assert out.shape == (10, 7)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(10))


@pytest.mark.parametrize("fusion,summary", [("bif", "agru"), ("unif", "biagru"), ("bif", "att")])
def test_batched_equals_per_dialogue(fusion, summary):
    m = _model(fusion=fusion, summary=summary).double().eval()
    batched = m(make_batch(DIALOGUES, 3))
    single = torch.cat([m(make_batch([d], 3)) for d in DIALOGUES])
    torch.testing.assert_close(batched, single, rtol=1e-10, atol=1e-10)


def test_prediction_uses_only_the_past():
    m = _model().double().eval()
    full = m(make_batch([DIALOGUES[0]], 3))
    for t in range(1, 6):
        prefix = m(make_batch([DIALOGUES[0][:t]], 3))
        torch.testing.assert_close(prefix[-1], full[t - 1], rtol=1e-10, atol=1e-10)


def test_first_utterance_is_classified_from_itself():
    m = _model().eval()
    out = m(make_batch([DIALOGUES[0]], 3))
    b = make_batch([DIALOGUES[0]], 3)
    u = m.encode_utterances(b.tokens, b.lengths)
    torch.testing.assert_close(out[0], torch.log_softmax(m.classifier(u[0]), -1))


def test_window_larger_than_history_and_memory_padding():
    # K > dialogue length: every window is mostly empty slots; outputs stay finite
    m = _model(window=12).eval()
    out = m(make_batch(DIALOGUES, 12))
    assert torch.isfinite(out).all()


def test_reader_pools_with_zero_padding_like_the_original():
    m = _model(max_len=4).eval()
    b = make_batch([[[2, 3, 4, 5], [6]]], 3, max_len=4)
    emb = m.embedding(b.tokens)
    packed_out, _ = m.reader.gru(emb[1:2, :1])
    pooled_short = packed_out.max(1).values.clamp(min=0)  # length 1 < max_len 4: zeros join the max
    full_out, _ = m.reader.gru(emb[0:1])
    pooled_full = full_out.max(1).values  # length == max_len: no padding, no zero
    expect = torch.tanh(m.reader.proj(torch.cat([pooled_full, pooled_short])))
    torch.testing.assert_close(m.encode_utterances(b.tokens, b.lengths), expect, rtol=1e-5, atol=1e-6)


def test_embeddings_are_frozen_and_everything_else_trains():
    m = _model(summary="biagru")
    out = m(make_batch(DIALOGUES, 3, LABELS))
    out.sum().backward()
    assert m.embedding.weight.grad is None
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="fusion must be one of"):
        _model(fusion="tri")
    with pytest.raises(ValueError, match="both be 'none'"):
        _model(fusion="none")
    with pytest.raises(ValueError, match="no dialogues"):
        make_batch([], 3)
    with pytest.raises(ValueError, match="empty dialogue"):
        make_batch([[[1]], []], 3)
    with pytest.raises(ValueError, match="embeddings must have shape"):
        AGHMN(AGHMNConfig(vocab_size=5, embedding_dim=3, num_classes=2), torch.randn(4, 3))


@pytest.mark.parametrize("L,max_len", [(5, 60), (4, 4)])
def test_window_gru_reader_equals_packed_nn_gru(L, max_len):
    from aghmn_fast.models import BiGRUReader
    from aghmn_fast import ops
    from aghmn_fast.ops import registry
    torch.manual_seed(3)
    reader = BiGRUReader(7, 6, max_len).double()
    emb = torch.randn(5, L, 7, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([L, 1, 3, L, 2])[:5]
    ref = reader(emb, lengths, backend="reference")
    grads_ref = torch.autograd.grad(ref.sum(), [emb, *reader.parameters()])
    # the fused path with the reference window GRU (every backend registers its own window_gru)
    ops.register_backend("reference-windows", agru=ops.resolve_backend("reference", emb.device).agru,
                         memory_bank=ops.resolve_backend("reference", emb.device).memory_bank,
                         devices=("cpu",), priority=-1)
    try:
        fused = reader(emb, lengths, backend="reference-windows")
    finally:
        del registry._REGISTRY["reference-windows"]
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(fused.sum(), [emb, *reader.parameters()])
    for g, gr in zip(grads, grads_ref):
        torch.testing.assert_close(g, gr, rtol=1e-9, atol=1e-10)
    for b in backends_for_cpu():
        got = reader(emb, lengths, backend=b)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)


def backends_for_cpu():
    import aghmn_fast
    return [b for b in aghmn_fast.backends("cpu") if b != "reference"]


@pytest.mark.parametrize("reader", ["bigru", "cnn"])
def test_reader_vector_does_not_depend_on_the_batch_padding(reader):
    # The <pad> row of the given embeddings is random here: padding must still not leak in.
    model = _model(reader=reader).double().eval()
    assert model.embedding.weight[0].abs().sum() > 0
    short, long = [2, 3], [4, 5, 6, 7, 8, 9, 10]
    with torch.no_grad():
        alone = model.encode_utterances(torch.tensor([short]), torch.tensor([2]))
        padded = model.encode_utterances(torch.tensor([short + [0] * 5, long]), torch.tensor([2, 7]))
    torch.testing.assert_close(padded[:1], alone, rtol=0, atol=1e-12)


def test_fused_reader_with_length_buckets_equals_packed_nn_gru():
    """Many short utterances and one long one: the fused reader splits them into two length
    buckets (each padded to its own longest); outputs and every gradient equal nn.GRU's."""
    from aghmn_fast.models import BiGRUReader
    from aghmn_fast.models.aghmn import length_buckets
    lengths = torch.tensor([2, 1, 3, 17, 2, 3, 1, 2, 3, 2, 1, 3, 2, 3, 1, 2, 2, 3, 1, 2])
    buckets = length_buckets(lengths.tolist())
    assert len(buckets) == 2 and buckets[1] == [3]
    torch.manual_seed(4)
    reader = BiGRUReader(7, 6, 60).double()
    emb = torch.randn(len(lengths), 17, 7, dtype=torch.float64, requires_grad=True)
    ref = reader(emb, lengths, backend="reference")
    weights = torch.randn_like(ref)  # a random upstream gradient
    grads_ref = torch.autograd.grad((ref * weights).sum(), [emb, *reader.parameters()])
    assert backends_for_cpu()
    for b in backends_for_cpu():
        got = reader(emb, lengths, backend=b)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
        grads = torch.autograd.grad((got * weights).sum(), [emb, *reader.parameters()])
        for g, gr in zip(grads, grads_ref):
            torch.testing.assert_close(g, gr, rtol=1e-8, atol=1e-10)


def test_length_buckets():
    from aghmn_fast.models.aghmn import length_buckets
    assert length_buckets([]) == [[]] and length_buckets([4]) == [[0]]
    assert length_buckets([3, 5, 4]) == [[0, 1, 2]]            # saving too small: one bucket
    long = [1] * 30 + [40]
    assert length_buckets(long) == [list(range(30)), [30]]
    got = length_buckets([5, 60, 6, 5, 59] + [4] * 20)
    assert sorted(i for b in got for i in b) == list(range(25)) and set(got[1]) == {1, 4}
