"""Training recipe, checkpoints and the CLI on tiny synthetic data."""
import json

import pytest
import torch

from aghmn_fast.cli import main
from aghmn_fast.models.checkpoint import load_checkpoint
from aghmn_fast.training.trainer import TrainConfig, encode_dialogues, evaluate, predict, train

from helpers.training import iemocap_train_args, tiny_setup


def test_tiny_training_lowers_the_loss_and_saves_a_loadable_checkpoint(tmp_path):
    model, tr, dv, te, vocab = tiny_setup()
    labels = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
    before = evaluate(model, encode_dialogues(tr, vocab, 60), tr, labels)["loss"]
    result = train(model, tr, dv, te, vocab, labels,
                   TrainConfig(epochs=4, lr=5e-3, progress=False, seed=3), out_dir=str(tmp_path),
                   log=lambda s: None)
    after = evaluate(model, encode_dialogues(tr, vocab, 60), tr, labels)["loss"]
    assert after < before * 0.8
    assert len(result["history"]) == 4 and "weighted_f1" in result["test"]
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["test"]["accuracy"] == result["test"]["accuracy"]
    loaded, vocab2, labels2, extra = load_checkpoint(str(tmp_path / "best.pt"))
    assert vocab2.itos == vocab.itos and labels2 == labels and "dev" in extra
    enc = encode_dialogues(te, vocab, 60)
    torch.testing.assert_close(predict(loaded, enc), predict(model, enc))


def test_lr_decays_only_after_an_epoch_without_dev_improvement():
    model, tr, dv, te, vocab = tiny_setup()
    result = train(model, tr, dv, te, vocab, list(map(str, range(7))),
                   TrainConfig(epochs=5, lr=1e-3, progress=False), log=lambda s: None)
    best = -1
    lr = 1e-3
    for h in result["history"]:
        if h["dev"]["accuracy"] > best:
            best = h["dev"]["accuracy"]
        else:
            lr *= 0.95
        assert h["lr"] == pytest.approx(lr)


def test_batch_dialogues_option_trains(tmp_path):
    model, tr, dv, te, vocab = tiny_setup(summary="biagru")
    result = train(model, tr, dv, te, vocab, list(map(str, range(7))),
                   TrainConfig(epochs=1, batch_dialogues=8, progress=False), log=lambda s: None)
    assert result["seconds_per_epoch"] > 0


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not readable: corrupt"):
        load_checkpoint(str(bad))
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an aghmn_fast checkpoint"):
        load_checkpoint(str(tmp_path / "other.pt"))


def test_cli_train_and_eval_on_iemocap_json(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(iemocap_train_args(tmp_path) + ["--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "TEST  accuracy" in printed
    # the epoch lines' legend explains their '*' (the selected checkpoint)
    legend = "* marks an epoch whose dev accuracy is the best so far (the model kept as best.pt)"
    assert legend in printed and printed.index(legend) < printed.index("epoch  1")
    rc = main(["eval", "--checkpoint", str(out / "best.pt"), "--dataset", "iemocap", "--data",
               str(tmp_path), "--json"])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= metrics["accuracy"] <= 100


def test_cli_reports_missing_data_cleanly(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
               "--epochs", "1", "--no-progress"])
    assert rc == 2
    assert "error" in capsys.readouterr().err


def _scripted_dev(monkeypatch, dev_set, accuracy, weighted_f1):
    """Make train() see the given dev accuracy / weighted F1 per epoch (test metrics stay real),
    so that the two selection metrics disagree on the best epoch by construction."""
    import aghmn_fast.training.trainer as train_module

    real, epoch = train_module.evaluate, iter(range(len(accuracy)))

    def evaluate(model, encoded, dialogues, label_names, batch_dialogues=64):
        metrics = real(model, encoded, dialogues, label_names, batch_dialogues)
        if dialogues is dev_set:
            i = next(epoch)
            metrics.update(accuracy=accuracy[i], weighted_f1=weighted_f1[i])
        return metrics
    monkeypatch.setattr(train_module, "evaluate", evaluate)


@pytest.mark.parametrize("select_on, best_epoch, decayed_after", [
    ("accuracy", 2, {3, 4, 5}), ("weighted_f1", 5, {2, 4})])
def test_select_on_picks_the_epoch_and_drives_the_lr_decay(monkeypatch, tmp_path, select_on,
                                                          best_epoch, decayed_after):
    model, tr, dv, te, vocab = tiny_setup()
    _scripted_dev(monkeypatch, dv, accuracy=[50, 60, 55, 58, 40],
                  weighted_f1=[50, 45, 70, 65, 71])
    snapshots = {}  # epoch -> weights after it (train() logs one "epoch N ..." line per epoch)
    result = train(model, tr, dv, te, vocab, list(map(str, range(7))),
                   TrainConfig(epochs=5, lr=1e-3, progress=False, select_on=select_on),
                   out_dir=str(tmp_path),
                   log=lambda s: s.startswith("epoch") and snapshots.setdefault(len(snapshots) + 1, {
                       k: v.clone() for k, v in model.state_dict().items()}))
    assert result["best_epoch"] == best_epoch
    assert result["best_dev"] == result["history"][best_epoch - 1]["dev"]
    lr = 1e-3
    for h in result["history"]:
        lr *= 0.95 if h["epoch"] in decayed_after else 1.0
        assert h["lr"] == pytest.approx(lr)
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["train_config"]["select_on"] == select_on and saved["best_epoch"] == best_epoch
    # the model tested (and the checkpoint) is the selected epoch's, not the last one's
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, snapshots[best_epoch][k])
    loaded, _, _, extra = load_checkpoint(str(tmp_path / "best.pt"))
    assert extra["epoch"] == best_epoch


def test_select_on_rejects_an_unknown_metric():
    model, tr, dv, te, vocab = tiny_setup()
    with pytest.raises(ValueError, match="select_on"):
        train(model, tr, dv, te, vocab, list(map(str, range(7))),
              TrainConfig(epochs=1, progress=False, select_on="macro_f1"), log=lambda s: None)


def test_cli_select_on_and_dropout_are_recorded(tmp_path):
    args = iemocap_train_args(tmp_path)
    out = tmp_path / "run"
    assert main(args + ["--out", str(out), "--select-on", "weighted-f1", "--dropout", "0.5"]) == 0
    saved = json.load(open(out / "metrics.json"))
    assert saved["train_config"]["select_on"] == "weighted_f1"
    assert saved["model_config"]["dropout"] == 0.5
    model, _, _, _ = load_checkpoint(str(out / "best.pt"))
    assert model.config.dropout == 0.5 and model.dropout.p == 0.5
    out2 = tmp_path / "default"
    assert main(args + ["--out", str(out2)]) == 0
    saved = json.load(open(out2 / "metrics.json"))
    assert saved["train_config"]["select_on"] == "accuracy"
    assert saved["model_config"]["dropout"] == 0.3


@pytest.mark.parametrize("extra, word", [(["--dropout", "1.0"], "dropout"),
                                         (["--dropout", "nan"], "dropout"),
                                         (["--select-on", "macro-f1"], "--select-on")])
def test_cli_rejects_bad_select_on_and_dropout(tmp_path, capsys, extra, word):
    rc = main(iemocap_train_args(tmp_path) + ["--out", str(tmp_path / "o")] + extra)
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert word in err and len(err.splitlines()) == 1
