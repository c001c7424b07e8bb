"""The readers study script (benchmarks/reader_study.py): aggregation, provenance, merging."""
import json
import os
import runpy
import statistics
from types import SimpleNamespace

import pytest

LABELS = ["neutral", "fear"]


def _study_module():
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "reader_study.py")
    return SimpleNamespace(**runpy.run_path(path, run_name="reader_study"))


def _write_run(root, setting, seed, acc, wf1, macro, fear, commit="abc1234", best_epoch=None):
    out = root / setting / f"seed{seed}"
    out.mkdir(parents=True)
    history = [{"epoch": e, "dev": {"accuracy": 50.0 + e}} for e in (1, 2, 3)]
    metrics = {"test": {"accuracy": acc, "weighted_f1": wf1, "macro_f1": macro, "labels": LABELS,
                        "per_class": {"neutral": {"f1": 70.0}, "fear": {"f1": fear}}},
               "history": history, "best_dev": history[1]["dev"], "seconds_per_epoch": 9.0,
               "train_config": {"seed": seed, "epochs": 20, "lr": 5e-4, "class_weight_rate": 0.5},
               "model_config": {"reader": "bigru", "embedding_dim": 256, "dropout": 0.3}}
    if best_epoch is not None:
        metrics["best_epoch"] = best_epoch
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "provenance.json").write_text(json.dumps({"commit": commit, "dirty": False}))


def test_aggregate_means_per_seed_records_and_provenance(tmp_path):
    study = _study_module()
    _write_run(tmp_path, "wordllama-scale3", 1, 60.0, 58.0, 38.0, 10.0, "aaa1111")
    _write_run(tmp_path, "wordllama-scale3", 2, 61.0, 59.0, 40.0, 14.0, "bbb2222", best_epoch=3)
    entry = study.aggregate_runs(str(tmp_path))["wordllama-scale3"]
    assert entry["seeds"] == [1, 2] and entry["commits"] == ["aaa1111", "bbb2222"]
    assert entry["weighted_f1"]["mean"] == pytest.approx(58.5)
    assert entry["weighted_f1"]["std"] == pytest.approx(statistics.stdev([58.0, 59.0]))
    assert entry["per_class_f1"]["fear"]["mean"] == pytest.approx(12.0)
    # best epoch: recorded, else the first epoch whose dev metrics were selected
    assert [r["best_epoch"] for r in entry["runs"]] == [2, 3]
    assert entry["train_config"]["select_on"] == "accuracy"
    md = study.to_markdown({"wordllama-scale3": entry})
    assert "| 1,2 |" in md and "aaa1111, bbb2222" in md


def test_aggregate_keeps_and_extends_a_previous_study(tmp_path):
    study = _study_module()
    _write_run(tmp_path / "old", "wordllama-scale3", 1, 60.0, 58.0, 38.0, 10.0, "aaa1111")
    _write_run(tmp_path / "old", "minilm", 1, 59.0, 57.0, 37.0, 6.0, "aaa1111")
    _write_run(tmp_path / "old", "minilm", 2, 59.0, 57.5, 37.0, 6.0, "aaa1111")
    previous = study.aggregate_runs(str(tmp_path / "old"))
    for entry in previous.values():  # an aggregate written before per-seed records existed
        del entry["runs"]
    _write_run(tmp_path / "new", "wordllama-scale3", 2, 61.0, 59.0, 40.0, 14.0, "bbb2222")
    merged = study.aggregate_runs(str(tmp_path / "new"), previous)
    assert merged["minilm"] == previous["minilm"]  # not re-run: kept as it was
    scale3 = merged["wordllama-scale3"]
    assert scale3["seeds"] == [1, 2] and scale3["commits"] == ["aaa1111", "bbb2222"]
    assert scale3["macro_f1"]["mean"] == pytest.approx(39.0)
    assert scale3["per_class_f1"]["fear"]["mean"] == pytest.approx(12.0)
    # the same seed in both, or seeds added to a multi-seed entry without records: refused
    _write_run(tmp_path / "clash", "wordllama-scale3", 1, 61.0, 59.0, 40.0, 14.0)
    with pytest.raises(SystemExit, match="seeds \\[1\\]"):
        study.aggregate_runs(str(tmp_path / "clash"), previous)
    _write_run(tmp_path / "more", "minilm", 3, 61.0, 59.0, 40.0, 14.0)
    with pytest.raises(SystemExit, match="per-seed records"):
        study.aggregate_runs(str(tmp_path / "more"), previous)


def test_every_setting_passes_the_train_parser():
    from aghmn_fast.cli import build_parser

    study = _study_module()
    for name, args in study.SETTINGS.items():
        parsed = build_parser().parse_args(["train", *args])
        assert parsed.command == "train", name
