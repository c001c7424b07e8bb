"""What the runtime scripts and tests share: building and importing the ``aghmn_runtime`` module
from this checkout, exporting a checkpoint to ``.aghmn``, tiny random-initialised checkpoints
and synthetic dialogues (no MELD needed).
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME_DIR = os.path.join(REPO, "runtime")


def build_runtime_inplace(python: str = sys.executable, timeout: float = 900) -> None:
    """Compiles ``aghmn_runtime._native`` next to its package in runtime/ (incremental: nothing
    is rebuilt when no source or header changed). Raises ``RuntimeError`` with the compiler's
    output on failure."""
    done = subprocess.run([python, "setup.py", "-q", "build_ext", "--inplace"], cwd=RUNTIME_DIR,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"building aghmn_runtime failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")


def import_runtime(build: bool = True):
    """The ``aghmn_runtime`` module of this checkout (built in place first unless ``build`` is
    False)."""
    if build:
        build_runtime_inplace()
    if RUNTIME_DIR not in sys.path:
        sys.path.insert(0, RUNTIME_DIR)
    import aghmn_runtime
    return aghmn_runtime


def export(checkpoint: str, out: str, python: str = sys.executable, precision: str = "fp32") -> None:
    """``aghmn-fast export --checkpoint CHECKPOINT --out OUT --precision PRECISION`` of this
    checkout (a new process, as a user runs it). Raises ``RuntimeError`` with its message on
    failure."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    done = subprocess.run([python, "-m", "aghmn_fast.cli", "export", "--checkpoint", checkpoint,
                           "--out", out, "--precision", precision], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"export failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")


# Words of the synthetic vocabulary and texts: accents, capitals, punctuation and unknown words
# exercise the tokenizer as MELD does.
_WORDS = ["hi", "there", "okay", "no", "yes", "what", "why", "great", "terrible", "really", "love",
          "hate", "you", "me", "the", "a", "is", "it", "so", "very", "caf", "naive", "sure",
          "wow", "!", "?", "oh", "my", "god", "fine", "sorry", "ross", "rachel", "joey"]
_EXTRA = ["Café", "NAÏVE", "don't", "...", "Wow!!", "what?!", "zzzunknown", "\u00e9l\u00e8ve",
          "x\u0301y", "ＦＵＬＬ", "\t", "42", "—", "İstanbul"]


def synthetic_dialogues(count: int, seed: int = 0, max_turns: int = 14) -> Dict[str, List[str]]:
    """``count`` random dialogues (id -> utterance texts) over the synthetic vocabulary and some
    text it does not know (accents, digits, full-width letters, punctuation)."""
    rng = random.Random(seed)
    pool = _WORDS * 3 + _EXTRA
    out = {}
    for i in range(count):
        turns = rng.randint(1, max_turns)
        out[f"dlg-{i}"] = [" ".join(rng.choice(pool) for _ in range(rng.randint(1, 70)))
                           + rng.choice(["", "!", "?", " ."]) for _ in range(turns)]
    return out


def tiny_checkpoint(path: str, *, reader: str = "bigru", window: int = 10, seed: int = 0,
                    words: Optional[Sequence[str]] = None, embedding_dim: int = 16,
                    hidden_size: int = 24, label_names: Optional[Sequence[str]] = None,
                    **config) -> str:
    """Writes a random-initialised AGHMN checkpoint (as ``aghmn-fast train`` writes them) with a
    vocabulary over ``words`` (default: the synthetic words); returns ``path``."""
    import torch

    from aghmn_fast.data import MELD_LABELS, Vocabulary, tokenize
    from aghmn_fast.models import AGHMN, AGHMNConfig
    from aghmn_fast.models.checkpoint import save_checkpoint
    if words is None:
        words = sorted({t for w in _WORDS for t in tokenize(w)})
    vocab = Vocabulary(["<pad>", "<unk>"] + [w for w in dict.fromkeys(words)
                                             if w not in ("<pad>", "<unk>")])
    labels = list(label_names or MELD_LABELS)
    torch.manual_seed(seed)
    cfg = AGHMNConfig(vocab_size=len(vocab), embedding_dim=embedding_dim, num_classes=len(labels),
                      hidden_size=hidden_size, window=window, reader=reader, **config)
    model = AGHMN(cfg, torch.randn(len(vocab), embedding_dim)).eval()
    save_checkpoint(path, model, vocab, labels)
    return path
