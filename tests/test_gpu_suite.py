"""benchmarks/gpu_suite.py, the one-call GPU check, rehearsed without a GPU.

What can run here does (the driver, the env card, the correctness and streaming comparisons on
CPU tensors); the GPU stages must report "skipped: no CUDA device" instead of failing, every
stage must leave a JSON report, and the summary table must be the last thing printed. On a GPU
machine (AGHMN_TRITON_GPU=1) the GPU stages' own checks run in the suite itself.
"""
import importlib.util
import json
import os

import pytest
import torch

from aghmn_fast import ops, reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _suite():
    spec = importlib.util.spec_from_file_location("gpu_suite",
                                                  os.path.join(ROOT, "benchmarks", "gpu_suite.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


suite = _suite()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_driver_runs_every_stage_and_prints_the_summary_last(tmp_path, capsys, monkeypatch):
    mirror = tmp_path / "mirror"
    out = tmp_path / "results"
    rc = suite.drive(["env", "tests", "correctness", "timing", "stream", "plots"], 200,
                     str(out), str(mirror))
    assert rc == 0  # skipped stages are not failures
    printed = capsys.readouterr().out.rstrip().splitlines()
    assert printed[-1].startswith("total")
    names = [line.split()[0] for line in printed[-7:-1]]
    assert names == ["env", "tests", "correctness", "timing", "stream", "plots"]
    summary = json.loads((out / "suite.json").read_text())
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status["env"] == "ok"
    for stage in ("tests", "correctness", "timing", "stream"):
        assert status[stage] == suite.NO_GPU
        assert json.loads((out / f"{stage}.json").read_text())["status"] == suite.NO_GPU
    assert status["plots"].startswith("skipped: no timing table")
    env = json.loads((out / "env.json").read_text())
    assert env["packages"]["torch"] == torch.__version__ and env["cuda_available"] is False
    # mirrored to $OUT after every stage, logs included
    assert json.loads((mirror / "suite.json").read_text()) == summary
    assert (mirror / "logs" / "env.log").exists()
    # no path of this machine in what would be committed
    for path in out.rglob("*.json"):
        assert ROOT not in path.read_text(), path


def test_out_of_budget_stages_are_skipped_not_run(tmp_path, capsys):
    rc = suite.drive(["env", "plots"], 4, str(tmp_path), None)
    assert rc == 0
    summary = json.loads((tmp_path / "suite.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["skipped: out of time budget"] * 2


def test_unknown_stage_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        suite.main(["--stages", "env,warp-drive"])
    assert "unknown stage" in capsys.readouterr().err


def test_correctness_report_passes_right_backends_and_catches_wrong_ones():
    def wrong_agru(x, attn, *rest):
        out, h = reference.agru(x, attn, *rest)
        return out * 1.001, h

    ops.register_backend("test-suite-wrong", agru=wrong_agru, memory_bank=reference.memory_bank,
                         devices=("cpu",), priority=-50)
    try:
        report = suite.correctness_report("cpu", ["cpu", "test-suite-wrong"], dtypes=("float32",))
    finally:
        ops._REGISTRY.pop("test-suite-wrong", None)
    rows = report["rows"]
    assert len(rows) == 2 * len(suite._op_cases("cpu", torch.float64))
    assert all(r["ok"] for r in rows if r["backend"] == "cpu"), rows
    wrong = [r for r in rows if r["backend"] == "test-suite-wrong"]
    assert all(not r["ok"] for r in wrong if r["case"].startswith("agru"))
    assert all(r["ok"] for r in wrong if r["case"].startswith("memory_bank"))
    assert all(d["bitwise_equal"] for d in report["determinism"])
    assert report["ok"] is False


def test_stream_report_compares_every_mode_with_ops():
    report = suite.stream_report("cpu", windows=(6,), concurrency=(5,), extra=3)
    timed = [r for r in report["rows"] if "median_us" in r]
    assert {r["mode"] for r in timed} >= {"ops"} and all(r["utt_per_s_5"] > 0 for r in timed)
    diffs = [r for r in report["rows"] if "max_prob_diff_vs_ops" in r]
    assert len(diffs) == len(timed) and report["ok"], report


def test_timing_targets_from_rows():
    rows = [{"op": "agru", "mode": "forward", "shape": s, "backend": b, "median_us": t}
            for s, b, t in (("B1-T40-H100", "nn.GRU", 300.0), ("B1-T40-H100", "cuda", 100.0),
                            ("B1024-T10-H100", "nn.GRU", 50.0), ("B1024-T10-H100", "cuda", 60.0),
                            ("B32-T40-H100", "nn.GRU", 80.0), ("B32-T40-H100", "cuda", 40.0))]
    got = {r["shape"]: r for r in suite.timing_targets(rows)}
    assert got["B1-T40-H100"]["speedup_vs_nn_gru"] == 3.0 and got["B1-T40-H100"]["met"]
    assert got["B1024-T10-H100"]["target"] == 1.0 and got["B1024-T10-H100"]["met"] is False
    assert got["B32-T40-H100"]["met"] is None


def test_run_bounded_kills_the_whole_process_group(tmp_path):
    """A stage that overruns leaves nothing behind (e.g. a compiler started by setup.py)."""
    import time
    pid_file = tmp_path / "grandchild.pid"
    script = f"sleep 60 & echo $! > {pid_file}; wait"
    start = time.perf_counter()
    rc, out = suite.run_bounded(["sh", "-c", script], 1.5)
    assert rc == 124 and "killed after" in out
    assert time.perf_counter() - start < 30
    grandchild = int(pid_file.read_text())
    time.sleep(0.2)
    try:  # gone, or a zombie waiting for its new parent to reap it: not running either way
        with open(f"/proc/{grandchild}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z", "X"), state
    assert suite.run_bounded(["sh", "-c", "echo hi"], 10) == (0, "hi\n")


def test_stream_report_keeps_other_modes_when_one_fails(monkeypatch):
    real = suite._stream_mode

    def flaky(rec, mode, *args):
        if mode == "step":
            raise RuntimeError("capture failed")
        return real(rec, mode, *args)
    monkeypatch.setattr(suite, "_stream_mode", flaky)
    report = suite.stream_report("cpu", windows=(4,), concurrency=(), extra=2)
    rows = {r["mode"]: r for r in report["rows"] if "K" in r and "max_prob_diff_vs_ops" not in r}
    assert "capture failed" in rows["step"]["error"] and "median_us" in rows["ops"]
    assert report["ok"] is False


def test_build_budget_grows_as_cores_shrink():
    seconds = [suite.build_seconds(c) for c in (1, 2, 4, 8, 16, 128)]
    assert seconds == sorted(seconds, reverse=True)
    assert suite.build_seconds(2) >= 300 and suite.build_seconds(16) == 150
    assert suite.nominal_seconds("build") == suite.build_seconds(os.cpu_count() or 1)
    assert suite.nominal_seconds("tests") == dict((s, n) for s, n, _ in suite.STAGES)["tests"]


def test_test_stage_runs_the_representative_cases_first_then_the_rest(tmp_path):
    """The two passes of the test stage, collected here: "first" holds one case per test,
    implementation and dtype, "rest" every other one, and together they are the whole sweep."""
    import subprocess
    import sys
    passes = suite.test_pass_commands(str(tmp_path))
    assert [p[0] for p in passes] == ["first", "rest"] and passes[0][1][-1] == "tests/ops"

    def collected(subset):
        env = {k: v for k, v in os.environ.items() if k != "AGHMN_OPS_SUBSET"}
        if subset:
            env["AGHMN_OPS_SUBSET"] = subset
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only",
                               "-p", "no:cacheprovider", "tests/ops"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return [line for line in done.stdout.splitlines() if "::" in line]

    first, rest, every = collected("first"), collected("rest"), collected(None)
    assert first and rest and sorted(first + rest) == sorted(every)
    assert any("-100-" in t or t.endswith("-100]") for t in first)  # the model's H first
    assert len(every) / 10 < len(first) < len(every) / 3
