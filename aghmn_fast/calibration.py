"""Post-hoc calibration of the rare classes: per-class logit biases fitted on dev (issue 21).

A model's class scores are ``log_softmax(W e + b)``; calibration adds a bias ``d_c`` per class,
chosen on the dev set to maximise macro F1 while dev weighted F1 stays within
``max_weighted_f1_drop`` points of the uncalibrated model's. The biases are folded into the
classifier's bias ``b``, so every path that computes the model (offline evaluation, the
streaming engines, the compiled one-call push, the server) applies them identically, and they are
recorded in the checkpoint's ``extra["calibration"]`` (which also lets a later calibration start
again from the uncalibrated model).
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from .metrics import f1_scores

# Candidate biases per class: wide enough to move a rare class from never to often predicted
# (log-probability gaps on MELD are mostly under 3), coarse enough not to chase single dev
# utterances.
BIAS_GRID = np.round(np.arange(-3.0, 3.0 + 1e-9, 0.1), 1)


def fit_logit_biases(log_probs, labels, num_classes: int, max_weighted_f1_drop: float = 0.5,
                     grid: Sequence[float] = BIAS_GRID, max_rounds: int = 10) -> Dict:
    """Per-class biases added to ``log_probs`` [N, C] that maximise macro F1 on ``labels`` [N]
    under a weighted-F1 floor (the unbiased weighted F1 minus ``max_weighted_f1_drop`` points).

    Coordinate ascent from zero biases: each round tries every grid value for every class and
    keeps a change only if it raises macro F1 and keeps the floor; it stops after a round without
    a change. Returns ``{"logit_bias": [C floats], "before": {"weighted_f1", "macro_f1"},
    "after": {...}, "max_weighted_f1_drop": float}`` (percent). Raises ``ValueError`` for
    mismatched shapes, an empty input or a negative or non-finite drop.
    """
    scores = np.asarray(torch.as_tensor(log_probs).detach().cpu().double())
    y = np.asarray(torch.as_tensor(labels).detach().cpu()).astype(np.int64)
    if scores.ndim != 2 or scores.shape[1] != num_classes or y.shape != (scores.shape[0],) or not len(y):
        raise ValueError(f"log_probs must be [N, {num_classes}] and labels [N] with N >= 1, got "
                         f"{tuple(scores.shape)} and {tuple(y.shape)}")
    check_max_drop(max_weighted_f1_drop)
    before = f1_scores(y, scores.argmax(1), num_classes)
    floor = before[0] - max_weighted_f1_drop
    bias = np.zeros(num_classes)
    best = before
    for _ in range(max_rounds):
        changed = False
        for c in range(num_classes):
            for value in grid:
                if value == bias[c]:
                    continue
                trial = bias.copy()
                trial[c] = value
                weighted, macro = f1_scores(y, (scores + trial).argmax(1), num_classes)
                if weighted >= floor and macro > best[1]:
                    bias, best, changed = trial, (weighted, macro), True
        if not changed:
            break
    return {"logit_bias": [float(v) for v in bias],
            "before": {"weighted_f1": before[0], "macro_f1": before[1]},
            "after": {"weighted_f1": best[0], "macro_f1": best[1]},
            "max_weighted_f1_drop": float(max_weighted_f1_drop)}


def check_max_drop(max_weighted_f1_drop: float) -> None:
    """``ValueError`` naming the options unless the drop is finite and >= 0."""
    if not 0 <= max_weighted_f1_drop < float("inf"):
        raise ValueError("the dev weighted-F1 points calibration may give up (train "
                         "--calibrate-max-drop, calibrate --max-drop) must be a finite number >= 0, "
                         f"got {max_weighted_f1_drop}")


@torch.no_grad()
def set_logit_biases(model, new: Sequence[float], old: Sequence[float] = ()) -> None:
    """Fold per-class biases ``new`` into ``model.classifier.bias``, first removing ``old`` (the
    biases a previous calibration folded in, from its checkpoint record)."""
    bias = model.classifier.bias
    for values, sign in ((old, -1.0), (new, 1.0)):
        if len(values):
            if len(values) != bias.numel():
                raise ValueError(f"expected {bias.numel()} logit biases, got {len(values)}")
            bias.add_(sign * torch.tensor(list(values), dtype=bias.dtype, device=bias.device))
