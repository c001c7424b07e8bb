"""Distillation: `train --teacher A.pt [--teacher B.pt ...]` (tiny synthetic data)."""
import collections
import copy
import json

import pytest
import torch
import torch.nn.functional as F

from aghmn_fast.cli import main
from aghmn_fast.data import Dialogue
from aghmn_fast.models import AGHMN, AGHMNConfig
from aghmn_fast.streaming import StreamingRecognizer
from aghmn_fast.models.checkpoint import load_checkpoint
from aghmn_fast.training.distillation import teacher_targets
from aghmn_fast.training.trainer import (TrainConfig, build_vocabulary, encode_dialogues, predict, train)

from helpers.training import WORDS, iemocap_train_args, tiny_setup, train_tiny_teacher

LABELS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]


def test_teacher_targets_are_the_teachers_averaged_tempered_probabilities(tmp_path):
    paths = [train_tiny_teacher(tmp_path, "a", 1), train_tiny_teacher(tmp_path, "b", 2)]
    _, tr, _, _, _ = tiny_setup()
    targets = teacher_targets(paths, tr, LABELS, temperature=3.0)
    assert [tuple(t.shape) for t in targets] == [(len(d.texts), 7) for d in tr]
    expected = 0
    for path in paths:
        model, vocab, _, _ = load_checkpoint(path)
        expected = expected + torch.softmax(predict(model, encode_dialogues(tr, vocab, 60)) / 3.0, -1)
    torch.testing.assert_close(torch.cat(targets), expected / 2)
    torch.testing.assert_close(torch.cat(targets).sum(-1), torch.ones(sum(len(d.texts) for d in tr)))


@pytest.mark.parametrize("temperature,weight", [(3.0, 0.25), (1.0, 1.0), (2.0, 0.0)])
def test_the_training_loss_is_the_documented_mix_of_recipe_and_soft_cross_entropy(temperature, weight):
    """One training step's loss is (1 - w) * recipe loss + w * T^2 * soft cross-entropy (train.py's
    module doc), each term class-weighted by the gold label's recipe weight and averaged over the
    utterances; computed here with torch.nn.functional and the weights counted here, from the
    model's output before the step (one dialogue: the epoch's loss is that one step's)."""
    labels = [0, 1, 2, 3, 4, 5, 6, 0, 0, 4, 0]  # every class, neutral and joy the most frequent
    texts = [" ".join(WORDS[l].split()[: 1 + j % 3]) + "!" for j, l in enumerate(labels)]
    dialogue = Dialogue("one", ["A", "B"] * 5 + ["A"], texts, labels)
    _, _, dev, test, _ = tiny_setup()
    vocab = build_vocabulary([[dialogue], dev, test], min_count=1)
    # no dropout: the step's forward is then the same arithmetic as predict's
    config = AGHMNConfig(vocab_size=len(vocab), embedding_dim=12, num_classes=7, hidden_size=10,
                         window=3, dropout=0.0, backend="reference")
    model = AGHMN(config, torch.randn(len(vocab), 12))
    soft_targets = torch.softmax(2 * torch.randn(len(labels), 7), -1)
    log_probs = predict(copy.deepcopy(model), encode_dialogues([dialogue], vocab, config.max_len))

    counts = collections.Counter(labels)
    class_weight = torch.tensor([(min(counts.values()) / counts[c]) ** 0.5 for c in range(7)])
    class_weight = class_weight / class_weight.sum()  # the recipe: rate 0.5, normalised to sum 1
    gold = torch.tensor(labels)
    recipe = F.nll_loss(log_probs, gold, weight=class_weight, reduction="sum") / len(labels)
    soft = F.cross_entropy(log_probs / temperature, soft_targets, reduction="none")
    soft = (class_weight[gold] * soft).sum() / len(labels)
    expected = (1 - weight) * recipe + weight * temperature ** 2 * soft

    result = train(model, [dialogue], dev, test, vocab, LABELS,
                   TrainConfig(epochs=1, lr=5e-3, progress=False, class_weight_rate=0.5,
                               distill_temperature=temperature, distill_weight=weight),
                   log=lambda s: None, soft_targets=[soft_targets])
    assert result["history"][0]["train_loss"] == pytest.approx(float(expected), rel=1e-5)
    if weight:  # the tolerance tells the mix from the recipe's loss alone
        assert float(expected) != pytest.approx(float(recipe), rel=1e-3)


def test_distillation_weight_zero_is_the_recipe_and_a_positive_weight_changes_training(tmp_path):
    teacher = train_tiny_teacher(tmp_path, "t", 5)

    def run(targets, weight):
        torch.manual_seed(0)  # tiny_setup's word vectors come from the global generator
        model, tr, dv, te, vocab = tiny_setup()
        cfg = TrainConfig(epochs=2, lr=5e-3, progress=False, distill_weight=weight)
        result = train(model, tr, dv, te, vocab, LABELS, cfg, log=lambda s: None,
                       soft_targets=None if targets is None else targets(tr))
        return [h["train_loss"] for h in result["history"]], model

    plain, _ = run(None, 0.5)
    zero, _ = run(lambda tr: teacher_targets([teacher], tr, LABELS, 2.0), 0.0)
    mixed, student = run(lambda tr: teacher_targets([teacher], tr, LABELS, 2.0), 1.0)
    assert zero == plain
    assert mixed != plain
    # the student is an ordinary model: streaming gives the offline probabilities
    _, tr, _, _, vocab = tiny_setup()
    rec = StreamingRecognizer(student, vocab=vocab, label_names=LABELS)
    offline = torch.softmax(predict(student, encode_dialogues(tr, vocab, 60)), -1)
    streamed = [[p.probabilities[n] for n in LABELS]
                for d in tr for p in [rec.push(d.id, t) for t in d.texts]]
    torch.testing.assert_close(torch.tensor(streamed), offline, atol=1e-6, rtol=0)


def test_a_student_moves_towards_its_teacher(tmp_path):
    teacher = train_tiny_teacher(tmp_path, "t", 7)
    _, tr, _, _, _ = tiny_setup()
    targets = teacher_targets([teacher], tr, LABELS, 1.0)

    def distance(model):
        _, _, _, _, vocab = tiny_setup()
        p = torch.softmax(predict(model, encode_dialogues(tr, vocab, 60)), -1)
        return float((p - torch.cat(targets)).abs().sum(-1).mean())

    def student(weight):
        torch.manual_seed(0)
        model, tr_, dv, te, vocab = tiny_setup()
        train(model, tr_, dv, te, vocab, LABELS,
              TrainConfig(epochs=3, lr=5e-3, progress=False, distill_temperature=1.0,
                          distill_weight=weight), log=lambda s: None, soft_targets=targets)
        return model
    assert distance(student(1.0)) < distance(student(0.0))


def test_cli_teacher_is_recorded_and_bad_options_are_one_line(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    args = iemocap_train_args(tmp_path / "data")
    assert main(args + ["--out", str(tmp_path / "t1"), "--seed", "1"]) == 0
    assert main(args + ["--out", str(tmp_path / "t2"), "--seed", "2"]) == 0
    teachers = ["--teacher", str(tmp_path / "t1" / "best.pt"), "--teacher", str(tmp_path / "t2" / "best.pt")]
    capsys.readouterr()
    rc = main(args + ["--out", str(tmp_path / "s"), *teachers, "--distill-temperature", "3",
                      "--distill-weight", "0.7"])
    assert rc == 0, capsys.readouterr().err
    assert "distilling from 2 teacher(s) at temperature 3, weight 0.7" in capsys.readouterr().out
    _, _, _, extra = load_checkpoint(str(tmp_path / "s" / "best.pt"))
    recorded = extra["train_config"]
    assert recorded["distill_temperature"] == 3.0 and recorded["distill_weight"] == 0.7
    assert [t["file"] for t in recorded["teachers"]] == ["best.pt", "best.pt"]  # no directory
    assert len({t["sha256"] for t in recorded["teachers"]}) == 2
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["train_config"]["teachers"] == recorded["teachers"]
    for bad, message in ((["--distill-weight", "1.5"], "--distill-weight"),
                         (["--distill-temperature", "0"], "--distill-temperature"),
                         (["--teacher", str(tmp_path / "missing.pt")], "not found")):
        extra_teacher = [] if "--teacher" in bad else teachers[:2]
        rc = main(args + ["--out", str(tmp_path / "x"), *extra_teacher, *bad])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and message in err, err


def test_a_teacher_over_other_labels_is_refused(tmp_path):
    model, tr, dv, te, vocab = tiny_setup()
    train(model, tr, dv, te, vocab, [f"c{i}" for i in range(7)],
          TrainConfig(epochs=1, progress=False), out_dir=str(tmp_path / "t"), log=lambda s: None)
    with pytest.raises(ValueError, match="predicts"):
        teacher_targets([str(tmp_path / "t" / "best.pt")], tr, LABELS, 2.0)
    with pytest.raises(ValueError, match="empty"):
        teacher_targets([], tr, LABELS, 2.0)
