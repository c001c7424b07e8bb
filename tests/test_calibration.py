"""Calibration: per-class logit biases fitted on dev, folded into the classifier, applied
identically offline, streaming (every path) and served."""
import json
import random

import numpy as np
import pytest
import torch

import aghmn_fast
from aghmn_fast.training.calibration import fit_logit_biases, set_logit_biases
from aghmn_fast.cli import main
from aghmn_fast.training.metrics import classification_metrics, f1_scores
from aghmn_fast.streaming import StreamingRecognizer
from aghmn_fast.models.checkpoint import load_checkpoint
from aghmn_fast.training.trainer import (TrainConfig, calibrate_model, encode_dialogues, predict, train)

from helpers.training import iemocap_train_args, tiny_setup

LABELS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]


def test_f1_scores_equal_the_reported_metrics():
    rng = np.random.default_rng(0)
    for c in (2, 7):
        y, p = rng.integers(0, c, 300), rng.integers(0, c, 300)
        p[:5] = 0  # and a class never predicted, below
        p[p == c - 1] = 0
        m = classification_metrics(y, p, [str(i) for i in range(c)])
        weighted, macro = f1_scores(y, p, c)
        assert weighted == pytest.approx(m["weighted_f1"], abs=1e-9)
        assert macro == pytest.approx(m["macro_f1"], abs=1e-9)


def _under_predicted_rare_class(n=600, seed=0):
    """Scores whose rare class 2 is right but always out-scored by a margin of 0.5."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, n, p=[0.6, 0.3, 0.1])
    scores = rng.normal(0, 0.3, (n, 3))
    scores[np.arange(n), y] += 1.0
    scores[:, 2] -= 1.5
    return torch.tensor(scores), torch.tensor(y)


@pytest.mark.parametrize("resamples", [0, 5])
def test_fit_raises_macro_f1_within_the_weighted_f1_floor(resamples):
    scores, y = _under_predicted_rare_class()
    for drop in (0.0, 0.5, 5.0):
        r = fit_logit_biases(scores, y, 3, max_weighted_f1_drop=drop, resamples=resamples)
        assert r["resamples"] == resamples
        assert r["after"]["macro_f1"] > r["before"]["macro_f1"] + 5
        assert r["after"]["weighted_f1"] >= r["before"]["weighted_f1"] - drop
        assert r["logit_bias"][2] > 0.5  # the rare class is lifted
        weighted, macro = f1_scores(y.numpy(), (scores.numpy() + r["logit_bias"]).argmax(1), 3)
        assert (weighted, macro) == pytest.approx((r["after"]["weighted_f1"], r["after"]["macro_f1"]))


def test_fit_keeps_zero_biases_when_nothing_helps_and_rejects_bad_input():
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    perfect = torch.nn.functional.one_hot(y, 3).double() * 5
    assert fit_logit_biases(perfect, y, 3)["logit_bias"] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="log_probs must be"):
        fit_logit_biases(perfect[:, :2], y, 3)
    with pytest.raises(ValueError, match="--calibrate-max-drop"):
        fit_logit_biases(perfect, y, 3, max_weighted_f1_drop=-1)
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="--calibrate-resamples"):
            fit_logit_biases(perfect, y, 3, resamples=bad)


def test_bagged_fit_is_deterministic_and_steadier_across_dev_draws():
    """The average of bootstrap fits: the same biases for the same seed, and across independent
    small dev sets of one distribution its biases scatter less than one fit's (what made one fit
    on MELD dev lose weighted F1 on test)."""
    scores, y = _under_predicted_rare_class(n=240, seed=1)
    a = fit_logit_biases(scores, y, 3, resamples=8, seed=3)
    assert a == fit_logit_biases(scores, y, 3, resamples=8, seed=3)
    assert a["logit_bias"] != fit_logit_biases(scores, y, 3, resamples=8, seed=4)["logit_bias"]
    single, bagged = [], []
    for draw in range(5):
        scores, y = _under_predicted_rare_class(n=240, seed=10 + draw)
        single.append(fit_logit_biases(scores, y, 3, resamples=0)["logit_bias"])
        bagged.append(fit_logit_biases(scores, y, 3, resamples=8)["logit_bias"])
    assert np.std(bagged, axis=0).sum() < np.std(single, axis=0).sum()


def _calibrated_model():
    model, tr, dv, te, vocab = tiny_setup()
    model.eval()
    before = predict(model, encode_dialogues(te, vocab, 60))
    bias = [0.3, -0.2, 1.1, 0.0, -0.7, 2.0, 0.4]
    set_logit_biases(model, bias)
    return model, te, vocab, before, bias


def test_folded_biases_shift_the_logits_and_can_be_removed():
    model, te, vocab, before, bias = _calibrated_model()
    after = predict(model, encode_dialogues(te, vocab, 60))
    torch.testing.assert_close(after, torch.log_softmax(before + torch.tensor(bias), -1))
    set_logit_biases(model, [0.0] * 7, old=bias)
    torch.testing.assert_close(predict(model, encode_dialogues(te, vocab, 60)), before)
    with pytest.raises(ValueError, match="expected 7 logit biases"):
        set_logit_biases(model, [1.0])


@pytest.mark.parametrize("path", ["push", "step", "ops"])
def test_every_streaming_path_applies_the_calibration(path):
    if path != "ops" and "cpu" not in aghmn_fast.backends():
        pytest.skip("the compiled CPU extension is not built")
    model, te, vocab, before, _ = _calibrated_model()
    model.config.backend = None if path != "ops" else "reference"
    rec = StreamingRecognizer(model, vocab=vocab, label_names=LABELS, mode=path)
    rng = random.Random(0)
    pending = {d.id: list(d.texts) for d in te}
    got = {d.id: [] for d in te}
    while any(pending.values()):
        batch = [d.id for d in te if pending[d.id] and rng.random() < 0.5]
        for p in rec.push_many([(cid, pending[cid].pop(0)) for cid in batch]):
            got[p.conversation_id].append([p.probabilities[n] for n in LABELS])
    streamed = torch.tensor([p for d in te for p in got[d.id]])
    offline = torch.softmax(predict(model, encode_dialogues(te, vocab, 60)), -1)
    torch.testing.assert_close(streamed, offline.float(), atol=1e-6, rtol=0)
    assert not torch.allclose(offline, torch.softmax(before, -1), atol=1e-3)  # it is calibrated


def test_train_calibrate_records_both_test_scores(tmp_path):
    model, tr, dv, te, vocab = tiny_setup()
    result = train(model, tr, dv, te, vocab, LABELS,
                   TrainConfig(epochs=2, lr=5e-3, progress=False, calibrate=True,
                               calibrate_max_drop=1.0),
                   out_dir=str(tmp_path), log=lambda s: None)
    cal = result["calibration"]
    assert cal["after"]["macro_f1"] >= cal["before"]["macro_f1"]
    assert cal["after"]["weighted_f1"] >= cal["before"]["weighted_f1"] - 1.0
    assert {"test", "test_uncalibrated"} <= set(result)
    loaded, _, _, extra = load_checkpoint(str(tmp_path / "best.pt"))
    assert extra["calibration"] == json.loads(json.dumps(cal))
    assert extra["train_config"]["calibrate"] is True
    enc = encode_dialogues(te, vocab, 60)
    torch.testing.assert_close(predict(loaded, enc), predict(model, enc))
    with pytest.raises(ValueError, match="--calibrate-max-drop"):
        train(model, tr, dv, te, vocab, LABELS, TrainConfig(epochs=1, progress=False, calibrate=True,
                                                            calibrate_max_drop=float("nan")))
    with pytest.raises(ValueError, match="--calibrate-resamples"):
        train(model, tr, dv, te, vocab, LABELS, TrainConfig(epochs=1, progress=False, calibrate=True,
                                                            calibrate_resamples=-1))
    with pytest.raises(ValueError, match="--calibrate-fit-on"):
        train(model, tr, dv, te, vocab, LABELS, TrainConfig(epochs=1, progress=False, calibrate=True,
                                                            calibrate_fit_on="test"))


@pytest.mark.parametrize("fit_on", ["train+dev", "dev"])
def test_calibrate_model_fits_on_the_pooled_or_the_dev_data(fit_on):
    """The record's before/after scores are those of the fitted data (dev, or dev then train
    pooled) and ``dev`` those of dev alone, each recomputed here from the model's scores."""
    model, tr, dv, te, vocab = tiny_setup()
    model.eval()
    enc_tr, enc_dv = encode_dialogues(tr, vocab, 60), encode_dialogues(dv, vocab, 60)
    pooled = (enc_tr, tr) if fit_on == "train+dev" else None
    record = calibrate_model(model, enc_dv, dv, 5.0, resamples=3, pooled_with=pooled)
    assert record["fit_on"] == fit_on
    bias = np.array(record["logit_bias"])
    dev_scores = predict(model, enc_dv).double().numpy()
    dev_y = np.array([l for d in dv for l in d.labels])
    scores, y = dev_scores, dev_y
    if pooled:
        scores = np.concatenate([dev_scores, predict(model, enc_tr).double().numpy()])
        y = np.concatenate([dev_y, [l for d in tr for l in d.labels]])
    assert record == {**fit_logit_biases(scores, y, 7, 5.0, resamples=3),
                      "dev": record["dev"], "fit_on": fit_on}
    for name, shift in (("before", 0.0), ("after", bias)):
        assert tuple(record["dev"][name].values()) == pytest.approx(
            f1_scores(dev_y, (dev_scores + shift).argmax(1), 7))


def test_calibrate_command_refits_from_the_uncalibrated_model(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    args = iemocap_train_args(tmp_path / "data")
    assert main(args + ["--out", str(tmp_path / "run")]) == 0
    ckpt = str(tmp_path / "run" / "best.pt")
    plain, vocab, labels, _ = load_checkpoint(ckpt)
    calibrate = ["calibrate", "--dataset", "iemocap", "--data", str(tmp_path / "data"),
                 "--max-drop", "2"]
    assert main(calibrate + ["--checkpoint", ckpt, "--out", str(tmp_path / "a.pt")]) == 0
    assert "macro F1" in capsys.readouterr().out
    first, _, _, extra = load_checkpoint(str(tmp_path / "a.pt"))
    # again on the calibrated file: the same biases (the fit starts from the uncalibrated model)
    assert main(calibrate + ["--checkpoint", str(tmp_path / "a.pt"), "--in-place"]) == 0
    again, _, _, extra2 = load_checkpoint(str(tmp_path / "a.pt"))
    assert extra2["calibration"] == extra["calibration"]
    torch.testing.assert_close(again.classifier.bias, first.classifier.bias)
    torch.testing.assert_close(first.classifier.bias - plain.classifier.bias,
                               torch.tensor(extra["calibration"]["logit_bias"], dtype=torch.float32))
    assert extra["calibration"]["fit_on"] == "train+dev"
    assert main(calibrate + ["--fit-on", "dev", "--checkpoint", ckpt, "--out", str(tmp_path / "d.pt")]) == 0
    assert load_checkpoint(str(tmp_path / "d.pt"))[3]["calibration"]["fit_on"] == "dev"
    # without --out or --in-place: a new file beside the checkpoint, which stays as it was
    before = (tmp_path / "run" / "best.pt").read_bytes()
    assert main(calibrate + ["--checkpoint", ckpt]) == 0
    assert f"written to {tmp_path / 'run' / 'best-calibrated.pt'}" in capsys.readouterr().out
    assert (tmp_path / "run" / "best.pt").read_bytes() == before
    assert load_checkpoint(str(tmp_path / "run" / "best-calibrated.pt"))[3]["calibration"]
    assert main(calibrate + ["--checkpoint", ckpt, "--in-place", "--out", str(tmp_path / "x.pt")]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    rc = main(calibrate[:-1] + ["-1", "--checkpoint", ckpt])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--calibrate-max-drop" in err
    assert main(calibrate + ["--fit-on", "test", "--checkpoint", ckpt]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--fit-on" in err


def test_accuracy_study_script_scores_a_group(tmp_path):
    """benchmarks/accuracy_study.py: each model, mean +- std, calibrated, and the ensemble."""
    import importlib.util
    import os

    from aghmn_fast.data import default_meld_root, load_meld
    from aghmn_fast.models.checkpoint import save_checkpoint
    from aghmn_fast.training.trainer import build_vocabulary
    from serving_fixtures import tiny_model
    if not os.path.exists(os.path.join(default_meld_root(), "test_sent_emo.csv")):
        pytest.skip("MELD data not found (set AGHMN_DATA)")
    vocab = build_vocabulary([load_meld(None, "test")])
    paths = [str(tmp_path / f"m{s}.pt") for s in (1, 2)]
    for seed, path in zip((1, 2), paths):
        save_checkpoint(path, tiny_model(window=4, seed=seed, vocab=vocab), vocab, LABELS)
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "accuracy_study.py")
    spec = importlib.util.spec_from_file_location("accuracy_study", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "study.json"
    assert module.main(["--checkpoint", paths[0], "--checkpoint", paths[1], "--json", str(out)]) == 0
    study = json.loads(out.read_text())
    assert len(study["models"]) == 2
    mean = study["mean_std"]["weighted_f1"]["mean"]
    assert mean == pytest.approx(sum(m["weighted_f1"] for m in study["models"]) / 2, abs=0.01)
    cal = study["ensemble"]["calibrated"]
    assert cal["fit_after"]["macro_f1"] >= cal["fit_before"]["macro_f1"]
    assert len(cal["logit_bias"]) == 7
