"""The accuracy guard of bf16 (benchmarks/precision_guard.py) on a third of MELD test, with a
model made here at the paper's sizes (H = 100, 50-d word vectors, K = 10, the MELD vocabulary):
the records of the five trained checkpoints and the GloVe model are in
benchmarks/results/precision_guard.json (docs/results/precision-bf16.md)."""
import os
import sys

import pytest

BENCHMARKS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
sys.path.insert(0, BENCHMARKS)
import precision_guard  # noqa: E402
from runtime_common import tiny_checkpoint  # noqa: E402

from aghmn_fast.data import default_meld_root, load_meld  # noqa: E402
from aghmn_fast.training.trainer import build_vocabulary  # noqa: E402

HAVE_MELD = os.path.exists(os.path.join(default_meld_root(), "test_sent_emo.csv"))


@pytest.mark.skipif(not HAVE_MELD, reason="MELD data not found (set AGHMN_DATA)")
def test_bf16_guard_on_a_third_of_meld_test(tmp_path):
    dialogues = load_meld(None, "test")[::3]
    words = build_vocabulary([load_meld(None, "test")]).itos[2:]
    ckpt = tiny_checkpoint(str(tmp_path / "m.pt"), embedding_dim=50, hidden_size=100, words=words)
    result = precision_guard.guard(ckpt, dialogues, "bf16")
    assert result["utterances"] > 800
    # The guard can fail: the model spreads its labels over several classes, so a wrong bf16
    # kernel (or rounding) flips labels; and bf16 is what ran (the probabilities moved).
    assert result["predicted_classes_fp32"] >= 3
    assert 0 < result["max_abs_probability_difference"] < 0.05
    assert result["label_agreement"] >= precision_guard.MIN_LABEL_AGREEMENT, result
    assert abs(result["weighted_f1"]["difference_points"]) <= precision_guard.MAX_F1_POINTS
    assert abs(result["macro_f1"]["difference_points"]) <= precision_guard.MAX_F1_POINTS
    assert result["ok"]
