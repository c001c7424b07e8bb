"""Checkpoints carry a digest of their tensors: eval, calibrate, export, serve (through
from_checkpoint) and load_checkpoint refuse one whose tensors do not match it; checkpoints
written before digests load with a warning."""
import warnings

import pytest
import torch

from aghmn_fast.cli import main
from aghmn_fast.data import Vocabulary
from aghmn_fast.models import AGHMN, AGHMNConfig
from aghmn_fast.models.checkpoint import (DIGEST_KEY, UnverifiedCheckpointWarning, load_checkpoint,
                                          save_checkpoint, tensor_digest)
from aghmn_fast.streaming import StreamingRecognizer

WORDS = ["<pad>", "<unk>", "hi", "there"]
LABELS = ["neutral", "joy", "anger"]


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "best.pt"
    torch.manual_seed(0)
    cfg = AGHMNConfig(vocab_size=len(WORDS), embedding_dim=4, num_classes=3, hidden_size=5, window=2)
    save_checkpoint(str(path), AGHMN(cfg), Vocabulary(WORDS), LABELS)
    return path


def damage(path, count=1024):
    """Flip bits of ``count`` float32 weights (4 bytes each) behind the checkpoint's back: the
    digest stays as written."""
    obj = torch.load(path, weights_only=True)
    flat = obj["state_dict"]["embedding.weight"].view(-1).view(torch.int32)
    n = min(count, flat.numel())
    flat[:n] ^= 0x00400000
    torch.save(obj, path)


def test_the_digest_is_written_and_stable(ckpt):
    obj = torch.load(ckpt, weights_only=True)
    assert obj[DIGEST_KEY] == tensor_digest(obj["state_dict"])
    assert obj[DIGEST_KEY].startswith("sha256:") and len(obj[DIGEST_KEY]) == 7 + 64
    renamed = {k: v for k, v in obj["state_dict"].items()}
    renamed["x"] = renamed.pop("classifier.bias")
    assert tensor_digest(renamed) != obj[DIGEST_KEY]   # names are part of it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(str(ckpt))   # an intact checkpoint loads without a warning


def test_damaged_weights_are_refused_by_the_api(ckpt):
    damage(ckpt)
    with pytest.raises(ValueError, match="tensors do not match their digest"):
        load_checkpoint(str(ckpt))
    with pytest.raises(ValueError, match="tensors do not match their digest"):
        StreamingRecognizer.from_checkpoint(str(ckpt))


@pytest.mark.parametrize("command", [
    ["eval", "--data", "/nonexistent-data"],
    ["calibrate", "--data", "/nonexistent-data"],
    ["export", "--out", "OUT"],
    ["serve", "--port", "0"],
])
def test_damaged_weights_are_one_line_and_exit_2(ckpt, tmp_path, capsys, command):
    damage(ckpt)
    argv = [a.replace("OUT", str(tmp_path / "m.aghmn")) for a in command]
    assert main([argv[0], "--checkpoint", str(ckpt), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tensors do not match their digest" in err, err
    assert not (tmp_path / "m.aghmn").exists()


def test_checkpoints_without_a_digest_load_with_a_warning(ckpt):
    obj = torch.load(ckpt, weights_only=True)
    del obj[DIGEST_KEY]
    torch.save(obj, ckpt)
    with pytest.warns(UnverifiedCheckpointWarning, match="carries no tensor digest"):
        model, _, labels, _ = load_checkpoint(str(ckpt))
    assert labels == LABELS


def test_calibrate_writes_a_digest(ckpt, tmp_path):
    """calibrate re-saves through save_checkpoint: the digest matches the calibrated weights."""
    model, vocab, labels, extra = load_checkpoint(str(ckpt))
    with torch.no_grad():
        model.classifier.bias.add_(0.5)
    out = tmp_path / "calibrated.pt"
    save_checkpoint(str(out), model, vocab, labels, {"calibration": {"logit_bias": [0.5] * 3}})
    obj = torch.load(out, weights_only=True)
    assert obj[DIGEST_KEY] == tensor_digest(obj["state_dict"]) != torch.load(ckpt, weights_only=True)[DIGEST_KEY]
    load_checkpoint(str(out))


def test_the_cli_shows_the_warning_as_one_line(ckpt, tmp_path, capsys):
    obj = torch.load(ckpt, weights_only=True)
    del obj[DIGEST_KEY]
    torch.save(obj, ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.aghmn")]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"aghmn-fast export: warning: checkpoint {ckpt} carries no tensor digest")
    assert len(err.strip().splitlines()) == 1, err
