"""The ring store's public contract (what every compute path, and a native runtime, relies on),
and the streaming package's import graph."""
import ast
import pathlib

import pytest
import torch
from torch.nn import functional as F

from aghmn_fast.streaming.store import RingStore

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "aghmn_fast"


def _store(K=3, H=4, dirs=2, capacity=2):
    g = torch.Generator().manual_seed(0)
    w_ih = [torch.randn(3 * H, H, generator=g, dtype=torch.float64) for _ in range(dirs)]
    b_ih = [torch.randn(3 * H, generator=g, dtype=torch.float64) for _ in range(dirs)]
    return RingStore(K, H, w_ih, b_ih, dtype=torch.float64, device="cpu", capacity=capacity)


def test_window_rows_slots_and_writes_follow_the_ring():
    store = _store()
    store.open("a")
    assert store.count("a") == 0 and store.window_rows(["a"]).tolist() == [[-1, -1, -1]]
    base = store.blocks(["a"])[0] * 3
    us = torch.randn(5, 4, dtype=torch.float64)
    for n in range(5):
        assert store.slots(["a"]).tolist() == [base + n % 3]
        store.remember(["a"], us[n:n + 1])
    assert store.count("a") == 5
    rows = store.window_rows(["a"])[0].tolist()
    assert rows == [base + 2, base + 0, base + 1]  # utterances 2, 3, 4, oldest first
    assert torch.equal(store.u[rows], us[2:])
    for d in range(2):
        want = F.linear(us[2:], store.w_ih[d], store.b_ih[d])
        assert torch.allclose(store.proj[d, rows], want)
    assert torch.equal(store.pad_proj, torch.stack(store.b_ih))


def test_open_grows_close_frees_and_blocks_are_reused():
    store = _store(capacity=2)
    for c in "abc":
        store.open(c)
    assert store.capacity == 4 and len(store) == 3 and store.conversations == ["a", "b", "c"]
    store.open("a")  # already open: nothing changes
    assert len(store) == 3
    freed = store.blocks(["b"])[0]
    store.close("b")
    assert "b" not in store and store.count("b") == 0
    store.open("d")
    assert store.blocks(["d"]) == [freed] and store.capacity == 4
    with pytest.raises(KeyError, match="unknown conversation_id 'zz'"):
        store.close("zz")


def test_snapshot_and_restore_round_trip_and_bad_input_changes_nothing():
    store = _store()
    for n, c in enumerate("abcab"):
        store.open(c)
        store.remember([c], torch.full((1, 4), float(n), dtype=torch.float64))
    ids, counts, u, proj = store.snapshot()
    assert ids == ["a", "b", "c"] and counts == [2, 2, 1]
    other = _store()
    other.restore(ids, counts, u, proj)
    for c in ids:   # the filled slots (empty ones, -1, hold nothing)
        mine, theirs = other.window_rows([c])[0], store.window_rows([c])[0]
        assert torch.equal(other.u[mine[mine >= 0]], store.u[theirs[theirs >= 0]])
        assert other.count(c) == store.count(c)
    before = other.snapshot()
    bad = [((ids, counts[:2], u, proj), "lists of one length"),
           ((ids, [2, 0, 1], u, proj), "positive integers"),
           ((ids, counts, u[:3], proj), "wrong shape"),
           ((["a", "a", "c"], counts, u, proj), "appears twice")]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            other.restore(*args)
    after = other.snapshot()
    assert before[:2] == after[:2] and torch.equal(before[2], after[2])


def _imports(path: pathlib.Path):
    """The aghmn_fast modules a file imports, as dotted names."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = parts[:-node.level] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names += [mod] + [f"{mod}.{a.name}" for a in node.names]
    return names


def test_inference_never_imports_training_and_compute_paths_never_import_the_recognizer():
    for folder in ("streaming", "serving"):
        for path in (PACKAGE / folder).glob("*.py"):
            assert not any(n == "aghmn_fast.training" or n.startswith("aghmn_fast.training.")
                           for n in _imports(path)), path
    recognizer = "aghmn_fast.streaming.recognizer"
    for path in (PACKAGE / "streaming").glob("*.py"):
        # the ensemble is a layer above the recognizer (its members are recognizers)
        if path.stem not in ("recognizer", "ensemble", "__init__"):
            assert recognizer not in _imports(path), path
    assert not any(n.startswith("aghmn_fast.streaming")
                   for n in _imports(PACKAGE / "streaming" / "store.py"))


def _tiny_model():
    from aghmn_fast.data import Vocabulary
    from aghmn_fast.models import AGHMN, AGHMNConfig
    vocab = Vocabulary(["<pad>", "<unk>", "hi", "there"])
    torch.manual_seed(0)
    cfg = AGHMNConfig(vocab_size=len(vocab), embedding_dim=6, num_classes=3, hidden_size=5,
                      window=3, backend="reference")
    return AGHMN(cfg, torch.randn(len(vocab), 6)).eval(), vocab


def test_mode_keyword():
    from aghmn_fast.streaming import StreamingRecognizer
    model, vocab = _tiny_model()
    make = lambda **kw: StreamingRecognizer(model, vocab=vocab, label_names="abc", **kw)  # noqa: E731
    rec = make(mode="ops")
    assert rec.mode == "ops" and rec.compute.name == "ops"
    with pytest.raises(ValueError, match="mode must be one of"):
        make(mode="fast")
    with pytest.raises(TypeError, match="path"):  # the former name of mode= is gone, and .path
        make(path="ops")
    assert not hasattr(rec, "path")
    assert rec.push("c", "hi there").index == 0 and rec.push("c", "hi").index == 1
