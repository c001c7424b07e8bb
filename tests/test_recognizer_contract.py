"""The recognizer contract serving relies on (``aghmn_runtime.serving.recognizers.Recognizer``, a
typing Protocol: what holds it is what these tests run), stated once and run on both recognizers: the
torch ``StreamingRecognizer`` of a checkpoint and the native runtime's of its ``.aghmn`` export (one
set of weights). A difference between them fails here.

Outside the contract (documented in docs/RUNTIME.md): the runtime takes only str ids (serving
sends nothing else), ``conversations`` is a method there, and the state files are each recognizer's own.
"""
import gc
import os

import pytest
import torch

from serving_fixtures import RECOGNIZERS, recognizer_kind, load_served_recognizer, synthetic_dialogues  # noqa: F401 (fixture)

# Texts a client may send that tokenisation treats specially: NUL and control characters,
# combining marks, full-width and right-to-left letters, emoji, nothing but digits or
# punctuation (no word survives normalisation), a 10,000-word text (truncated to max_len).
ODD_TEXTS = ["a\x00b", "tab\there\r\nnew line", "x\u0301y e\u0301le\u0300ve", "ＦＵＬＬ ｗｉｄｔｈ",
             "שלום עולם", "😀 great 😀", "42", "?!?!", "...", "— –", "İstanbul ǅ ß", "\u200b\u200bhi",
             " ".join(["great"] * 10_000), "hello " * 59 + "sad", "\U0001F600" * 500]


@pytest.fixture(scope="module")
def files(model_files):
    return model_files(window=4)


@pytest.fixture
def rec(files, recognizer_kind):
    return load_served_recognizer(files[recognizer_kind])


def _probs(predictions):
    return torch.tensor([list(p.probabilities.values()) for p in predictions], dtype=torch.float64)


def test_both_recognizers_give_the_same_predictions_on_odd_texts(files):
    """Interleaved conversations of odd texts: the same index, label and probabilities."""
    items = [(f"c{i % 3}", text) for i, text in enumerate(ODD_TEXTS)]
    got = {kind: load_served_recognizer(files[kind]).push_many(items) for kind in RECOGNIZERS}
    a, b = got["torch"], got["runtime"]
    assert [(p.conversation_id, p.index, p.label, p.label_id) for p in a] == [
        (p.conversation_id, p.index, p.label, p.label_id) for p in b]
    torch.testing.assert_close(_probs(b), _probs(a), rtol=0, atol=1e-6)
    one_by_one = load_served_recognizer(files["runtime"])
    torch.testing.assert_close(_probs([one_by_one.push(c, t) for c, t in items]), _probs(b), rtol=0, atol=1e-6)


def test_interface_and_bookkeeping(rec, files):
    """Every member of the Recognizer protocol, by what it does (not by its name)."""
    assert rec.window == 4 and len(rec.label_names) == 7
    p = rec.push_many([("a", "hi"), ("b", "no"), ("a", "why"), ("a", "yes")])
    assert [(x.conversation_id, x.index) for x in p] == [("a", 0), ("b", 0), ("a", 1), ("a", 2)]
    assert set(p[0].to_dict()) >= {"id", "index", "label", "probabilities"}
    for x in p:
        assert list(x.probabilities) == rec.label_names and x.label == rec.label_names[x.label_id]
        assert abs(sum(x.probabilities.values()) - 1) < 1e-5 and x.latency_ms >= 0
        assert x.label_id == max(range(7), key=lambda k: x.probabilities[rec.label_names[k]])
    assert rec.utterances_seen("a") == 3 and rec.utterances_seen("zz") == 0
    rec.close("b")
    assert rec.utterances_seen("b") == 0
    with pytest.raises(KeyError):
        rec.close("b")
    assert rec.push("b", "again").index == 0


def test_bad_items_change_nothing(rec):
    rec.push_many([("a", "hello there"), ("b", "fine")])
    for bad, error in (([("a", "more"), ("b", "   ")], ValueError), ([("a", "more"), ("b", 42)], TypeError),
                       ([("a", "more"), ("b", None)], TypeError), ([("a", "more"), ("b", "")], ValueError)):
        with pytest.raises(error):
            rec.push_many(bad)
    assert (rec.utterances_seen("a"), rec.utterances_seen("b")) == (1, 1)


def test_bytes_per_conversation_is_the_ring_state_and_alike_on_both_recognizers(files, recognizer_kind):
    # K slots of u [H] and proj [D = 2 directions, 3H], float32: the tiny model's H = 24, K = 4
    assert load_served_recognizer(files[recognizer_kind]).bytes_per_conversation == 4 * 24 * 4 * (1 + 3 * 2)
    big = load_served_recognizer(files[recognizer_kind])
    assert big.store_bytes == 4 * big.bytes_per_conversation   # the initial capacity: 4


def test_closed_conversations_give_their_store_back_and_survivors_stay_exact(files, recognizer_kind):
    """Open 300 conversations, close all but 8 (the store halves on the way, moving the
    survivors), continue the survivors: exactly as if alone; the store is back near its start,
    and 300 new conversations take what the first 300 took."""
    rec = load_served_recognizer(files[recognizer_kind])
    texts = synthetic_dialogues(1, seed=4, min_len=9, max_len=9)[0].texts
    per, start = rec.bytes_per_conversation, rec.store_bytes
    survivors = [f"s{i}" for i in range(8)]
    for n in range(3):
        rec.push_many([(f"c{i}", texts[n]) for i in range(292)] + [(c, texts[n]) for c in survivors])
    peak = rec.store_bytes
    assert peak == 512 * per   # capacity doubles: 300 open -> 512
    for i in range(292):
        rec.close(f"c{i}")
    assert rec.store_bytes == 16 * per   # halved each time at most a quarter was open: 512 -> 16
    resumed = rec.push_many([(c, t) for t in texts[3:] for c in survivors])
    alone = load_served_recognizer(files[recognizer_kind])
    reference = alone.push_many([("x", t) for t in texts])[3:]
    for k, c in enumerate(survivors):
        mine = [p for p in resumed if p.conversation_id == c]
        assert [p.index for p in mine] == list(range(3, 9))
        torch.testing.assert_close(_probs(mine), _probs(reference), rtol=0, atol=1e-6)
    for c in survivors:
        rec.close(c)
    assert rec.store_bytes == start
    rec.push_many([(f"n{i}", "hello") for i in range(300)])
    assert rec.store_bytes == peak


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident memory is read from /proc (Linux)")
def test_resident_memory_returns_after_closing_over_cycles(model_files, recognizer_kind):
    """The process's resident memory over three cycles of 2,000 conversations of a K = 40 model
    (26 KiB each, 53 MB together) opened and closed: it rises by about that much each time and
    falls back after the closes (a generous 15 MB margin for allocator noise)."""
    rec = load_served_recognizer(model_files(window=40, seed=2)[recognizer_kind])
    n, per = 2000, rec.bytes_per_conversation
    rec.push_many([("warm", "hello")])
    rec.close("warm")
    # Earlier tests' garbage, collected in the middle of a cycle, would lower the resident
    # memory by more than a cycle adds (seen once: +12 MB against the 53 MB opened).
    gc.collect()
    gc.disable()
    try:
        base = _rss_bytes()
        for cycle in range(3):
            ids = [f"c{cycle}-{i}" for i in range(n)]
            rec.push_many([(c, "hello there") for c in ids])
            opened = _rss_bytes()
            assert opened - base > 0.8 * n * per, (cycle, opened - base)
            for c in ids:
                rec.close(c)
            closed = _rss_bytes()
            assert closed - base < 15 << 20, (cycle, (closed - base) >> 20)
    finally:
        gc.enable()
