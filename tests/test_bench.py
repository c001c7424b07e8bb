"""The benchmark suite's machinery (``aghmn-fast bench``) on tiny shapes, so that it never rots.

Nothing here judges speed: the times are only checked to exist and be ordered statistics. What is
checked: every column runs and passes the correctness gate, a wrong backend is reported WRONG and
never timed, the files are written (JSON first; plots optional; never over a file git tracks),
the README section is refreshed only by ``benchmarks/refresh_readme.py`` and only between its
markers, and the CLI flags reach the suite.
"""
import importlib.util
import json
import math
import os

import pytest
import torch

from aghmn_fast import ops, reference
from aghmn_fast.cli import program as cli
from aghmn_fast.ops import registry
from aghmn_fast.bench import kernels, machine, report, shapes, suite, timing
from aghmn_fast.data import default_meld_root

TINY = [shapes.Shape(1, 3, 8, "tiny"), shapes.Shape(4, 3, 8, "tiny"), shapes.Shape(4, 5, 8, "tiny")]
HAVE_MELD = os.path.exists(os.path.join(default_meld_root(), "train_sent_emo.csv"))
TIMED = ("median_us", "q1_us", "q3_us", "p10_us", "p90_us", "min_us", "reps")


def _opts(tmp_path, **kw):
    base = dict(parts=("agru", "memory_bank"), quick=True, threads=(1,), out_dir=str(tmp_path),
                shapes=TINY, compile=False, name="test-machine")
    base.update(kw)
    return suite.SuiteOptions(**base)


def _rows(record, **match):
    return [r for r in record["ops"] if all(r[k] == v for k, v in match.items())]


def test_suite_on_tiny_shapes_writes_record_report_and_plots(tmp_path):
    record = suite.run_suite(_opts(tmp_path, threads=(1, 2)), log=lambda *_: None)
    out = tmp_path / "test-machine"
    assert sorted(os.listdir(out)) == ["bench-quick.json", "bench-quick.md", "quick-agru.png",
                                       "quick-memory_bank.png"]
    assert torch.get_num_threads() == 1  # restored after the two-thread rows
    saved = json.loads((out / "bench-quick.json").read_text())
    assert saved["ops"] == json.loads(json.dumps(record["ops"]))
    for key in ("cpu_model", "cores", "isa_flags", "python", "torch", "triton", "date"):
        assert key in saved["machine"], key
    cols = kernels.columns("cpu", compile_reference=False)
    assert {"cpu", "reference", "nn.GRU"} <= set(cols)
    # every (op, shape, mode, threads) has one row per column
    assert len(record["ops"]) == 2 * len(TINY) * 2 * 2 * len(cols)
    for r in record["ops"]:
        if r["backend"] == "triton":  # only its CPU interpreter exists here: never timed
            assert r["status"] == "skipped" and "median_us" not in r
            continue
        assert r["status"] == "ok", r
        assert r["p10_us"] <= r["q1_us"] <= r["median_us"] <= r["q3_us"] <= r["p90_us"]
        if r["op"] == "agru" and r["backend"] == "nn.GRU":
            assert "max_rel_err" not in r  # a yardstick computing another function
        else:
            assert r["max_rel_err"] <= kernels.default_tolerance("cpu"), r
    # nn.GRU over the stacked windows is the same BiGRU as memory_bank: it passed the gate,
    # gradients included
    assert all("max_rel_err" in r for r in _rows(record, op="memory_bank", backend="nn.GRU"))
    md = (out / "bench-quick.md").read_text()
    assert "#### agru, forward+backward" in md and "#### memory_bank, forward" in md
    assert "| B4-T5-H8 | 2 |" in md and "![quick-agru](quick-agru.png)" in md
    assert (out / "quick-agru.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times 1.01 backward: a kernel whose backward is slightly off."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * 1.01


def _register(name, agru, memory_bank):
    ops.register_backend(name, agru=agru, memory_bank=memory_bank, devices=("cpu",), priority=-50)


def test_wrong_backends_are_reported_not_timed(tmp_path):
    def bad_forward_agru(x, attn, *rest):
        out, h = reference.agru(x, attn, *rest)
        return out * 1.001, h

    def nan_bank(utterances, windows, flat):
        out = reference.memory_bank(utterances, windows, flat)
        return out.index_fill(0, torch.tensor([out.shape[0] - 1]), float("nan"))

    def bad_backward_agru(x, *rest):
        return reference.agru(_ScaleGrad.apply(x), *rest)

    def raising_bank(utterances, windows, flat):
        raise RuntimeError("this backend refuses every size")

    try:
        _register("test-wrong-fwd", bad_forward_agru, nan_bank)
        _register("test-wrong-bwd", bad_backward_agru, raising_bank)
        record = suite.run_suite(_opts(tmp_path, shapes=TINY[1:2]), log=lambda *_: None)
    finally:
        registry._REGISTRY.pop("test-wrong-fwd", None)
        registry._REGISTRY.pop("test-wrong-bwd", None)
    assert "test-wrong-fwd" not in ops.backends()

    def status(op, backend, mode):
        (row,) = _rows(record, op=op, backend=backend, mode=mode)
        if row["status"] != "ok":
            assert not any(k in row for k in TIMED), row  # not timed
        return row

    for mode in kernels.MODES:
        row = status("agru", "test-wrong-fwd", mode)
        assert row["status"] == "WRONG" and "> tolerance" in row["note"]
        assert mode != "forward" or row["note"].startswith("output")
        assert 5e-4 < row["max_rel_err"] < 2e-3
        row = status("memory_bank", "test-wrong-fwd", mode)
        assert row["status"] == "WRONG" and math.isinf(row["max_rel_err"])  # NaN never passes
        row = status("memory_bank", "test-wrong-bwd", mode)
        assert row["status"] == "error" and "refuses every size" in row["note"]
    # right outputs, wrong input gradient: passes forward, caught forward+backward
    assert status("agru", "test-wrong-bwd", "forward")["status"] == "ok"
    row = status("agru", "test-wrong-bwd", "forward+backward")
    assert row["status"] == "WRONG" and row["note"].startswith("grad of input 0")
    # the real backends of the same run were still timed
    assert all(r["status"] == "ok" for r in _rows(record, backend="cpu"))
    md = open(os.path.join(tmp_path, "test-machine", "bench-quick.md")).read()
    assert "**WRONG**" in md and "test-wrong-bwd: error: RuntimeError" in md


def test_gate_tolerance_is_the_knob(tmp_path):
    """A tolerance of zero fails even the exact-in-float64 comparison of float32 kernels, so the
    gate really compares numbers (it is not a status that is always ok)."""
    cfg = kernels.OpSuiteConfig(shapes=TINY[1:2], ops=("agru",), modes=("forward",), threads=(1,),
                                backends=["cpu", "reference"], compile=False,
                                budget=timing.QUICK_BUDGET, tolerance=0.0)
    rows = kernels.run_ops(cfg, log=lambda *_: None)
    assert [r["status"] for r in rows] == ["WRONG", "WRONG"]
    assert all(0 < r["max_rel_err"] < 1e-5 for r in rows)


def _refresh_readme_module():
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "refresh_readme.py")
    spec = importlib.util.spec_from_file_location("refresh_readme", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_section_only_between_markers(tmp_path):
    refresh = _refresh_readme_module()
    # the package only reports; rewriting the README is the developer script's job
    assert not any(hasattr(report, name) for name in ("update_readme", "readme_section"))
    readme = tmp_path / "README.md"
    head, tail = "# proj\n\nintro\n\n", "## License\nMIT\n"
    readme.write_text(head + tail)
    refresh.update_readme(str(readme), f"{refresh.README_START}\nFIRST\n{refresh.README_END}")
    assert readme.read_text() == head + f"{refresh.README_START}\nFIRST\n{refresh.README_END}\n\n" + tail
    refresh.update_readme(str(readme), f"{refresh.README_START}\nSECOND\n{refresh.README_END}")
    assert readme.read_text() == head + f"{refresh.README_START}\nSECOND\n{refresh.README_END}\n\n" + tail
    readme.write_text(f"x\n{refresh.README_START}\nhalf\n")
    with pytest.raises(ValueError, match="only one of the markers"):
        refresh.update_readme(str(readme), "new")


def test_cli_end_to_end_then_refresh_readme(tmp_path, capsys):
    """The CLI writes only under --out-dir; the developer script then rewrites the README."""
    readme = tmp_path / "README.md"
    readme.write_text("# proj\n\n## License\nMIT\n")
    args = ["bench", "--ops", "agru", "--shapes", "B2-T3-H8,B5-T3-H8", "--threads", "1",
            "--quick", "--out-dir", str(tmp_path / "res"), "--name", "box"]
    assert cli.main(args) == 0
    assert readme.read_text() == "# proj\n\n## License\nMIT\n"  # untouched by the command
    assert sorted(os.listdir(tmp_path / "res" / "box")) == ["bench-quick.json", "bench-quick.md",
                                                            "quick-agru.png"]
    assert "README" not in capsys.readouterr().out
    refresh = _refresh_readme_module()
    assert refresh.main([str(tmp_path / "res" / "box" / "bench-quick.json"), "--readme",
                         str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# proj\n\n" + refresh.README_START + "\n## Performance")
    assert text.endswith(refresh.README_END + "\n\n## License\nMIT\n")
    assert "res/box/bench-quick.md" in text and "(res/box/quick-agru.png)" in text
    assert "| agru | B2-T3-H8 |" in text and "| agru | B5-T3-H8 |" in text
    assert "`aghmn-fast bench --device cpu --ops agru --threads 1 --quick --shapes " in text
    (tmp_path / "not-a-record.json").write_text("{}")
    assert refresh.main([str(tmp_path / "not-a-record.json"), "--readme", str(readme)]) == 2
    assert "not an aghmn-fast bench record" in capsys.readouterr().err


def test_records_written_before_mode_was_path_still_read():
    """Result rows name their compute mode "mode"; records written before (issue 20) said
    "path": the committed bench.json of the 2-core EPYC machine is one, and the report and the
    README section still read its model rows."""
    with open(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "amd-epyc-2c",
                           "bench.json")) as f:
        old = json.load(f)
    rows = old["model"]["rows"]
    assert all("path" in r and "mode" not in r for r in rows)  # still an old record
    assert [report.mode_of(r) for r in rows[:2]] == ["reference", "fused (cpu)"]
    assert report.mode_of({"mode": "push", "path": "ignored"}) == "push"
    md = report.markdown(old)
    assert "| threads | mode | ms / step |" in md
    assert f"| 1 | reference | {rows[0]['step_ms']:.2f} |" in md
    section = _refresh_readme_module().readme_section(old, "r.md", None)
    fused = next(r for r in rows if "speedup" in r)
    ref = next(r for r in rows if r["path"] == "reference" and r["threads"] == fused["threads"])
    assert f"fused vs {ref['step_ms']:.1f} ms/step" in section


def test_cli_default_out_dir_is_a_new_folder_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["bench", "--ops", "agru", "--shapes", "B2-T3-H8", "--threads", "1", "--quick",
            "--name", "box", "--no-plots"]
    assert cli.main(args) == 0
    (made,) = os.listdir(tmp_path)
    assert made.startswith("aghmn-bench-")
    assert sorted(os.listdir(tmp_path / made / "box")) == ["bench-quick.json", "bench-quick.md"]
    assert cli.main(args) == 0  # a second run gets its own folder
    assert len(os.listdir(tmp_path)) == 2


def test_never_overwrites_a_tracked_file(tmp_path, capsys):
    import shutil
    import subprocess
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = tmp_path / "box"
    out.mkdir()
    (out / "bench-quick.json").write_text("committed\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(git + ["add", "box/bench-quick.json"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "results"], cwd=tmp_path, check=True)
    args = ["bench", "--ops", "agru", "--shapes", "B2-T3-H8", "--threads", "1", "--quick",
            "--out-dir", str(tmp_path), "--name", "box"]
    assert cli.main(args) == 2
    assert "refusing to overwrite files tracked by git" in capsys.readouterr().err
    assert (out / "bench-quick.json").read_text() == "committed\n"
    assert suite.tracked_files([str(tmp_path / "elsewhere" / "x.json")]) == []


def test_json_is_written_without_matplotlib(tmp_path, monkeypatch):
    """A missing plotting library costs the plots (a note says so), never the record."""
    import sys
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    record = suite.run_suite(_opts(tmp_path, parts=("agru",), shapes=TINY[:1]),
                             log=lambda *_: None)
    out = tmp_path / "test-machine"
    assert sorted(os.listdir(out)) == ["bench-quick.json", "bench-quick.md"]
    saved = json.loads((out / "bench-quick.json").read_text())
    assert saved["plots"] == [] and any("matplotlib is not available" in n for n in saved["notes"])
    assert saved["ops"] == json.loads(json.dumps(record["ops"]))


def test_cli_flags_reach_the_options(monkeypatch, tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(["bench", "--ops", "agru,model", "--threads", "2,1", "--no-compile",
                              "--compile-shapes", "B1-T10-H100",
                              "--model-dialogues", "5", "--out-dir", "somewhere"])
    opts = cli.COMMANDS["bench"].__globals__["options_from_args"](args)
    assert (opts.parts, list(opts.threads), opts.compile, opts.out_dir) == (
        ["agru", "model"], [2, 1], False, "somewhere")
    assert opts.compile_shapes == ["B1-T10-H100"] and opts.model_dialogues == 5
    monkeypatch.chdir(tmp_path)
    full = cli.COMMANDS["bench"].__globals__["options_from_args"](parser.parse_args(["bench"]))
    assert full.out_dir.startswith("aghmn-bench-") and not os.path.exists(full.out_dir)
    for bad in (["bench", "--threads", "0"], ["bench", "--threads", "a"], ["bench", "--device", "tpu"],
                ["bench", "--readme", "README.md"]):
        with pytest.raises(cli.UsageError):
            parser.parse_args(bad)
    with pytest.raises(ValueError, match="unknown benchmark part"):
        suite.SuiteOptions(parts=("agru", "gpu"))
    with pytest.raises(ValueError, match="shape id"):
        shapes.shape_by_id("32x10")


def test_summarize_and_machine_slug(tmp_path):
    stats = timing.summarize([float(x) for x in range(100, 0, -1)])
    assert (stats["median_us"], stats["q1_us"], stats["q3_us"]) == (50.5, 25.75, 75.25)
    assert (stats["p10_us"], stats["p90_us"]) == pytest.approx((10.9, 90.1))
    assert (stats["min_us"], stats["reps"]) == (1.0, 100)
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
                    "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw\n\nprocessor\t: 1\n")
    info = machine.machine_info("cpu", cpuinfo_path=str(fake))
    assert info["isa_flags"] == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw"]
    assert machine.machine_slug(dict(info, cores=4)) == "intel-xeon-platinum-8481c-4c"
    assert machine.machine_slug({"gpu": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"


@pytest.mark.skipif(not HAVE_MELD, reason="MELD data not found (set AGHMN_DATA)")
def test_model_and_stream_parts_on_a_few_dialogues(tmp_path):
    record = suite.run_suite(_opts(tmp_path, parts=("model", "stream"), model_dialogues=3,
                                   stream_concurrency=4), log=lambda *_: None)
    model = record["model"]
    assert model["extrapolated"] and model["dialogues_timed"] == 3
    modes = {r["mode"]: r for r in model["rows"]}
    assert set(modes) == {"reference", f"fused ({ops.backends('cpu')[0]})"}
    for r in modes.values():
        assert r["step_ms"] > 0 and r["epoch_s"] > r["timed_epoch_s"][0]
    (run,) = record["stream"]
    assert [c["window"] for c in run["cases"]] == [10, 40]
    assert run["cases"][0]["concurrent"]["conversations"] == 4
    for c in run["cases"]:  # 18- and 60-utterance dialogues: both have full windows
        full = c["stream"]["full_window"]
        assert full["n"] == (18 - 10 if c["window"] == 10 else 60 - 40) * 2 and full["median_ms"] > 0
        assert c["stream"]["mode"] == ("push" if ops.backends("cpu")[0] == "cpu" else "ops")
    md = open(record["files"][1]).read()
    assert "**epoch times extrapolated**" in md and "## Streaming" in md and "full windows" in md


def _compiled_rows(tmp_path, shape_ids):
    opts = _opts(tmp_path, shapes=TINY[:2], compile=True, compile_shapes=shape_ids,
                 backends=["reference", "reference-compiled"])
    return suite.run_suite(opts, log=lambda *_: None)


def test_compiled_baseline_machinery(tmp_path, monkeypatch):
    """The torch.compile column with dynamo's "eager" backend (tracing only, fast): gated, its
    first call reported as compile time, limited to --compile-shapes."""
    monkeypatch.setattr(kernels, "COMPILE_BACKEND", "eager")
    record = _compiled_rows(tmp_path, [TINY[1].id])
    compiled = _rows(record, backend="reference-compiled")
    assert len(compiled) == 2 * 2 * 2
    for r in compiled:
        if r["shape"] == TINY[1].id:
            assert r["status"] == "ok" and r["compile_s"] > 0 and r["max_rel_err"] < 1e-4, r
        else:
            assert r["status"] == "skipped" and "not compiled" in r["note"]
    md = open(record["files"][1]).read()
    assert "torch.compile time of the reference" in md


@pytest.mark.slow
@pytest.mark.matrix  # inductor's codegen and C++ compile: minutes on 2 cores
def test_compiled_baseline_with_inductor(tmp_path):
    record = _compiled_rows(tmp_path, [TINY[0].id])
    ok = [r for r in _rows(record, backend="reference-compiled") if r["status"] != "skipped"]
    assert len(ok) == 4 and all(r["status"] == "ok" for r in ok), ok


def test_tables_ratios_and_noise_marks():
    def row(backend, median, mode="forward", status="ok", p10=None, p90=None):
        return dict(op="agru", mode=mode, shape="B1-T10-H100", B=1, T=10, H=100, threads=1,
                    backend=backend, status=status, median_us=median, p10_us=p10 or median,
                    p90_us=p90 or median, q1_us=median, q3_us=median)
    rows = [row("cpu", 50.0), row("reference", 400.0), row("reference-compiled", 0, status="skipped"),
            row("nn.GRU", 100.0, p10=90.0, p90=300.0),
            row("cpu", 200.0, mode="forward+backward"), row("reference", 1000.0, mode="forward+backward"),
            row("nn.GRU", 0, mode="forward+backward", status="WRONG")]
    for r in rows:
        if r["status"] != "ok":
            for k in ("median_us", "p10_us", "p90_us", "q1_us", "q3_us"):
                del r[k]
    table = "\n".join(report.op_tables(rows))
    assert "| B1-T10-H100 | 1 | 50.0 (50.0–50.0) | 400 (400–400) | – | 100† (90.0–300) | 8.0x |  | 2.0x |" in table
    assert "| B1-T10-H100 | 1 | 200 (200–200) | 1000 (1000–1000) |  | **WRONG** | 5.0x |  |  |" in table
    summary = report.summary_table(rows, 1, ["B1-T10-H100"])
    assert summary[0] == ("| op | shape | forward: cpu (us) | reference / cpu | nn.GRU / cpu |"
                          " forward+backward: cpu (us) | reference / cpu | nn.GRU / cpu |")
    assert summary[2] == "| agru | B1-T10-H100 | 50.0 | 8.0x | 2.0x | 200 | 5.0x |  |"


def test_compile_shapes_defaults():
    resolved = suite._resolved
    assert resolved(suite.SuiteOptions())["compile_shapes"] == ["B1-T10-H100", "B1024-T10-H100"]
    full_all = resolved(suite.SuiteOptions(compile_shapes=["all"]))
    assert full_all["compile_shapes"] == [s.id for s in full_all["shapes"]]
    assert resolved(suite.SuiteOptions(quick=True))["compile"] is False
    quick = resolved(suite.SuiteOptions(quick=True, compile=True))
    assert quick["compile"] and quick["compile_shapes"] == [s.id for s in shapes.QUICK_SHAPES]
