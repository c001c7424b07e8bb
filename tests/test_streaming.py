"""Streaming recognizer: exactly the offline model, one utterance at a time."""
import os
import random

import pytest
import torch

import aghmn_fast

from aghmn_fast.data import MELD_LABELS, default_meld_root, load_meld
from aghmn_fast.models import AGHMN, AGHMNConfig
from aghmn_fast.streaming import StreamingRecognizer
from aghmn_fast.training.trainer import build_vocabulary, encode_dialogues, predict

HAVE_MELD = os.path.exists(os.path.join(default_meld_root(), "test_sent_emo.csv"))


HAVE_CPU_EXT = "cpu" in aghmn_fast.backends()


def _recognizer(summary="agru", fusion="bif", window=10, seed=0, backend=None, mode=None,
                dtype=torch.float32, **config):
    test = load_meld(None, "test") if HAVE_MELD else None
    vocab = build_vocabulary([test]) if test else None
    torch.manual_seed(seed)
    cfg = AGHMNConfig(vocab_size=len(vocab), embedding_dim=16, num_classes=7, hidden_size=24,
                      window=window, summary=summary, fusion=fusion, backend=backend, **config)
    model = AGHMN(cfg, torch.randn(len(vocab), 16)).eval().to(dtype)
    return StreamingRecognizer(model, vocab=vocab, label_names=MELD_LABELS, mode=mode), test


def _stream_interleaved(rec, dialogues, seed=0):
    """Streams the dialogues with conversations interleaved at random; predictions in order."""
    rng = random.Random(seed)
    got = {d.id: [] for d in dialogues}
    pending = {d.id: list(d.texts) for d in dialogues}
    while any(pending.values()):
        batch = [d.id for d in dialogues if pending[d.id] and rng.random() < 0.3]
        if not batch:
            continue
        preds = rec.push_many([(cid, pending[cid].pop(0)) for cid in batch])
        for p in preds:
            got[p.conversation_id].append(p)
    return got


def _offline(rec, dialogues):
    enc = encode_dialogues(dialogues, rec.vocab, 60)
    return torch.softmax(predict(rec.model, enc), -1)


pytestmark = pytest.mark.skipif(not HAVE_MELD, reason="MELD data not found (set AGHMN_DATA)")


@pytest.mark.parametrize("summary,fusion,window,backend,mode", [
    ("agru", "bif", 10, None, "push"), ("biagru", "unif", 4, None, "push"),
    ("att", "bif", 3, None, "push"), ("agru", "bif", 10, None, "step"),
    ("agru", "bif", 10, "reference", "ops"), ("biagru", "bif", 5, "reference", "ops")])
def test_streaming_equals_offline_on_a_third_of_meld_test(summary, fusion, window, backend, mode):
    if mode != "ops" and not HAVE_CPU_EXT:
        pytest.skip("the compiled extension is not available")
    rec, test = _recognizer(summary, fusion, window, backend=backend, mode=mode)
    assert rec.mode == mode
    dialogues = test[::3]
    expect = _offline(rec, dialogues)
    got = _stream_interleaved(rec, dialogues)
    flat = [p for d in dialogues for p in got[d.id]]
    probs = torch.tensor([[p.probabilities[l] for l in MELD_LABELS] for p in flat])
    torch.testing.assert_close(probs, expect, rtol=0, atol=1e-5)
    assert [p.label_id for p in flat] == expect.argmax(-1).tolist()
    assert [p.index for p in got[dialogues[0].id]] == list(range(len(dialogues[0].texts)))


@pytest.mark.skipif(not HAVE_CPU_EXT, reason="the compiled extension is not available")
@pytest.mark.parametrize("variant", [
    dict(summary="agru", fusion="bif", window=40),           # windows never full in MELD test
    dict(summary="biagru", fusion="bif", window=7, hops=2),
    dict(summary="att", fusion="unif", window=5, hops=3),
    dict(summary="agru", fusion="bif", window=6, reader="cnn"),
    dict(summary="none", fusion="none"),                      # context-free baseline
    dict(summary="biagru", fusion="bif", window=3, dtype=torch.float64),
])
def test_push_mode_equals_offline_on_model_variants(variant):
    rec, test = _recognizer(mode="push", **variant)
    dialogues = test[1::12]
    expect = _offline(rec, dialogues)
    got = _stream_interleaved(rec, dialogues, seed=1)
    flat = [p for d in dialogues for p in got[d.id]]
    probs = torch.tensor([[p.probabilities[l] for l in MELD_LABELS] for p in flat], dtype=expect.dtype)
    atol = 1e-12 if expect.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(probs, expect, rtol=0, atol=atol)
    assert [p.label_id for p in flat] == expect.argmax(-1).tolist()


def test_unavailable_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="mode must be"):
        _recognizer(mode="fast")
    with pytest.raises(ValueError, match="not available"):
        _recognizer(backend="reference", mode="push")


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
    # the messages name what a user passed ("the text"), not the parameter's internal name
    with pytest.raises(ValueError, match="^the text of item 1 is empty or whitespace"):
        rec.push_many([("a", "fine"), ("b", "   ")])
    with pytest.raises(TypeError, match="^the text of item 0 must be a str"):
        rec.push("a", 42)
    with pytest.raises(TypeError, match=r"\(conversation_id, text\) pair"):
        rec.push_many(["a"])
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
    assert rec.store.capacity <= 8


def test_stream_cli_json_lines(tmp_path):
    import io
    import json as _json

    from aghmn_fast.cli import build_parser
    from aghmn_fast.cli.stream import run
    from aghmn_fast.models.checkpoint import save_checkpoint

    rec, _ = _recognizer(window=3)
    save_checkpoint(str(tmp_path / "m.pt"), rec.model, rec.vocab, MELD_LABELS)
    args = build_parser().parse_args(["stream", "--checkpoint", str(tmp_path / "m.pt")])
    out = io.StringIO()
    run(args, io.StringIO("1\tHi there!\n2\tOh no.\nbroken line\n1\t \n1\tWhat?\n"), out)
    lines = [_json.loads(l) for l in out.getvalue().splitlines()]
    assert [l.get("id") for l in lines] == ["1", "2", None, None, "1"]
    assert "expected conversation_id" in lines[2]["error"] and "whitespace" in lines[3]["error"]
    assert lines[4]["index"] == 1 and set(lines[4]["probabilities"]) == set(MELD_LABELS)


@pytest.mark.skipif(not HAVE_CPU_EXT, reason="the compiled extension is not available")
def test_stream_push_ops_pass_opcheck():
    rec, test = _recognizer(summary="biagru", window=4, mode="push")
    for text in ("hello", "how are you?", "fine!"):
        rec.push("a", text)
    utils = ("test_schema", "test_autograd_registration")
    torch.library.opcheck(torch.ops.aghmn_fast.stream_pack.default,
                          ([rec.model.classifier.weight.detach(), rec.model.classifier.bias.detach()],),
                          dict(H=rec.hidden, E=16, C=7, K=4, D=0, S=0, hops=1, max_len=60,
                               bigru_reader=False), test_utils=utils)
    push = rec.compute
    args = (push.packed, push.embedding, [5, 6, 7], [3], None, rec.store.blocks(["a"]), [3],
            rec.store.u.clone(), rec.store.proj.clone())
    torch.library.opcheck(torch.ops.aghmn_fast.stream_push.default, args, push.sizes,
                          test_utils=utils)


@pytest.mark.skipif(not HAVE_CPU_EXT, reason="the compiled extension is not available")
def test_stream_push_op_rejects_bad_arguments():
    rec, _ = _recognizer(window=4, mode="push")
    rec.push("a", "hello")
    push = torch.ops.aghmn_fast.stream_push
    mode = rec.compute
    good = dict(packed=mode.packed, embedding=mode.embedding, tokens=[5, 6], lengths=[2], u=None,
                blocks=rec.store.blocks(["a"]), counts=[1], u_store=rec.store.u,
                proj_store=rec.store.proj, **mode.sizes)
    cases = [(dict(tokens=[5, 10 ** 9]), "outside the vocabulary"),
             (dict(lengths=[3]), "lengths sum"),
             (dict(lengths=[0], tokens=[]), "outside \\[1, 60\\]"),
             (dict(blocks=[10 ** 6]), "outside the store"),
             (dict(blocks=[0, 0], counts=[1, 1], lengths=[1, 1]), "appears twice"),
             (dict(counts=[-1]), "negative"),
             (dict(K=0), "must be positive"),
             (dict(D=3), "must be in \\[0, 2\\]"),
             (dict(bigru_reader=False), "u must be"),
             (dict(packed=mode.packed[:-1]), "pack with the same sizes"),
             (dict(u_store=rec.store.u.double()), "u_store"),
             (dict(proj_store=rec.store.proj[:1]), "proj_store")]
    before = rec.store.u.clone(), rec.store.proj.clone()
    for change, message in cases:
        with pytest.raises(RuntimeError, match=message):
            push(**{**good, **change})
    # bit for bit: the store's unused capacity is uninitialised memory (it may hold NaN patterns)
    assert torch.equal(rec.store.u.view(torch.uint8), before[0].view(torch.uint8))
    assert torch.equal(rec.store.proj.view(torch.uint8), before[1].view(torch.uint8))


def test_stream_step_op_passes_opcheck():
    rec, test = _recognizer(summary="biagru", window=4, mode="step" if HAVE_CPU_EXT else None)
    if rec.mode != "step":
        pytest.skip("the compiled extension is not available")
    for text in ("hello", "how are you?", "fine!"):
        rec.push("a", text)
    windows = rec.store.window_rows(["a"])
    q = torch.randn(1, rec.hidden)
    args = (q, windows, rec.store.u, rec.store.proj, rec.store.pad_proj, rec.compute.w_hh,
            rec.compute.b_hh, rec.compute.summary_weights, 1, rec.model.classifier.weight.detach(),
            rec.model.classifier.bias.detach())
    torch.library.opcheck(torch.ops.aghmn_fast.stream_step.default, args,
                          test_utils=("test_schema", "test_autograd_registration"))


def test_public_names():
    assert aghmn_fast.StreamingRecognizer is StreamingRecognizer
    assert aghmn_fast.nn.AGRU.__name__ == "AGRU"


@pytest.mark.skipif(not HAVE_CPU_EXT, reason="the compiled extension is not available")
@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_push_mode_on_every_instruction_set_matches_the_offline_reference(isa):
    """Synthetic dialogues (no data needed), 3 conversations per push_many with histories of
    different lengths in one tile; AGHMN_CPU_ISA lowers the run-time dispatch."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent("""
        import random, torch
        from aghmn_fast.data import Vocabulary
        from aghmn_fast.models import AGHMN, AGHMNConfig, make_batch
        from aghmn_fast.streaming import StreamingRecognizer
        words = [w + s for w in "ab cd ef gh ij kl mn op qr st".split() for s in ("", "x", "y")]
        vocab = Vocabulary(["<pad>", "<unk>"] + words)
        rng = random.Random(0)
        dialogues = [[" ".join(rng.choice(words + ["zz"]) for _ in range(rng.randint(1, 70)))
                      for _ in range(n)] for n in (9, 4, 13)]
        for summary, fusion, dtype, tol in (("agru", "bif", torch.float32, 1e-5),
                                            ("biagru", "unif", torch.float64, 1e-12)):
            torch.manual_seed(1)
            cfg = AGHMNConfig(vocab_size=len(vocab), embedding_dim=11, num_classes=5, hidden_size=21,
                              window=5, summary=summary, fusion=fusion, backend="reference")
            model = AGHMN(cfg, torch.randn(len(vocab), 11)).to(dtype).eval()
            with torch.no_grad():
                enc = [[vocab.encode(t.split()[:60]) for t in d] for d in dialogues]
                want = torch.softmax(model(make_batch(enc, 5)), -1)
            model.config.backend = None
            rec = StreamingRecognizer(model, vocab=vocab, label_names=list("abcde"), mode="push")
            got = {i: [] for i in range(3)}
            for step in range(13):
                items = [(i, d[step]) for i, d in enumerate(dialogues) if step < len(d)]
                for p in rec.push_many(items):
                    got[p.conversation_id].append([p.probabilities[c] for c in "abcde"])
            got = torch.tensor([p for i in range(3) for p in got[i]], dtype=dtype)
            torch.testing.assert_close(got, want, rtol=0, atol=tol)
        print("ok")
    """)
    env = dict(os.environ, AGHMN_CPU_ISA=isa)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_stream_exactness_script_on_a_checkpoint(tmp_path, capsys):
    """benchmarks/stream_exactness.py: every MELD test dialogue streamed vs the offline model."""
    import importlib.util
    import json as _json

    from aghmn_fast.models.checkpoint import save_checkpoint
    rec, _ = _recognizer(window=5)
    save_checkpoint(str(tmp_path / "m.pt"), rec.model, rec.vocab, MELD_LABELS)
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "stream_exactness.py")
    spec = importlib.util.spec_from_file_location("stream_exactness", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--checkpoint", str(tmp_path / "m.pt")]) == 0
    result = _json.loads(capsys.readouterr().out)
    assert result["utterances"] == 2610 and result["labels_equal"] == 2610
    assert result["max_abs_probability_difference"] < 1e-5
    assert result["streamed"]["accuracy"] == result["offline"]["accuracy"]
