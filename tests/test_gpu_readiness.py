"""What keeps a first GPU run from failing or being wrong, checked without a GPU.

- the memory bank's residual gradient: a deterministic segment sum (no atomics), equal to a
  sequential ``index_add_`` and bitwise identical across runs;
- the window-index range check costs no device sync on CUDA unless asked for;
- every Triton launch runs under a guard that makes the tensors' GPU current.
"""
import pytest
import torch

from aghmn_fast import ops, reference
from aghmn_fast.ops import common, validation


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,segments,width", [(0, 3, 4), (1, 1, 1), (37, 5, 7), (400, 61, 9)])
def test_segment_sum_equals_sequential_index_add(rows, segments, width, dtype):
    g = torch.Generator().manual_seed(rows + segments)
    data = torch.randn(rows, width, generator=g, dtype=dtype) * 10.0 ** torch.randint(
        -3, 4, (rows, 1), generator=g).to(dtype)  # mixed magnitudes: order-sensitive sums
    index = torch.randint(0, segments, (rows,), generator=g)
    want = torch.zeros(segments, width, dtype=dtype).index_add_(0, index, data)
    got = common.segment_sum(data, index, segments)
    assert got.shape == (segments, width) and got.dtype == dtype
    assert torch.equal(got, want)  # bitwise: the same order of additions
    assert torch.equal(common.segment_sum(data, index, segments), got)  # run to run


def test_segment_sum_leaves_empty_segments_zero():
    data = torch.arange(12.0).view(4, 3)
    index = torch.tensor([4, 0, 4, 2])
    got = common.segment_sum(data, index, 6)
    want = torch.tensor([[3.0, 4, 5], [0, 0, 0], [9, 10, 11], [0, 0, 0], [6, 8, 10], [0, 0, 0]])
    assert torch.equal(got, want)


def test_residual_grad_picks_the_deterministic_sum_off_cpu(monkeypatch):
    calls = []
    real = common.segment_sum
    monkeypatch.setattr(common, "segment_sum", lambda *a: calls.append(a) or real(*a))
    rows, index = torch.randn(6, 2), torch.tensor([0, 1, 1, 3, 0, 2])
    common.residual_grad(rows, index, 4)
    assert calls == []  # CPU: index_add_ (already sequential)
    meta = common.residual_grad(rows.to("meta"), index.to("meta"), 4)
    assert len(calls) == 1 and meta.shape == (4, 2)


def test_memory_bank_gradient_through_the_segment_sum_matches_reference(monkeypatch):
    """The fused memory bank's backward with the segment sum forced (as on CUDA)."""
    if "cpu" not in ops.backends("cpu"):
        pytest.skip("the compiled CPU backend is not available")
    monkeypatch.setattr(common, "residual_grad",
                        lambda rows, index, n: common.segment_sum(rows, index, n))
    g = torch.Generator().manual_seed(0)
    N, H, Q, K = 11, 6, 7, 4
    u = torch.randn(N, H, generator=g, dtype=torch.float64, requires_grad=True)
    windows = torch.randint(-1, N, (Q, K), generator=g)
    flat = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
            for s in ((3 * H, H), (3 * H, H), (3 * H,), (3 * H,))]
    fused = ops.memory_bank(u, windows, flat, backend="cpu")
    want = reference.memory_bank(u, windows, flat)
    w = torch.randn(want.shape, generator=g, dtype=torch.float64)
    got_grads = torch.autograd.grad((fused * w).sum(), [u, *flat])
    want_grads = torch.autograd.grad((want * w).sum(), [u, *flat])
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_window_range_check_is_free_on_cuda_unless_asked(monkeypatch):
    monkeypatch.setattr(validation, "_window_check", False)
    assert validation.window_check_enabled(torch.device("cpu"))
    assert not validation.window_check_enabled(torch.device("cuda"))
    assert not validation.window_check_enabled(torch.device("meta"))
    validation.set_window_check(True)
    assert validation.window_check_enabled(torch.device("cuda"))
    assert not validation.window_check_enabled(torch.device("meta"))  # no values to read
    validation.set_window_check(False)
    u, flat = torch.randn(3, 2), [torch.randn(6, 2), torch.randn(6, 2), torch.randn(6),
                                  torch.randn(6)]
    with pytest.raises(ValueError, match=r"windows holds an index outside \[-1, 2\]"):
        ops.memory_bank(u, torch.tensor([[0, 3]]), flat)
    with pytest.raises(ValueError, match=r"windows holds an index outside"):
        ops.memory_bank(u, torch.tensor([[-2, 0]]), flat)


def test_triton_launches_are_device_guarded(monkeypatch):
    common = pytest.importorskip("aghmn_fast.ops.triton_common")
    guard = common.device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert not isinstance(common.device_guard(torch.device("cpu")), torch.cuda.device)
    assert not isinstance(common.device_guard(None), torch.cuda.device)
    # launch() enters the guard of its first tensor's device
    seen = []
    monkeypatch.setattr(common, "device_guard", lambda d: seen.append(d) or
                        __import__("contextlib").nullcontext())
    monkeypatch.setattr(common, "wrap_triton", lambda k: {(1,): lambda *a, **kw: None})
    common.launch(object(), (1,), 3, torch.zeros(1), torch.zeros(2))
    assert seen == [torch.device("cpu")]


def _recognizers(K=5, device="cpu"):
    from aghmn_fast.bench.stream import build_model
    from aghmn_fast.data import MELD_LABELS, Vocabulary
    from aghmn_fast.streaming import StreamingRecognizer
    words = [f"w{i}" for i in range(50)]
    vocab = Vocabulary.build([words], min_count=1)
    model = build_model(K, vocab, None, hidden=16, embedding_dim=8).to(device)
    make = lambda p: StreamingRecognizer(model, device, vocab=vocab, label_names=MELD_LABELS,  # noqa: E731
                                         mode=p)
    return make, words


def test_graph_mode_buffers_buckets_and_chunks_match_the_step_mode(monkeypatch):
    """The graph mode's bucketing, padding (rows repeating row 0), chunking and store-write,
    run eagerly (capture=False: no CUDA here), against the "step" mode: equal predictions."""
    from aghmn_fast.streaming import GraphMode
    make, words = _recognizers()
    plain = make("step")
    if plain.mode != "step":
        pytest.skip("the fused step op is not available")
    graphed = make("step")
    graphed.compute = GraphMode.create(graphed.model, graphed.store, capture=False)
    monkeypatch.setattr(GraphMode, "BUCKETS", (1, 2, 4))  # chunks of 4
    g = torch.Generator().manual_seed(0)
    for rnd in range(8):
        n = 1 + rnd % 7  # 1..7 conversations per round: padding and chunking
        items = [(f"c{j}", " ".join(words[int(i)] for i in torch.randint(0, 50, (4,), generator=g)))
                 for j in range(n)]
        want = plain.push_many(items)
        got = graphed.push_many(items)
        for a, b in zip(got, want):
            assert a.index == b.index and a.label == b.label
            for name in a.probabilities:
                assert a.probabilities[name] == pytest.approx(b.probabilities[name], abs=1e-6)
    # the open conversations' slots (the stores' unused capacity is uninitialised on the CPU)
    for a, b in zip(graphed.store.snapshot(), plain.store.snapshot()):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert set(graphed.compute._graphs) <= {1, 2, 4}
    # the store grew (new conversations): buffers rebuilt for the new addresses
    before = graphed.compute._store
    graphed.push_many([(f"new{j}", "w1 w2") for j in range(12)])
    graphed.push_many([(f"new{j}", "w3") for j in range(12)])
    assert graphed.compute._store != before


def test_graph_mode_is_refused_without_cuda():
    make, _ = _recognizers()
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="mode 'graph' is not available"):
        make("graph")
    assert make(None).mode != "graph"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graph_mode_matches_step_mode_on_cuda():
    make, words = _recognizers(K=10, device="cuda")
    step, graph = make("step"), make("graph")
    assert graph.mode == "graph"
    for rnd in range(14):
        items = [(f"c{j}", f"w{rnd} w{j} w{(rnd * j) % 50}") for j in range(1 + rnd % 5)]
        for a, b in zip(graph.push_many(items), step.push_many(items)):
            for name in a.probabilities:
                assert a.probabilities[name] == pytest.approx(b.probabilities[name], abs=1e-5)
    torch.testing.assert_close(graph.store.u, step.store.u, rtol=1e-5, atol=1e-6)


def test_cuda_default_backend_per_shape_class(monkeypatch):
    """backend=None on CUDA follows ops.CUDA_CHOICE (a documented guess until measured), and
    falls back to the priority order for what is not registered."""
    registry = dict(ops.registry._REGISTRY)
    monkeypatch.setattr(ops.registry, "_REGISTRY", registry)
    monkeypatch.setitem(ops.CUDA_CHOICE, ("agru", "latency"), ("triton", "cuda"))  # vs priority
    for name, prio in (("cuda", 20), ("triton", 5)):
        registry[name] = ops.Backend(name, ("cuda",), prio)
    cuda = torch.device("cuda")
    assert ops.resolve_backend(None, cuda, "agru", 1).name == "triton"
    assert ops.resolve_backend(None, cuda, "agru", ops.LATENCY_ROWS + 1).name == "cuda"
    assert ops.resolve_backend(None, cuda, "memory_bank", 1).name == "cuda"
    assert ops.resolve_backend(None, cuda).name == "cuda"  # no shape: priority order
    assert ops.resolve_backend("cuda", cuda, "agru", 1).name == "cuda"  # an explicit choice
    del registry["triton"]
    assert ops.resolve_backend(None, cuda, "agru", 1).name == "cuda"
    del registry["cuda"]
    assert ops.resolve_backend(None, cuda, "agru", 1).name in ("reference", "triton")
    cpu = torch.device("cpu")
    assert ops.resolve_backend(None, cpu, "agru", 1).name == ops.backends("cpu")[0]
