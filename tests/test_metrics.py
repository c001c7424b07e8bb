"""classification_metrics and format_report against values computed by hand."""
import json

import numpy as np
import pytest
import torch

from aghmn_fast.training.metrics import classification_metrics, format_report

from helpers.cases import raises_for

NAMES = ["a", "b", "c", "d"]
# Confusion (rows true, columns predicted): a -> a a b, b -> b c, c -> c; class d never occurs.
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 2, 2]


@pytest.mark.filterwarnings("error")  # undefined precision/recall must be 0 silently, not warned
def test_hand_computed_values():
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert m["accuracy"] == pytest.approx(100 * 4 / 6)
    # per class: a P=2/2 R=2/3 F1=0.8; b P=1/2 R=1/2 F1=0.5; c P=1/2 R=1 F1=2/3; d all 0
    expected = {"a": (100.0, 200 / 3, 80.0, 3), "b": (50.0, 50.0, 50.0, 2),
                "c": (50.0, 100.0, 200 / 3, 1), "d": (0.0, 0.0, 0.0, 0)}
    for name, (p, r, f1, s) in expected.items():
        row = m["per_class"][name]
        assert row["precision"] == pytest.approx(p)
        assert row["recall"] == pytest.approx(r)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == s and isinstance(row["support"], int)
    assert m["weighted_f1"] == pytest.approx(100 * (3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    # The absent class d still counts in the macro average, with F1 = 0.
    assert m["macro_f1"] == pytest.approx(100 * (0.8 + 0.5 + 2 / 3 + 0) / 4)
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert m["num_samples"] == 6 and m["labels"] == NAMES
    assert all(type(m[k]) is float for k in ("accuracy", "weighted_f1", "macro_f1"))
    json.dumps(m)  # plain Python types only: safe to write into a results file


def test_accuracy_is_weighted_recall_and_input_types():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, size=200)
    p = np.where(rng.random(200) < 0.6, t, rng.integers(0, 5, size=200))
    m = classification_metrics(torch.from_numpy(t), list(p), list("vwxyz"))
    weighted_recall = sum(r["recall"] * r["support"] for r in m["per_class"].values()) / 200
    assert m["accuracy"] == pytest.approx(weighted_recall)
    assert m["accuracy"] == pytest.approx(100 * float(np.mean(t == p)))
    assert classification_metrics(t.astype(np.float32), p, list("vwxyz")) == m
    perfect = classification_metrics([1, 0, 1], np.array([1, 0, 1]), ["x", "y"])
    assert perfect["accuracy"] == perfect["weighted_f1"] == perfect["macro_f1"] == 100.0


BAD_INPUTS = [
    ([], [], NAMES, "y_true is empty"),
    ([0], [], NAMES, "y_pred is empty"),
    ([0, 1], [0], NAMES, "differ in length"),
    ([0, 4], [0, 1], NAMES, r"y_true has class id 4 outside \[0, 4\) \(at position 1\)"),
    ([0, 1], [-1, 1], NAMES, "y_pred has class id -1"),
    ([0.5], [0], NAMES, "integer class ids"),
    ([[0, 1]], [[0, 1]], NAMES, "1-d"),
    ([0], [0], [], "label_names"),
    ([0], [0], ["a", "a"], "duplicates"),
]


def test_bad_input():
    for y_true, y_pred, names, pattern in BAD_INPUTS:   # microseconds each; the failing row is named
        raises_for((y_true, y_pred, names), ValueError, pattern,
                   lambda: classification_metrics(y_true, y_pred, names))


def test_format_report():
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    text = format_report(m)
    lines = text.splitlines()
    assert lines[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert lines[1].split() == ["a", "100.00", "66.67", "80.00", "3"]
    assert lines[4].split() == ["d", "0.00", "0.00", "0.00", "0"]
    assert "accuracy" in text and "66.67" in text
    assert any(line.split() == ["weighted", "F1", "67.78"] for line in lines)
    assert any(line.split() == ["macro", "F1", "49.17"] for line in lines)
    assert lines[-4].split() == ["a", "2", "1", "0", "0"]
    assert lines[-5].split() == NAMES
    with pytest.raises(KeyError, match="per_class"):
        format_report({k: v for k, v in m.items() if k != "per_class"})
