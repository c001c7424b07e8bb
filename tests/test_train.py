"""Training recipe, checkpoints and the CLI on tiny synthetic data."""
import json

import pytest
import torch

from aghmn_fast.cli import main
from aghmn_fast.data import Dialogue, IEMOCAP_LABELS
from aghmn_fast.models import AGHMN, AGHMNConfig
from aghmn_fast.train import (TrainConfig, build_vocabulary, encode_dialogues, evaluate,
                              load_checkpoint, predict, train)

WORDS = {0: "calm fine okay sure", 1: "wow really what no way", 2: "scared afraid help",
         3: "sad sorry miss", 4: "great love happy yay", 5: "gross ugh eww", 6: "angry hate stop"}


def _dialogues(n, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        size = int(torch.randint(1, 7, (1,), generator=g))
        labels = torch.randint(0, 7, (size,), generator=g).tolist()
        texts = [" ".join(WORDS[l].split()[: 1 + j % 3]) + "!" for j, l in enumerate(labels)]
        out.append(Dialogue(f"d{seed}-{i}", ["A"] * size, texts, labels))
    return out


def _setup(summary="agru"):
    tr, dv, te = _dialogues(30, 1), _dialogues(6, 2), _dialogues(6, 3)
    vocab = build_vocabulary([tr, dv, te], min_count=1)
    emb = torch.randn(len(vocab), 12)  # unit-scale vectors: the words carry the label
    cfg = AGHMNConfig(vocab_size=len(vocab), embedding_dim=12, num_classes=7, hidden_size=10,
                      window=3, summary=summary, backend="reference")
    torch.manual_seed(0)
    return AGHMN(cfg, emb), tr, dv, te, vocab


def test_tiny_training_lowers_the_loss_and_saves_a_loadable_checkpoint(tmp_path):
    model, tr, dv, te, vocab = _setup()
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
    model, tr, dv, te, vocab = _setup()
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
    model, tr, dv, te, vocab = _setup(summary="biagru")
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


def _write_json_split(path, dialogues, labels):
    data = [[{"speaker": s, "utterance": t, "emotion": labels[l]}
             for s, t, l in zip(d.speakers, d.texts, d.labels)] for d in dialogues]
    path.write_text(json.dumps(data))


def test_cli_train_and_eval_on_iemocap_json(tmp_path, capsys):
    labels = list(IEMOCAP_LABELS)
    for split, seed in (("train", 1), ("dev", 2), ("test", 3)):
        ds = _dialogues(5, seed)
        for d in ds:
            d.labels[:] = [l % 6 for l in d.labels]
        _write_json_split(tmp_path / f"{split}.json", ds, labels)
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "iemocap", "--data", str(tmp_path), "--out", str(out),
               "--epochs", "1", "--embeddings", "random", "--embedding-dim", "8", "--hidden", "6",
               "--window", "4", "--no-progress", "--backend", "reference"])
    assert rc == 0
    assert "TEST  accuracy" in capsys.readouterr().out
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
