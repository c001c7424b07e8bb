"""Run the CLI (or a script) as a user does, in a subprocess, and check its failure is one
clean line on stderr with the documented exit code."""
import json
import os
import subprocess
import sys


def run_cli(*args, stdin=None, timeout=120, env=None, cwd=None, script=None):
    """``python -m aghmn_fast.cli ARGS`` (or ``python SCRIPT ARGS``), output captured as text."""
    head = [script] if script else ["-m", "aghmn_fast.cli"]
    return subprocess.run([sys.executable, *head, *map(str, args)], input=stdin, text=True,
                          capture_output=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def assert_one_clean_line(proc, code, *fragments):
    """Exit ``code``, stderr exactly one line holding every fragment, no traceback."""
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


LABELS = ("neutral", "joy", "anger")
TEXTS = ("calm and fine", "wow", "so angry now")


def tiny_checkpoint(path):
    """A small untrained AGHMN checkpoint at ``path`` (word reader, random 8-d vectors)."""
    import torch

    from aghmn_fast.data import Dialogue
    from aghmn_fast.models import AGHMN, AGHMNConfig
    from aghmn_fast.models.checkpoint import save_checkpoint
    from aghmn_fast.training.trainer import build_vocabulary

    vocab = build_vocabulary([[Dialogue("0", ["A"] * 3, list(TEXTS), [0, 1, 2])]], min_count=1)
    cfg = AGHMNConfig(vocab_size=len(vocab), embedding_dim=8, num_classes=len(LABELS),
                      hidden_size=6, window=3)
    torch.manual_seed(0)
    save_checkpoint(str(path), AGHMN(cfg, torch.randn(len(vocab), 8)).eval(), vocab, list(LABELS))
    return path


def tiny_json_dataset(folder):
    """``folder``/{train,dev,test}.json in the authors' layout (MELD labels), a few dialogues
    of the three :data:`TEXTS`."""
    from aghmn_fast.data import MELD_LABELS
    folder.mkdir(parents=True, exist_ok=True)
    # every class once (training refuses a class without examples)
    dialogue = [{"speaker": "A", "utterance": TEXTS[i % len(TEXTS)], "emotion": label}
                for i, label in enumerate(MELD_LABELS)]
    for split in ("train", "dev", "test"):
        (folder / f"{split}.json").write_text(json.dumps([dialogue] * 4))
    return folder
