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
    assert names == ["env", "correctness", "tests", "timing", "stream", "plots"]
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


def test_dry_run_plans_within_the_budget_and_runs_nothing(capsys, monkeypatch):
    monkeypatch.setattr(suite.os, "cpu_count", lambda: 16)  # the lent GPU machine's
    rows = suite.plan(suite.STAGE_NAMES, 470)
    assert [r["stage"] for r in rows] == suite.STAGE_NAMES and all(r["runs"] for r in rows)
    assert sum(r["timeout_s"] for r in rows) <= 470
    timeouts = {r["stage"]: r["timeout_s"] for r in rows}
    # even when the build uses all its time, the conformance sweep keeps its own
    assert timeouts["build"] == 150 and timeouts["correctness"] == 150
    small = suite.plan(suite.STAGE_NAMES, 100)  # too small: stages are skipped, none overruns
    assert sum(r["timeout_s"] for r in small if r["runs"]) <= 100 and not small[1]["runs"]
    results = os.path.join(suite.HERE, "results")
    before = sorted(os.listdir(results))
    assert suite.main(["--dry-run", "--stages", "env,correctness,tests"]) == 0
    assert sorted(os.listdir(results)) == before
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:4]] == ["env", "correctness", "tests"]
    passes = [line for line in out if " pass " in line]
    assert [p.split(":")[0] for p in passes] == ["correctness pass first", "correctness pass rest",
                                                 "tests pass all"]
    assert "AGHMN_OPS_SUBSET=first" in passes[0] and passes[0].endswith("tests/ops")
    assert "-k 'not emulated'" in passes[0]


def test_unknown_stage_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        suite.main(["--stages", "env,warp-drive"])
    assert "unknown stage" in capsys.readouterr().err


#: A pytest plugin (-p) for the correctness stage's runs: the reference of the reverse AGRU made
#: wrong by 0.1 %, so every reverse case must fail and every forward one pass.
WRONG_REVERSE_REFERENCE = """
import pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    module = item.module
    real = getattr(module, "agru_ref", None)
    if real is not None:
        def wrong(*args, reverse=False, **kwargs):
            out, h_n = real(*args, reverse=reverse, **kwargs)
            return (out * 1.001, h_n) if reverse else (out, h_n)
        module.agru_ref = wrong
    yield
    if real is not None:
        module.agru_ref = real
"""


def test_correctness_runs_the_conformance_sweep_and_reports_each_error(tmp_path, monkeypatch):
    """The correctness stage is the CPU tests' conformance sweep (its cases, comparisons and
    tolerance table), rehearsed here on the C++ CPU kernels: representative case first, every
    comparison's error in the report, and a wrong result caught with its error."""
    from conformance import F32, TOLERANCE
    (tmp_path / "logs").mkdir()
    (tmp_path / "wrong_reverse_reference.py").write_text(WRONG_REVERSE_REFERENCE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    select = "test_agru_matches_reference and cpu-float32 or test_every_op_folder_declares_itself"
    report = suite.correctness_report(str(tmp_path), 240, gpu=False, select=select,
                                      pytest_args=["-p", "wrong_reverse_reference"])
    assert [p["subset"] for p in report["passes"]] == ["first", "rest"]
    rows = report["rows"]
    assert len(rows) == 2 * 7 + 1 and rows[0]["test"].endswith("[cpu-float32-2-40-16-100-fwd]")
    assert report["tolerance"] == {"float32": ["max", TOLERANCE[F32][1]]}
    (generic,) = [r for r in rows if r["implementation"] is None]  # a test of no implementation
    assert generic["outcome"] == "passed" and generic["comparisons"] == 0
    rows.remove(generic)
    for row in rows:
        assert (row["implementation"], row["dtype"]) == ("cpu", "float32")
        worst = row["worst"]
        if row["test"].endswith("-rev]"):  # a test stops at its first failed comparison
            assert row["outcome"] == "failed" and row["comparisons"] == 1, row
            assert worst["what"] == "output" and worst["error"] > worst["tolerance"], row
            assert "> 1e-05" in row["message"]
        else:  # output, h_n and the gradients of the 7 inputs
            assert row["outcome"] == "passed" and row["comparisons"] == 9, row
            assert worst["error"] <= worst["tolerance"], row
    line, none = report["summary"]
    assert (line["tests"], line["failed"]) == (14, 7) and line["worst_error"] > 1e-4
    assert (none["implementation"], none["tests"], none["worst_error"]) == (None, 1, None)
    assert report["ok"] is False
    assert sum(r["comparisons"] for r in rows) == 7 * 9 + 7


def test_pytest_pass_keeps_machine_paths_out_of_its_junit_xml(tmp_path):
    """The JUnit XML of a pass is committed with the results: this machine's paths in failure
    messages and tracebacks become <repo> / <python>, and the counts are read from it."""
    import sys
    xml = tmp_path / "pass-junit.xml"
    body = (f'<testsuite tests="1" failures="1"><testcase classname="tests.ops.test_x" name="t">'
            f'<failure message="{ROOT}/tests/ops/test_x.py:1 failed">{sys.prefix}/lib/x.py:2'
            f'</failure></testcase></testsuite>')
    cmd = [sys.executable, "-c", f"open({str(xml)!r}, 'w').write({body!r})"]
    result = suite._pytest_pass(cmd, str(xml), 60, dict(os.environ), str(tmp_path / "pass.log"))
    text = xml.read_text()
    assert ROOT not in text and sys.prefix not in text and "&lt;repo&gt;/tests/ops/" in text
    assert result["counts"]["failures"] == 1
    assert result["counts"]["failed"] == [{"test": "tests/ops/test_x.py::t",
                                           "message": "<repo>/tests/ops/test_x.py:1 failed"}]


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

    def state():  # gone, or a zombie waiting for its new parent to reap it: not running either way
        try:
            with open(f"/proc/{grandchild}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return "gone"
    deadline = time.monotonic() + 10   # the kill is sent; a loaded machine may take a moment
    while state() not in ("gone", "Z", "X") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state() in ("gone", "Z", "X"), state()
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


def test_correctness_stage_runs_the_representative_cases_first_then_the_rest(tmp_path):
    """The two passes of the correctness stage, collected here: "first" holds one case per test,
    implementation and dtype, "rest" every other one, and together they are the whole sweep."""
    import subprocess
    import sys
    passes = suite.pytest_pass_commands(str(tmp_path), "correctness", suite.CORRECTNESS_PASSES)
    assert [p[0] for p in passes] == ["first", "rest"]
    assert [p[1][-1] for p in passes] == ["tests/ops"] * 2
    assert "tests/ops" not in suite.GPU_TESTS  # the test stage does not run the sweep again

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
