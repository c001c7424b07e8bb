"""Ensembles (opt-in): several checkpoints of one window K streamed and served, their probabilities
averaged, equal to the offline ensemble."""
import asyncio
import importlib.util
import json
import os
import random

import pytest
import torch

import aghmn_fast
from aghmn_fast.data import MELD_LABELS, default_meld_root, load_meld
from aghmn_fast.streaming import EnsembleRecognizer, StreamingRecognizer, recognizer_from_checkpoints
from aghmn_fast.models.checkpoint import save_checkpoint
from aghmn_fast.training.trainer import build_vocabulary

from serving_fixtures import (assert_matches_offline, offline_probabilities, recognizer_for,
                              save_tiny_checkpoint, start_server, stop_server,
                              stream_dialogues_http, synthetic_dialogues, tiny_model)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    return [save_tiny_checkpoint(root / f"m{seed}.pt", window=4, seed=seed) for seed in (1, 2, 3)]


def _offline_ensemble(checkpoints, dialogues):
    return torch.stack([offline_probabilities(recognizer_for(c), dialogues)
                        for c in checkpoints]).mean(0)


def _stream(rec, dialogues, seed=0):
    rng = random.Random(seed)
    pending = {d.id: list(d.texts) for d in dialogues}
    got = {d.id: [] for d in dialogues}
    while any(pending.values()):
        batch = [d.id for d in dialogues if pending[d.id] and rng.random() < 0.4]
        for p in rec.push_many([(cid, pending[cid].pop(0)) for cid in batch]):
            got[p.conversation_id].append({"index": p.index, "label": p.label,
                                           "probabilities": p.probabilities})
    return got


def test_streamed_ensemble_equals_the_offline_ensemble(checkpoints):
    dialogues = synthetic_dialogues(40, seed=5, min_len=3)
    rec = recognizer_from_checkpoints(checkpoints)
    assert isinstance(rec, EnsembleRecognizer) and len(rec.members) == 3
    if "cpu" in aghmn_fast.backends():
        assert rec.mode == "push"
    expect = _offline_ensemble(checkpoints, dialogues)
    assert_matches_offline(_stream(rec, dialogues), dialogues, expect)
    # and it is not one member's answer
    single = offline_probabilities(recognizer_for(checkpoints[0]), dialogues)
    assert (single - expect).abs().max() > 1e-3


def test_one_checkpoint_in_a_list_is_a_plain_recognizer(checkpoints):
    assert type(recognizer_from_checkpoints(checkpoints[:1])) is StreamingRecognizer


def test_members_must_share_labels_and_window(checkpoints, tmp_path):
    other_k = save_tiny_checkpoint(tmp_path / "k5.pt", window=5)
    with pytest.raises(ValueError, match="one window"):
        recognizer_from_checkpoints([checkpoints[0], other_k])
    a, b = recognizer_for(checkpoints[0]), recognizer_for(checkpoints[1])
    b.label_names = list(reversed(b.label_names))
    with pytest.raises(ValueError, match="same labels"):
        EnsembleRecognizer([a, b])
    with pytest.raises(ValueError, match="two or more"):
        EnsembleRecognizer([a])
    with pytest.raises(FileNotFoundError):
        recognizer_from_checkpoints([checkpoints[0], str(tmp_path / "missing.pt")])


def test_bad_input_touches_no_member_and_close_closes_all(checkpoints):
    rec = recognizer_from_checkpoints(checkpoints)
    rec.push("a", "hi there")
    with pytest.raises(ValueError, match="empty"):
        rec.push_many([("a", "hello"), ("b", "  ")])
    assert [m.utterances_seen("a") for m in rec.members] == [1, 1, 1]
    assert rec.conversations == ["a"] and rec.utterances_seen("b") == 0
    p = rec.push("a", "why")
    assert p.index == 1 and p.label in MELD_LABELS
    assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    rec.close("a")
    assert all(m.conversations == [] for m in rec.members)
    with pytest.raises(KeyError):
        rec.close("a")


def test_serve_with_several_checkpoints_answers_the_offline_ensemble(checkpoints):
    dialogues = synthetic_dialogues(12, seed=9, min_len=5)
    expect = _offline_ensemble(checkpoints[:2], dialogues)
    proc, base = start_server(checkpoints[0], "--checkpoint", checkpoints[1], "--state", "memory")
    try:
        got = asyncio.run(stream_dialogues_http(base, dialogues, {d.id: 0 for d in dialogues},
                                                {d.id: len(d.texts) for d in dialogues}))
    finally:
        assert stop_server(proc) == 0
    assert_matches_offline(got, dialogues, expect)


def test_ensemble_cost_script(tmp_path, monkeypatch):
    """benchmarks/ensemble_cost.py on two small checkpoints: one row per ensemble size."""
    if not os.path.exists(os.path.join(default_meld_root(), "test_sent_emo.csv")):
        pytest.skip("MELD data not found (set AGHMN_DATA)")
    test = load_meld(None, "test")
    vocab = build_vocabulary([test])
    paths = []
    for seed in (1, 2):
        model = tiny_model(window=10, seed=seed, vocab=vocab)
        paths.append(str(tmp_path / f"m{seed}.pt"))
        save_checkpoint(paths[-1], model, vocab, MELD_LABELS)
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "ensemble_cost.py")
    spec = importlib.util.spec_from_file_location("ensemble_cost", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "cost.json"
    assert module.main(["--checkpoint", paths[0], "--checkpoint", paths[1], "--sizes", "1", "2",
                        "--repeats", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["size"], r["window"]) for r in rows] == [(1, 10), (2, 10)]
    assert all(r["median_ms"] > 0 and r["cpu_ms_mean"] > 0 for r in rows)


def test_stream_exactness_script_on_an_ensemble(checkpoints, capsys):
    """benchmarks/stream_exactness.py with several checkpoints: the ensemble streamed over all
    MELD test against the offline ensemble."""
    if not os.path.exists(os.path.join(default_meld_root(), "test_sent_emo.csv")):
        pytest.skip("MELD data not found (set AGHMN_DATA)")
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "stream_exactness.py")
    spec = importlib.util.spec_from_file_location("stream_exactness", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # --path: the old name of --mode, still accepted
    assert module.main(["--checkpoint", checkpoints[0], "--checkpoint", checkpoints[1],
                        "--path", "push"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint"] == checkpoints[:2] and result["mode"] == "push"
    assert result["utterances"] == 2610 and result["labels_equal"] == 2610
    assert result["max_abs_probability_difference"] < 1e-5
