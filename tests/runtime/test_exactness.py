"""The runtime's probabilities against the torch StreamingRecognizer's (benchmarks/
runtime_exactness.py): interleaved push / push_many, repeats within a batch, closes and a
save/restore in the middle; synthetic dialogues always, a third of MELD test where MELD is."""
import json
import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
sys.path.insert(0, BENCHMARKS)
import runtime_exactness  # noqa: E402
from runtime_common import tiny_checkpoint  # noqa: E402

from aghmn_fast.data import default_meld_root, load_meld  # noqa: E402
from aghmn_fast.training.trainer import build_vocabulary  # noqa: E402

HAVE_MELD = os.path.exists(os.path.join(default_meld_root(), "test_sent_emo.csv"))


def _run(capsys, argv):
    code = runtime_exactness.main(argv)
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    assert result["labels_equal"] == result["utterances"]
    assert result["max_abs_probability_difference"] <= 1e-6
    assert result["calls"]["save_restore"] == 1 and result["calls"]["push"] > 0
    assert result["calls"]["push_many"] > 0 and result["calls"]["close"] > 0
    return result


@pytest.mark.parametrize("reader,window,precision", [("bigru", 10, "fp32"), ("bigru", 3, "fp32"),
                                                      ("cnn", 4, "fp32"), ("bigru", 10, "bf16"),
                                                      ("cnn", 4, "bf16")])
def test_synthetic_dialogues_match_torch(capsys, reader, window, precision):
    """At bf16 the model file holds bf16 tensors and the runtime a bf16 ring store; the torch
    recognizer rounds the same tensors with the same function."""
    result = _run(capsys, ["--synthetic", "60", "--reader", reader, "--window", str(window),
                           "--seed", str(window), "--precision", precision])
    assert result["precision"] == precision
    if reader == "bigru":   # the same kernel in the same order: bit for bit
        assert result["bitwise_equal_utterances"] == result["utterances"]


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MELD, reason="MELD data not found (set AGHMN_DATA)")
@pytest.mark.parametrize("reader,dim", [("bigru", 50), ("bigru", 256), ("cnn", 50)])
def test_a_third_of_meld_test_matches_torch(capsys, tmp_path, reader, dim):
    """GloVe-sized (50-d) and wordllama-sized (256-d) BiGRU readers and the CNN reader,
    random-initialised, at the paper's sizes (H = 100, K = 10), on MELD's own texts."""
    words = build_vocabulary([load_meld(None, "test")]).itos[2:]
    ckpt = tiny_checkpoint(str(tmp_path / "m.pt"), reader=reader, embedding_dim=dim,
                           hidden_size=100, words=words)
    result = _run(capsys, ["--checkpoint", ckpt, "--every", "3"])
    assert result["utterances"] > 800
    if reader == "bigru":
        assert result["bitwise_equal_utterances"] == result["utterances"]


@pytest.mark.slow
def test_runtime_bench_quick_runs_every_part(tmp_path):
    """benchmarks/runtime_bench.py --quick: every part runs and the record has each engine."""
    done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "runtime_bench.py"), "--quick",
                           "--projection-caches", "on,off", "--out", str(tmp_path / "r.json")], capture_output=True, text=True,
                          timeout=1200, cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(BENCHMARKS)))
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["wheel"]["bytes"] <= 2 * 2**20
    assert {"aghmn_runtime (python module)", "torch StreamingRecognizer"} <= set(record["cold_start"])
    assert record["memory_1000_conversations"]["aghmn_runtime (python module)"]["rss_mb"] > 0
    assert set(record["push"]) == {"threads=1"}
    assert set(record["push"]["threads=1"]) == {"K=10", "K=40"}
    k40 = record["push"]["threads=1"]["K=40"]
    assert {"push_many 1,024, aghmn_runtime", "push_many 1,024, aghmn_runtime bf16",
            "push, torch StreamingRecognizer bf16"} <= set(k40)
    assert k40["ring_state_bytes_per_conversation"]["bf16"] * 2 == \
        k40["ring_state_bytes_per_conversation"]["fp32"]
    assert k40["ring_state_bytes_per_conversation"]["fp32 no-cache"] * 7 == \
        k40["ring_state_bytes_per_conversation"]["fp32"]
    assert "push_many 1,024, aghmn_runtime bf16 no-cache" in k40
    assert record["model_file_bytes"]["bf16"] <= 0.55 * record["model_file_bytes"]["fp32"]
