"""Streaming recognizer: exactly the offline model, one utterance at a time."""
import os
import random

import pytest
import torch

import aghmn_fast

from aghmn_fast.data import MELD_LABELS, default_meld_root, load_meld
from aghmn_fast.models import AGHMN, AGHMNConfig
from aghmn_fast.streaming import StreamingRecognizer
from aghmn_fast.train import build_vocabulary, encode_dialogues, predict

HAVE_MELD = os.path.exists(os.path.join(default_meld_root(), "test_sent_emo.csv"))


def _recognizer(summary="agru", fusion="bif", window=10, seed=0, backend=None):
    test = load_meld(None, "test") if HAVE_MELD else None
    vocab = build_vocabulary([test]) if test else None
    torch.manual_seed(seed)
    cfg = AGHMNConfig(vocab_size=len(vocab), embedding_dim=16, num_classes=7, hidden_size=24,
                      window=window, summary=summary, fusion=fusion, backend=backend)
    model = AGHMN(cfg, torch.randn(len(vocab), 16)).eval()
    return StreamingRecognizer(model, vocab=vocab, label_names=MELD_LABELS), test


def _offline(rec, dialogues):
    enc = encode_dialogues(dialogues, rec.vocab, 60)
    return torch.softmax(predict(rec.model, enc), -1)


pytestmark = pytest.mark.skipif(not HAVE_MELD, reason="MELD data not found (set AGHMN_DATA)")


@pytest.mark.parametrize("summary,fusion,window,backend", [
    ("agru", "bif", 10, None), ("biagru", "unif", 4, None), ("att", "bif", 3, None),
    ("agru", "bif", 10, "reference"), ("biagru", "bif", 5, "reference")])
def test_streaming_equals_offline_on_a_third_of_meld_test(summary, fusion, window, backend):
    rec, test = _recognizer(summary, fusion, window, backend=backend)
    assert (rec._fused_step is not None) == (backend is None and "cpu" in aghmn_fast.backends())
    dialogues = test[::3]
    expect = _offline(rec, dialogues)
    # conversations interleaved at random, each in order
    rng = random.Random(0)
    got = {d.id: [] for d in dialogues}
    pending = {d.id: list(d.texts) for d in dialogues}
    while any(pending.values()):
        batch = [d.id for d in dialogues if pending[d.id] and rng.random() < 0.3]
        if not batch:
            continue
        preds = rec.push_many([(cid, pending[cid].pop(0)) for cid in batch])
        for p in preds:
            got[p.conversation_id].append(p)
    flat = [p for d in dialogues for p in got[d.id]]
    probs = torch.tensor([[p.probabilities[l] for l in MELD_LABELS] for p in flat])
    torch.testing.assert_close(probs, expect, rtol=0, atol=1e-5)
    assert [p.label_id for p in flat] == expect.argmax(-1).tolist()
    assert [p.index for p in got[dialogues[0].id]] == list(range(len(dialogues[0].texts)))


def test_save_and_load_state_mid_dialogue(tmp_path):
    rec, test = _recognizer()
    dialogues = [d for d in test if len(d.texts) >= 6][:5]
    expect = _offline(rec, dialogues)
    flat = []
    for d in dialogues:
        flat.extend(rec.push(d.id, t) for t in d.texts[:3])
    rec.save_state(str(tmp_path / "state.pt"))
    rec2, _ = _recognizer()
    rec2.load_state(str(tmp_path / "state.pt"))
    assert sorted(rec2.conversations) == sorted(d.id for d in dialogues)
    rest = {d.id: [rec2.push(d.id, t) for t in d.texts[3:]] for d in dialogues}
    ordered = []
    for i, d in enumerate(dialogues):
        ordered.extend(flat[3 * i: 3 * i + 3] + rest[d.id])
    probs = torch.tensor([[p.probabilities[l] for l in MELD_LABELS] for p in ordered])
    torch.testing.assert_close(probs, expect, rtol=0, atol=1e-5)


def test_bad_input_touches_no_state(tmp_path):
    rec, test = _recognizer(window=3)
    rec.push("a", "hello there")
    rec.push("b", "how are you?")
    before = rec.utterances_seen("a"), rec.utterances_seen("b")
    with pytest.raises(ValueError, match="empty or whitespace"):
        rec.push_many([("a", "fine"), ("b", "   ")])
    with pytest.raises(TypeError, match="must be a str"):
        rec.push("a", 42)
    with pytest.raises(TypeError, match="hashable"):
        rec.push(["x"], "hi")
    assert (rec.utterances_seen("a"), rec.utterances_seen("b")) == before
    with pytest.raises(KeyError, match="unknown conversation_id"):
        rec.close("zzz")
    long = rec.push("a", "word " * 10_000)  # truncated to 60 tokens, documented
    assert long.index == 1
    rec.close("b")
    assert rec.conversations == ["a"]
    # a state file of another model, and a corrupted one
    other, _ = _recognizer(seed=1, window=3)
    other.push("x", "hi")
    other.save_state(str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="another model"):
        rec.load_state(str(tmp_path / "other.pt"))
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable stream state"):
        rec.load_state(str(tmp_path / "junk.pt"))
    assert rec.conversations == ["a"] and rec.utterances_seen("a") == 2


def test_closed_slots_are_reused_so_memory_stays_flat():
    rec, _ = _recognizer(window=2)
    for i in range(200):
        rec.push(f"c{i}", "hello")
        rec.push(f"c{i}", "bye!")
        if i >= 3:
            rec.close(f"c{i - 3}")
    assert rec._capacity <= 8


def test_stream_cli_json_lines(tmp_path):
    import io
    import json as _json

    from aghmn_fast.cli import build_parser
    from aghmn_fast.streaming_cli import run
    from aghmn_fast.train import save_checkpoint

    rec, _ = _recognizer(window=3)
    save_checkpoint(str(tmp_path / "m.pt"), rec.model, rec.vocab, MELD_LABELS)
    args = build_parser().parse_args(["stream", "--checkpoint", str(tmp_path / "m.pt")])
    out = io.StringIO()
    run(args, io.StringIO("1\tHi there!\n2\tOh no.\nbroken line\n1\t \n1\tWhat?\n"), out)
    lines = [_json.loads(l) for l in out.getvalue().splitlines()]
    assert [l.get("id") for l in lines] == ["1", "2", None, None, "1"]
    assert "expected conversation_id" in lines[2]["error"] and "whitespace" in lines[3]["error"]
    assert lines[4]["index"] == 1 and set(lines[4]["probabilities"]) == set(MELD_LABELS)


def test_stream_step_op_passes_opcheck():
    rec, test = _recognizer(summary="biagru", window=4)
    if rec._fused_step is None:
        pytest.skip("the compiled extension is not available")
    for text in ("hello", "how are you?", "fine!"):
        rec.push("a", text)
    windows = rec._window_rows(["a"])
    q = torch.randn(1, rec.hidden)
    args = (q, windows, rec._u, rec._proj, rec._pad_proj, rec._w_hh, rec._b_hh, rec._summary_weights,
            1, rec.model.classifier.weight.detach(), rec.model.classifier.bias.detach())
    torch.library.opcheck(torch.ops.aghmn_fast.stream_step.default, args,
                          test_utils=("test_schema", "test_autograd_registration"))


def test_public_names():
    assert aghmn_fast.StreamingRecognizer is StreamingRecognizer
    assert aghmn_fast.nn.AGRU.__name__ == "AGRU"
