"""Checkpoint files: a trained model with its configuration, vocabulary and label names.

Inference (``aghmn_fast.streaming``, ``aghmn_runtime.serving``) loads models through this module,
never through :mod:`aghmn_fast.training`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from typing import Dict, Mapping, Optional, Sequence

import torch

from .._io import atomic_torch_save, require_file
from ..data import Vocabulary
from .aghmn import AGHMN, AGHMNConfig

CHECKPOINT_FORMAT = "aghmn_fast.checkpoint.v1"
DIGEST_KEY = "tensor_digest"


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint written before checkpoints carried a digest of their tensors: it loads, but
    damaged weights in it cannot be detected. The CLI shows it as one line."""

    cli_one_line = True


def tensor_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"sha256:<hex>"`` of a state dict's tensors: every name (sorted), dtype, shape and the
    little-endian bytes of its values. The same tensors give the same digest on every machine."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"state_dict entry {name!r} is not a tensor ({type(t).__name__})")
        t = t.detach().cpu().contiguous()
        header = json.dumps([name, str(t.dtype), list(t.shape)])
        h.update(len(header).to_bytes(8, "little") + header.encode("utf-8"))
        data = t.view(torch.uint8) if t.dim() > 0 else t.reshape(1).view(torch.uint8)
        h.update(data.numpy().tobytes())
    return "sha256:" + h.hexdigest()


def verify_tensor_digest(ckpt: Dict, path: str) -> None:
    """Check a checkpoint's tensors against the digest it carries (:func:`tensor_digest`).

    Raises ``ValueError`` (one line naming ``path``) when they differ: the weights were damaged
    or edited after the checkpoint was written. A checkpoint without a digest (written before
    digests) passes with an :class:`UnverifiedCheckpointWarning`."""
    stored = ckpt.get(DIGEST_KEY)
    if stored is None:
        warnings.warn(f"checkpoint {path} carries no tensor digest (written before aghmn_fast "
                      "checkpoints had one): its weights cannot be verified; re-save it with "
                      "`aghmn-fast calibrate` or retrain to add one", UnverifiedCheckpointWarning,
                      stacklevel=3)
        return
    try:
        actual = tensor_digest(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"checkpoint {path} has a malformed state_dict ({exc})") from None
    if actual != stored:
        raise ValueError(f"checkpoint {path}: its tensors do not match their digest (the weights "
                         "were damaged or modified after it was written); refusing to use it")


def save_checkpoint(path: str, model: AGHMN, vocab: Vocabulary, label_names: Sequence[str],
                    extra: Optional[Dict] = None) -> None:
    """Weights + config + vocabulary + label names, loadable with ``torch.load(weights_only=True)``.

    Written atomically: an interrupted save leaves the previous file intact.
    """
    cfg = dataclasses.asdict(model.config)
    state = model.state_dict()
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "config": cfg,
                       "state_dict": state, DIGEST_KEY: tensor_digest(state), "vocab": vocab.to_dict(),
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
    format, a missing entry, an unknown or invalid configuration, weights of the wrong shape,
    tensors that do not match the checkpoint's digest) raises ``ValueError`` naming the problem;
    an unavailable ``backend`` raises ``ValueError``. A checkpoint without a digest loads with an
    :class:`UnverifiedCheckpointWarning`.
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
    verify_tensor_digest(ckpt, path)   # after the shapes: a tensor of the wrong shape is named
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
