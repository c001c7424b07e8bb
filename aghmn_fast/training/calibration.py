"""Post-hoc calibration of the rare classes: per-class logit biases fitted on train+dev or dev (issue 21).

A model's class scores are ``log_softmax(W e + b)``; calibration adds a bias ``d_c`` per class,
chosen to maximise macro F1 while weighted F1 stays within ``max_weighted_f1_drop`` points of the
uncalibrated model's, on the data it is fitted on: by default the training dialogues pooled with
dev (``fit_on="train+dev"``), or dev alone. The biases are the average of fits on bootstrap
resamples of those data (bagging). Both choices are measured (docs/RESULTS.md, issue 21): one fit
on MELD's 1,109 dev utterances chases a few of them (macro F1 of the rare classes moves by points
per utterance) and lost up to 1.85 weighted-F1 points on test; cross-validated on dev, bagged
fits on train pooled with dev gave up 0.25 weighted-F1 points on held-out dev where dev-only fits
gave up 0.55, and gained macro F1 where dev-only fits lost it. The biases are
folded into the classifier's bias ``b``, so every path that computes the model (offline evaluation, the
streaming engines, the compiled one-call push, the server) applies them identically, and they are
recorded in the checkpoint's ``extra["calibration"]`` (which also lets a later calibration start
again from the uncalibrated model).
"""
from __future__ import annotations

from typing import Dict, Sequence

# numpy, sklearn (metrics) and torch are imported where they are used: the CLI reads the
# defaults below for its parser, and `import aghmn_fast.cli` must stay fast and torch-free.

# Candidate biases per class: wide enough to move a rare class from never to often predicted
# (log-probability gaps on MELD are mostly under 3), coarse enough not to chase single dev
# utterances.
BIAS_GRID = tuple(round(-3.0 + 0.1 * i, 1) for i in range(61))
# Weighted-F1 points a calibration may give up by default (the floor of its macro-F1 search).
DEFAULT_MAX_DROP = 0.5
# Bootstrap fits averaged: 30 cost ~5 s on MELD dev, ~11 s on train+dev; the average moved
# little beyond that.
DEFAULT_RESAMPLES = 30
# The data the biases are fitted on (the first is the default).
FIT_ON = ("train+dev", "dev")
DEFAULT_FIT_ON = FIT_ON[0]


def fit_logit_biases(log_probs, labels, num_classes: int,
                     max_weighted_f1_drop: float = DEFAULT_MAX_DROP,
                     grid: Sequence[float] = BIAS_GRID, max_rounds: int = 10,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Dict:
    """Per-class biases added to ``log_probs`` [N, C] that maximise macro F1 on ``labels`` [N]
    under a weighted-F1 floor (the unbiased weighted F1 minus ``max_weighted_f1_drop`` points).

    ``resamples`` = 0: one coordinate-ascent fit on all of the data (:func:`_coordinate_ascent`).
    Otherwise the biases are the mean of that fit on ``resamples`` bootstrap resamples (utterances
    drawn with replacement, ``numpy`` generator seeded with ``seed``: deterministic), scaled down
    in steps of 10 % until they keep the floor on all of the data. Returns ``{"logit_bias": [C
    floats], "before": {"weighted_f1", "macro_f1"}, "after": {...}, "max_weighted_f1_drop":
    float, "resamples": int, "seed": int}`` (scores in percent, on all of the data). Raises
    ``ValueError`` for mismatched shapes, an empty input, a negative or non-finite drop or a
    negative ``resamples``.
    """
    import numpy as np

    from .metrics import f1_scores

    scores = _numpy(log_probs).astype(np.float64)
    y = _numpy(labels).astype(np.int64)
    if scores.ndim != 2 or scores.shape[1] != num_classes or y.shape != (scores.shape[0],) or not len(y):
        raise ValueError(f"log_probs must be [N, {num_classes}] and labels [N] with N >= 1, got "
                         f"{tuple(scores.shape)} and {tuple(y.shape)}")
    check_max_drop(max_weighted_f1_drop)
    check_resamples(resamples)
    before = f1_scores(y, scores.argmax(1), num_classes)
    floor = before[0] - max_weighted_f1_drop
    if resamples == 0:
        bias = _coordinate_ascent(scores, y, num_classes, max_weighted_f1_drop, grid, max_rounds)
    else:
        rng = np.random.default_rng(seed)
        fits = []
        for _ in range(resamples):
            pick = rng.integers(0, len(y), len(y))
            fits.append(_coordinate_ascent(scores[pick], y[pick], num_classes, max_weighted_f1_drop,
                                           grid, max_rounds))
        mean = np.mean(fits, axis=0)
        for scale in np.linspace(1.0, 0.0, 11):
            bias = np.round(mean * scale, 6)
            if f1_scores(y, (scores + bias).argmax(1), num_classes)[0] >= floor:
                break
    after = f1_scores(y, (scores + bias).argmax(1), num_classes)
    return {"logit_bias": [float(v) for v in bias],
            "before": {"weighted_f1": before[0], "macro_f1": before[1]},
            "after": {"weighted_f1": after[0], "macro_f1": after[1]},
            "max_weighted_f1_drop": float(max_weighted_f1_drop),
            "resamples": int(resamples), "seed": int(seed)}


def _coordinate_ascent(scores, y, num_classes: int, max_drop: float, grid: Sequence[float],
                       max_rounds: int):
    """Coordinate ascent from zero biases: each round tries every grid value for every class and
    keeps a change only if it raises macro F1 and keeps the weighted-F1 floor of these data; it
    stops after a round without a change."""
    import numpy as np

    from .metrics import f1_scores

    before = f1_scores(y, scores.argmax(1), num_classes)
    floor = before[0] - max_drop
    bias = np.zeros(num_classes)
    best_macro = before[1]
    for _ in range(max_rounds):
        changed = False
        for c in range(num_classes):
            for value in grid:
                if value == bias[c]:
                    continue
                trial = bias.copy()
                trial[c] = value
                weighted, macro = f1_scores(y, (scores + trial).argmax(1), num_classes)
                if weighted >= floor and macro > best_macro:
                    bias, best_macro, changed = trial, macro, True
        if not changed:
            break
    return bias


def check_max_drop(max_weighted_f1_drop: float) -> None:
    """``ValueError`` naming the options unless the drop is finite and >= 0."""
    if not 0 <= max_weighted_f1_drop < float("inf"):
        raise ValueError("the dev weighted-F1 points calibration may give up (train "
                         "--calibrate-max-drop, calibrate --max-drop) must be a finite number >= 0, "
                         f"got {max_weighted_f1_drop}")


def _numpy(values):
    import numpy as np

    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().double().numpy() if values.is_floating_point() else values.detach().cpu().numpy()
    return np.asarray(values)


def check_resamples(resamples: int) -> None:
    """``ValueError`` naming the options unless ``resamples`` is an integer >= 0."""
    if isinstance(resamples, bool) or not hasattr(resamples, "__index__") or resamples < 0:
        raise ValueError("the bootstrap resamples of the calibration data (train "
                         "--calibrate-resamples, calibrate --resamples) must be an integer >= 0, "
                         f"got {resamples!r}")


def check_fit_on(fit_on: str) -> None:
    """``ValueError`` naming the options unless ``fit_on`` is one of :data:`FIT_ON`."""
    if fit_on not in FIT_ON:
        raise ValueError(f"the calibration data (train --calibrate-fit-on, calibrate --fit-on) must "
                         f"be one of {', '.join(FIT_ON)}, got {fit_on!r}")


def set_logit_biases(model, new: Sequence[float], old: Sequence[float] = ()) -> None:
    """Fold per-class biases ``new`` into ``model.classifier.bias``, first removing ``old`` (the
    biases a previous calibration folded in, from its checkpoint record)."""
    import torch

    bias = model.classifier.bias
    with torch.no_grad():
        for values, sign in ((old, -1.0), (new, 1.0)):
            if len(values):
                if len(values) != bias.numel():
                    raise ValueError(f"expected {bias.numel()} logit biases, got {len(values)}")
                bias.add_(sign * torch.tensor(list(values), dtype=bias.dtype, device=bias.device))
