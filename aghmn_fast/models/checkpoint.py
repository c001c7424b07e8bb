"""Checkpoint files: a trained model with its configuration, vocabulary and label names.

Inference (``aghmn_fast.streaming``, ``aghmn_fast.serving``) loads models through this module,
never through :mod:`aghmn_fast.train`.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, Optional, Sequence

import torch

from .._io import atomic_torch_save, require_file
from ..data import Vocabulary
from .aghmn import AGHMN, AGHMNConfig

CHECKPOINT_FORMAT = "aghmn_fast.checkpoint.v1"


def save_checkpoint(path: str, model: AGHMN, vocab: Vocabulary, label_names: Sequence[str],
                    extra: Optional[Dict] = None) -> None:
    """Weights + config + vocabulary + label names, loadable with ``torch.load(weights_only=True)``.

    Written atomically: an interrupted save leaves the previous file intact.
    """
    cfg = dataclasses.asdict(model.config)
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "config": cfg,
                       "state_dict": model.state_dict(), "vocab": vocab.to_dict(),
                       "label_names": list(label_names),
                       "extra": json.loads(json.dumps(extra or {}))}, path)


def read_checkpoint_file(path: str):
    """The object in a checkpoint file, read without executing pickled code (any format of this
    package: an AGHMN checkpoint, a contextual teacher). ``FileNotFoundError`` for a missing file,
    ``ValueError`` for a directory, a symbolic link loop or a file torch cannot read."""
    require_file(path, "checkpoint", "best.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except Exception as exc:
        # torch's own message advises weights_only=False, the wrong advice for a corrupt file
        raise ValueError(f"checkpoint {path} is not readable: corrupt, truncated or not a torch "
                         f"file ({type(exc).__name__})") from None


def load_checkpoint(path: str, backend: Optional[str] = None):
    """Load a checkpoint written by :func:`save_checkpoint` without executing pickled code.

    Returns (model in eval mode, vocabulary, label names, extra dict). A missing file raises
    ``FileNotFoundError``; anything else wrong with the file (not a torch file, truncated, another
    format, a missing entry, an unknown or invalid configuration, weights of the wrong shape)
    raises ``ValueError`` naming the problem; an unavailable ``backend`` raises ``ValueError``.
    """
    ckpt = read_checkpoint_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} is not an aghmn_fast checkpoint "
                         f"(expected format {CHECKPOINT_FORMAT})")
    missing = [k for k in ("config", "state_dict", "vocab", "label_names") if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: no {', '.join(missing)}")
    cfg = ckpt["config"]
    if not isinstance(cfg, dict):
        raise ValueError(f"checkpoint {path} has a malformed config")
    cfg = dict(cfg)
    known = {f.name for f in dataclasses.fields(AGHMNConfig)}
    unknown = sorted(set(map(str, cfg)) - known)
    if unknown:
        raise ValueError(f"checkpoint {path} has unknown config keys: {', '.join(unknown)} "
                         "(written by a newer aghmn_fast?)")
    if backend is not None:
        cfg["backend"] = backend
    try:
        model = AGHMN(AGHMNConfig(**cfg))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} has an invalid config: {exc}") from None
    state = ckpt["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} has a malformed state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ValueError(f"checkpoint {path} does not fit its config: {detail[:300]}") from None
    model.eval()
    try:
        vocab = Vocabulary.from_dict(ckpt["vocab"])
        labels = [str(n) for n in ckpt["label_names"]]
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"checkpoint {path} has a malformed vocabulary or label list ({exc})") from None
    if len(labels) != model.config.num_classes:
        raise ValueError(f"checkpoint {path} names {len(labels)} labels for "
                         f"{model.config.num_classes} classes")
    extra = ckpt.get("extra", {})
    return model, vocab, labels, extra if isinstance(extra, dict) else {}
