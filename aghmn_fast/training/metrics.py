"""Evaluation metrics of the AGHMN papers (spec section 11), computed with scikit-learn.

All scores are percentages. Every class of ``label_names`` takes part (``labels=range(C)``), so a
class absent from both ``y_true`` and ``y_pred`` still counts in the macro average with F1 = 0
(``zero_division=0``), as it does in the published numbers' scripts.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)


def _as_labels(name: str, y, num_classes: int) -> np.ndarray:
    if hasattr(y, "detach"):  # a torch tensor, without importing torch here
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= num_classes)
    if bad.any():
        raise ValueError(f"{name} has class id {arr[bad][0]} outside [0, {num_classes}) "
                         f"(at position {int(np.flatnonzero(bad)[0])})")
    return arr.astype(np.int64)


def classification_metrics(y_true, y_pred, label_names: Sequence[str]) -> dict:
    """Score predictions ``y_pred`` against ``y_true`` (class ids indexing ``label_names``).

    Inputs may be lists, numpy arrays or torch tensors of integer class ids. Returns::

        {"accuracy": float, "weighted_f1": float, "macro_f1": float,   # percent
         "num_samples": int, "labels": [name, ...],
         "per_class": {name: {"precision": %, "recall": %, "f1": %, "support": int}, ...},
         "confusion_matrix": [[int, ...], ...]}   # rows: true class, columns: predicted

    Accuracy equals support-weighted recall (the authors' model-selection score).

    Raises ``ValueError`` for empty or mismatched inputs, class ids outside
    ``[0, len(label_names))``, or empty or duplicate ``label_names``.
    """
    if isinstance(label_names, str) or not isinstance(label_names, Sequence) or not label_names:
        raise ValueError(f"label_names must be a non-empty sequence of names, got {label_names!r}")
    names = [str(n) for n in label_names]
    if len(set(names)) != len(names):
        raise ValueError(f"label_names has duplicates: {names}")
    c = len(names)
    t = _as_labels("y_true", y_true, c)
    p = _as_labels("y_pred", y_pred, c)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")

    labels = list(range(c))
    prec, rec, f1, support = precision_recall_fscore_support(
        t, p, labels=labels, average=None, zero_division=0)
    per_class = {n: {"precision": 100.0 * float(prec[k]), "recall": 100.0 * float(rec[k]),
                     "f1": 100.0 * float(f1[k]), "support": int(support[k])}
                 for k, n in enumerate(names)}
    return {
        "accuracy": 100.0 * float(accuracy_score(t, p)),
        "weighted_f1": 100.0 * float(f1_score(t, p, labels=labels, average="weighted",
                                              zero_division=0)),
        "macro_f1": 100.0 * float(f1_score(t, p, labels=labels, average="macro", zero_division=0)),
        "num_samples": int(t.size),
        "labels": names,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(t, p, labels=labels).tolist(),
    }


def format_report(metrics: dict) -> str:
    """Render the output of :func:`classification_metrics` as a plain-text table.

    One row per class (precision, recall, F1 in percent with two decimals, support), the three
    summary scores, then the confusion matrix (rows true, columns predicted). Raises
    ``KeyError`` naming the first missing entry if ``metrics`` is not such a dict.
    """
    for key in ("accuracy", "weighted_f1", "macro_f1", "labels", "per_class", "confusion_matrix"):
        if key not in metrics:
            raise KeyError(f"metrics has no {key!r}; pass the output of classification_metrics")
    names = list(metrics["labels"])
    w = max(12, *(len(n) for n in names))
    lines = [f"{'class':<{w}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for n in names:
        r = metrics["per_class"][n]
        lines.append(f"{n:<{w}} {r['precision']:9.2f} {r['recall']:9.2f} {r['f1']:9.2f} "
                     f"{r['support']:8d}")
    total = sum(metrics["per_class"][n]["support"] for n in names)
    lines += ["",
              f"{'accuracy':<{w}} {metrics['accuracy']:9.2f} {'':>9} {'':>9} {total:8d}",
              f"{'weighted F1':<{w}} {'':>9} {'':>9} {metrics['weighted_f1']:9.2f}",
              f"{'macro F1':<{w}} {'':>9} {'':>9} {metrics['macro_f1']:9.2f}",
              "", "confusion matrix (rows: true, columns: predicted)"]
    cm = metrics["confusion_matrix"]
    cw = max(6, *(len(n[:8]) + 1 for n in names), *(len(str(x)) + 1 for row in cm for x in row))
    lines.append(" " * w + "".join(f"{n[:8]:>{cw}}" for n in names))
    for n, row in zip(names, cm):
        lines.append(f"{n:<{w}}" + "".join(f"{x:>{cw}d}" for x in row))
    return "\n".join(lines)


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple:
    """(weighted F1, macro F1) in percent of integer class-id arrays, as
    :func:`classification_metrics` computes them, without its checks and per-class report:
    for searches that score thousands of candidate predictions (e.g. calibration)."""
    c = num_classes
    confusion = np.bincount(y_true * c + y_pred, minlength=c * c).reshape(c, c)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(1)
    denominator = support + confusion.sum(0)
    f1 = np.divide(2 * tp, denominator, out=np.zeros(c), where=denominator > 0)
    return 100.0 * float(f1 @ support) / max(int(support.sum()), 1), 100.0 * float(f1.mean())
