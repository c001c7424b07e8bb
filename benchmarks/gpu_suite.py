#!/usr/bin/env python
"""The whole GPU check as one call of at most ~8 minutes: every stage runs and reports.

Made for the first (and maybe only) short loan of a GPU: a failed stage never stops the next
one. Each stage runs in its own process with its own timeout, taken from one overall budget
(``--budget``, default 470 s) so that the call as a whole ends in time; a stage that cannot
use the GPU because there is none reports ``skipped: no CUDA device``.

Stages, in order (``--stages`` picks some):

==============  ==================================================================================
env             versions card: python, torch (+CUDA, cuDNN), triton, nvcc, driver, GPU, packages
build           ``setup.py build_ext --inplace`` (C++ and CUDA); on failure a CPU-only build, so
                that the Triton stages still get the extension's CPU parts; its timeout grows
                as the machine's cores shrink (``build_seconds``)
correctness     the conformance sweep of the CPU tests (tests/ops: same cases, comparisons and
                tolerances) on the GPU implementations with ``AGHMN_TRITON_GPU=1`` (CUDA,
                compiled Triton), every dtype each runs: outputs and every gradient against the
                float64 reference, each comparison's error measured, and repeated backward
                passes bitwise equal; first one shape per test, implementation and dtype, then
                the rest with the time left
tests           pytest of the other GPU test files (Triton kernel variants, CUDA specifics,
                readiness, streaming) with ``AGHMN_TRITON_GPU=1``
compile         offline Triton compile report for this card's architecture (registers, spills)
timing          ``benchmarks/gpu_bench.py`` on the standard shapes (CUDA events), incl. nn.GRU
stream          streaming on the GPU: one conversation at K = 40, 1,024 and 10,000 concurrent
                conversations, every available streaming mode (CUDA graph included) against "ops"
plots           PNG plots of the timing table (matplotlib optional: a note when missing)
==============  ==================================================================================

Results are written as they come: ``<stage>.json`` after each stage and ``suite.json`` (the
summary) after every stage, plots last, into ``benchmarks/results/<gpu>/`` and mirrored to
``$OUT`` when set. The last lines printed are the summary table (stage, status, seconds).

    python benchmarks/gpu_suite.py [--budget 470] [--stages env,build,...] [--name DIR] [--dry-run]

Exit status: 0 when no stage failed (skipped stages do not count), 1 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "benchmarks")

# (name, nominal timeout s, seconds kept back for it while earlier stages run)
STAGES: List[Tuple[str, int, int]] = [
    ("env", 30, 5),
    ("build", 240, 60),
    ("correctness", 150, 45),
    ("tests", 75, 30),
    ("compile", 45, 15),
    ("timing", 100, 30),
    ("stream", 75, 25),
    ("plots", 30, 5),
]
STAGE_NAMES = [s[0] for s in STAGES]


def build_seconds(cores: int) -> int:
    """The build stage's timeout for a machine with ``cores`` CPUs: nvcc and the C++ compiler
    run one file per core, and a build on 2 busy cores was killed at 215 s, so few cores get
    more time (2: 360 s, 4: 240 s, 8: 180 s, 16 and more: 150 s)."""
    return max(150, min(360, 120 + 480 // max(1, cores)))


def nominal_seconds(name: str) -> int:
    """A stage's timeout before the budget is shared out (the build's by the cores found)."""
    if name == "build":
        return build_seconds(os.cpu_count() or 1)
    return next(n for s, n, _ in STAGES if s == name)
NO_GPU = "skipped: no CUDA device"
SKIPPED_RC = 3
# The test files that use a GPU besides the conformance sweep (tests/ops: the correctness stage),
# most valuable first (a timeout keeps the verbose log of what ran). CPU-only suites, and the
# nvcc compile tests that CI runs, gain nothing from the loan.
GPU_TESTS = ["tests/test_triton_ops.py", "tests/test_cuda_ops.py", "tests/test_gpu_readiness.py",
             "tests/test_streaming.py"]
CONFORMANCE_TESTS = "tests/ops"


# ---- helpers shared by the stages (run in the child process) ----------------------------------

def run_bounded(cmd: List[str], timeout: float, log=None, **kwargs) -> Tuple[int, str]:
    """Run ``cmd`` in its own process group; after ``timeout`` seconds kill the whole group
    (compilers, test workers: nothing is left to slow the next stage). Returns (exit code, or
    124 on timeout; output, or "" when written to the open file ``log``)."""
    stdout = log if log is not None else subprocess.PIPE
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
        return proc.returncode, out or ""
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = proc.communicate()
        return 124, (out or "") + f"\n[killed after {timeout:.0f} s]\n"


def _cmd(cmd: List[str], timeout: float = 30) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        return (done.stdout + done.stderr).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({type(exc).__name__})"


def _write(stage_dir: str, name: str, data: Dict) -> str:
    path = os.path.join(stage_dir, f"{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)
    return path


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def gpu_slug() -> str:
    """``nvidia-h200`` style folder name of the visible GPU, or ``no-gpu``."""
    try:
        import torch
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-gpu"
    except Exception:  # the folder name must never stop the suite
        pass
    return "no-gpu"


def _machine_free(text: str, markup: bool = False) -> str:
    """Drop this machine's absolute paths from text that is committed (logs, errors; ``markup``:
    XML, where the placeholders are escaped)."""
    def placeholder(name: str) -> str:
        return f"&lt;{name}&gt;" if markup else f"<{name}>"
    text = text.replace(ROOT, placeholder("repo"))
    for prefix, name in ((sys.prefix, "python"), (sys.base_prefix, "python-base")):
        if len(prefix) > 1:
            text = text.replace(prefix, placeholder(name))
    home = os.path.expanduser("~")
    return text.replace(home, "~") if home not in ("/", "") else text


# ---- stages ------------------------------------------------------------------------------------

def stage_env(out: str) -> Dict:
    """Versions card of the machine and the Python packages the suite relies on."""
    import importlib
    card: Dict = {"python": platform.python_version(), "platform": platform.platform(),
                  "cpus": os.cpu_count(),
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "git_commit": _cmd(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
                  "packages": {}}
    for mod in ("torch", "triton", "numpy", "pytest", "hypothesis", "expecttest", "matplotlib",
                "pyarrow", "sklearn", "pytest_benchmark", "setuptools", "ninja"):
        try:
            card["packages"][mod] = getattr(importlib.import_module(mod), "__version__", "present")
        except Exception as exc:  # a missing optional package is information, not a failure
            card["packages"][mod] = f"missing ({type(exc).__name__})"
    import torch
    card["torch_cuda"] = str(torch.version.cuda)
    card["cuda_available"] = torch.cuda.is_available()
    nvcc = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                    if os.environ.get("CUDA_HOME") else None)
    card["nvcc"] = _cmd([nvcc, "--version"]).splitlines()[-2:] if nvcc else "not found"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        card.update(gpu=p.name, gpus=torch.cuda.device_count(),
                    capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    sms=p.multi_processor_count, cudnn=str(torch.backends.cudnn.version()),
                    arch_list=torch.cuda.get_arch_list())
        card["driver"] = _cmd(["nvidia-smi", "--query-gpu=driver_version",
                               "--format=csv,noheader"]).splitlines()[:1]
    # nvcc's major version must match torch's CUDA major, or torch refuses to build.
    m = re.search(r"release (\d+)\.(\d+)", " ".join(card["nvcc"]) if isinstance(card["nvcc"], list)
                  else "")
    if m and torch.version.cuda:
        card["nvcc_matches_torch"] = m.group(1) == torch.version.cuda.split(".")[0]
    for k, v in card.items():
        print(f"{k}: {v}")
    return card


def stage_build(out: str, timeout: float) -> Dict:
    """Build the extension in place; report the backends that load afterwards."""
    env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 4), PIP_NO_INDEX="1")
    env.pop("TRITON_INTERPRET", None)
    report: Dict = {"attempts": []}
    deadline = time.perf_counter() + timeout - 5
    for label, extra in (("cuda+cpu", {}), ("cpu-only", {"AGHMN_NO_CUDA": "1"})):
        left = deadline - time.perf_counter() - 20  # 20 s kept for the probe below
        if left < 20:
            report["attempts"].append({"build": label, "ok": False, "error": "no time left"})
            break
        t0 = time.perf_counter()
        rc, log = run_bounded([sys.executable, "setup.py", "build_ext", "--inplace"], left,
                              cwd=ROOT, env=dict(env, **extra))
        with open(os.path.join(out, "logs", f"build-{label}.log"), "w") as f:
            f.write(_machine_free(log))
        report["attempts"].append({"build": label, "ok": rc == 0,
                                   "seconds": round(time.perf_counter() - t0, 1),
                                   "log_tail": _machine_free(log[-1500:]) if rc else ""})
        if rc == 0:
            break
    probe = ("import json, torch\nfrom aghmn_fast import ops\n"
             "print(json.dumps({'cpu': ops.backends('cpu'), 'cuda': ops.backends('cuda') "
             "if torch.cuda.is_available() else [], 'errors': ops.backend_errors()}))")
    rc, text = run_bounded([sys.executable, "-c", probe], deadline - time.perf_counter(),
                           cwd=ROOT, env=env)
    try:
        report["backends"] = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        report["backends"] = {"error": _machine_free(text[-1500:])}
    print(json.dumps(report, indent=1))
    report["ok"] = any(a["ok"] for a in report["attempts"]) and report["attempts"][0]["ok"]
    return report


#: The correctness stage's passes, in order: the conformance sweep's representative cases (one
#: shape per test, implementation and dtype: tests/ops/conftest.py, AGHMN_OPS_SUBSET), then every
#: other case with the time left, so that the stage reports every check on some shape even when
#: it cannot finish (each shape and dtype compiles its own Triton kernel).
CORRECTNESS_PASSES = (("first", [CONFORMANCE_TESTS]), ("rest", [CONFORMANCE_TESTS]))
#: The test stage's one pass (subset None: no AGHMN_OPS_SUBSET).
TEST_PASSES = ((None, GPU_TESTS),)


def pytest_pass_commands(xml_dir: str, stage: str, passes, select: str = ""
                         ) -> List[Tuple[Optional[str], List[str], str]]:
    """``(subset, pytest command, junit path)`` of each ``(subset, files)`` of ``passes``, for
    the tests matching the ``-k`` expression ``select`` (every test when empty)."""
    commands = []
    # the SIMT-emulated CUDA tests run on the CPU: CI has them, the loan has no time
    keyword = f"({select}) and not emulated" if select else "not emulated"
    for subset, wanted in passes:
        files = [f for f in wanted if os.path.exists(os.path.join(ROOT, f))]
        xml = os.path.join(xml_dir, f"{stage}-{subset or 'all'}-junit.xml")
        # --continue-on-collection-errors: a test module that cannot import here (a package the
        # image lacks) costs its own tests, not the whole run.
        cmd = [sys.executable, "-m", "pytest", "-v", "-rfEs", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={xml}", "-m", "not slow",
               "-k", keyword, *files]
        commands.append((subset, cmd, xml))
    return commands


def _test_env(gpu: bool, **extra: str) -> Dict:
    """The environment of a pytest pass: compiled Triton and CUDA on the GPU (``gpu``), else the
    CPU implementations (the rehearsal on a machine without one)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **extra)
    env.pop("TRITON_INTERPRET", None)
    if gpu:
        env["AGHMN_TRITON_GPU"] = "1"
    else:
        env.pop("AGHMN_TRITON_GPU", None)
    return env


def run_pytest_passes(out: str, stage: str, commands, timeout: float, env: Dict) -> Dict:
    """The passes of :func:`pytest_pass_commands` in order, each with ``AGHMN_OPS_SUBSET`` set to
    its subset (if any), until ``timeout``; counts from the JUnit XML of each pass."""
    deadline = time.perf_counter() + timeout - 10
    report: Dict = {"passes": []}
    for subset, cmd, xml in commands:
        left = deadline - time.perf_counter()
        if left < 15:
            report["passes"].append({"subset": subset or "all", "skipped": "no time left"})
            report["incomplete"] = "stopped at the stage deadline"
            break
        pass_env = dict(env, AGHMN_OPS_SUBSET=subset) if subset else env
        result = _pytest_pass(cmd, xml, left, pass_env,
                              os.path.join(out, "logs", f"{stage}-{subset or 'all'}.log"))
        report["passes"].append({"subset": subset or "all", **result})
    report["ok"] = all(p.get("ok") for p in report["passes"]) and "incomplete" not in report
    return report


def stage_tests(out: str, timeout: float) -> Dict:
    """pytest of the GPU test files beyond the conformance sweep (:data:`GPU_TESTS`)."""
    if not _cuda():
        return {"status": NO_GPU}
    return run_pytest_passes(out, "tests", pytest_pass_commands(out, "tests", TEST_PASSES),
                             timeout, _test_env(gpu=True))


def junit_cases(xml: str) -> List[Dict]:
    """The test cases of a JUnit XML file: node id, outcome (passed, failed, error, skipped),
    failure message and the properties the tests recorded (tests/ops/conftest.py records the
    implementation and dtype)."""
    import xml.etree.ElementTree as ET
    if not os.path.exists(xml):
        return []
    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome, message = ("failed" if tag == "failure" else tag), found.get("message") or ""
                break
        module = (case.get("classname") or "").replace(".", "/")
        cases.append({"test": f"{module}.py::{case.get('name')}", "outcome": outcome,
                      "message": _machine_free(message[:400]),
                      "properties": {p.get("name"): p.get("value")
                                     for p in case.iter("property")}})
    return cases


def _pytest_pass(cmd: List[str], xml: str, timeout: float, env: Dict, log_path: str) -> Dict:
    rc, log = run_bounded(cmd, timeout, cwd=ROOT, env=env)
    log = _machine_free(log)
    with open(log_path, "w") as f:
        f.write(log)
    counts: Dict = {}
    if os.path.exists(xml):
        with open(xml) as f:  # tracebacks name this machine's paths too
            text = _machine_free(f.read(), markup=True)
        with open(xml, "w") as f:
            f.write(text)
        import xml.etree.ElementTree as ET
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["failed"] = [{"test": c["test"], "message": c["message"]} for c in junit_cases(xml)
                            if c["outcome"] in ("failed", "error")]
    print(log[-4000:])
    return {"rc": rc, "ok": rc == 0, "counts": counts, "tail": log[-2000:]}


def stage_compile(out: str, timeout: float) -> Dict:
    """Offline Triton compile of a representative set of variants for this card's architecture
    (the full matrix is compiled in CI for sm_90)."""
    import torch
    arch = 90
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        arch = major * 10 + minor
    env = dict(os.environ, AGHMN_TRITON_COMPILE_ONLY="1", PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "aghmn_fast.ops.compile_check", "--arch", str(arch),
           "--subset", "representative", "--json", "--deadline", str(max(10, timeout - 15))]
    env["PYTHONWARNINGS"] = "ignore"  # stdout is the JSON list
    rc, text = run_bounded(cmd, timeout - 5, cwd=ROOT, env=env)
    start = text.find("[")
    try:
        results = json.loads(text[start:text.rindex("]") + 1])
    except ValueError:
        return {"ok": False, "arch": arch, "rc": rc, "error": _machine_free(text[-2000:])}
    failed = [r for r in results if not r.get("ok")]
    for r in results:
        print(("ok  " if r.get("ok") else "FAIL"), r["variant"], r.get("registers"),
              r.get("stack_bytes"), r.get("error", ""))
    return {"ok": not failed, "arch": arch, "compiled": len(results), "failed": len(failed),
            "results": results}


def correctness_report(out: str, timeout: float, gpu: bool = True, select: str = "",
                       pytest_args=()) -> Dict:
    """The conformance sweep (tests/ops: the CPU tests' own cases, comparisons of outputs and
    every gradient with the float64 reference, and tolerances, conformance.TOLERANCE), run by
    pytest on the GPU implementations (``gpu``; else on this machine's CPU implementations, a
    rehearsal) in :data:`CORRECTNESS_PASSES` order until ``timeout``. Each comparison's measured
    error comes back through the sweep's log (``AGHMN_CONFORMANCE_LOG``): one row per test with
    its worst comparison, a summary per implementation and dtype, and the determinism tests'
    verdicts. ``select``: a pytest ``-k`` expression (every test when empty); ``pytest_args``:
    extra arguments of every pass."""
    import tempfile
    commands = [(subset, cmd + list(pytest_args), xml) for subset, cmd, xml
                in pytest_pass_commands(out, "correctness", CORRECTNESS_PASSES, select)]
    comparisons: Dict[str, List[Dict]] = {}
    # The log of every comparison (thousands of lines) is read back and dropped: the rows keep
    # each test's worst, and the results folder is committed.
    with tempfile.TemporaryDirectory() as scratch:
        log = os.path.join(scratch, "comparisons.jsonl")
        report = run_pytest_passes(out, "correctness", commands, timeout,
                                   _test_env(gpu, AGHMN_CONFORMANCE_LOG=log))
        if os.path.exists(log):
            with open(log) as f:
                for line in f:
                    record = json.loads(line)
                    comparisons.setdefault(record["test"], []).append(record)
    rows = [correctness_row(case, comparisons.get(case["test"], []))
            for _, _, xml in commands for case in junit_cases(xml)]
    report["tolerance"] = {r["dtype"]: [r["kind"], r["tolerance"]]
                           for records in comparisons.values() for r in records}
    report["rows"] = rows
    report["summary"] = correctness_summary(rows)
    report["determinism"] = [{"test": r["test"], "implementation": r["implementation"],
                              "bitwise_equal": {"passed": True, "skipped": None}.get(r["outcome"], False)}
                             for r in rows if "deterministic" in r["test"]]
    for line in report["summary"]:
        print(f"{'ok  ' if not line['failed'] else 'FAIL'} {str(line['implementation']):18s} "
              f"{str(line['dtype']):9s} {line['tests']:4d} tests, {line['failed']} failed; worst "
              f"{line['worst_error']} (tolerance {line['tolerance']}) in {line['worst_test']}",
              flush=True)
    report["ok"] = report["ok"] and bool(rows)
    return report


def correctness_row(case: Dict, comparisons: List[Dict]) -> Dict:
    """One test of the correctness stage: its outcome, implementation, dtype (the test's, else
    its comparisons'), number of comparisons and the worst of them (error relative to its
    tolerance; an error of None, no finite value, is the worst)."""
    def ratio(c):
        return float("inf") if c["error"] is None else c["error"] / c["tolerance"]
    worst = max(comparisons, key=ratio, default=None)
    return {"test": case["test"], "outcome": case["outcome"],
            "implementation": case["properties"].get("implementation"),
            "dtype": case["properties"].get("dtype") or (worst or {}).get("dtype"),
            "comparisons": len(comparisons),
            "worst": None if worst is None else {k: worst[k] for k in ("what", "error", "tolerance")},
            **({"message": case["message"]} if case["outcome"] in ("failed", "error") else {})}


def correctness_summary(rows: List[Dict]) -> List[Dict]:
    """Per (implementation, dtype) of the tests that ran (dtype None: the tests without one, e.g.
    gradcheck, edge cases, determinism): tests, failures and the worst comparison with the
    reference (its error, tolerance and test)."""
    summary: Dict[Tuple, Dict] = {}
    for r in rows:
        if r["outcome"] == "skipped":
            continue
        line = summary.setdefault((r["implementation"], r["dtype"]), {
            "implementation": r["implementation"], "dtype": r["dtype"], "tests": 0, "failed": 0,
            "worst_error": None, "tolerance": None, "worst_test": None, "_ratio": -1.0})
        line["tests"] += 1
        line["failed"] += r["outcome"] != "passed"
        worst = r["worst"]
        if worst is None:
            continue
        ratio = float("inf") if worst["error"] is None else worst["error"] / worst["tolerance"]
        if ratio > line["_ratio"]:
            line.update(worst_error=worst["error"], tolerance=worst["tolerance"],
                        worst_test=f"{r['test']}: {worst['what']}", _ratio=ratio)
    return [{k: v for k, v in line.items() if k != "_ratio"} for line in summary.values()]


def stage_correctness(out: str, timeout: float) -> Dict:
    """The conformance sweep on the GPU implementations, each comparison's error measured."""
    if not _cuda():
        return {"status": NO_GPU}
    return correctness_report(out, timeout)


def stage_timing(out: str, timeout: float) -> Dict:
    """gpu_bench.py on the standard shapes: every backend, nn.GRU (cuDNN), Triton with TF32."""
    if not _cuda():
        return {"status": NO_GPU}
    timing_dir = os.path.join(out, "timing")
    cmd = [sys.executable, os.path.join(HERE, "gpu_bench.py"), "--no-compile", "--reps", "30",
           "--warmup", "5", "--out-dir", timing_dir, "--name", "timing"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    rc, text = run_bounded(cmd, timeout - 5, cwd=ROOT, env=env)
    print(text[-8000:])
    path = os.path.join(timing_dir, "timing.json")
    if rc != 0 or not os.path.exists(path):
        return {"ok": False, "rc": rc, "error": _machine_free(text[-2000:])}
    with open(path) as f:
        results = json.load(f)["results"]
    return {"ok": True, "table": "timing/timing.md", "targets": timing_targets(results),
            "errors": [r for r in results if "error" in r]}


def timing_targets(results: List[Dict]) -> List[Dict]:
    """The kernel targets of docs/RESULTS.md from timing rows: fused / nn.GRU speed-ups."""
    out = []
    for r in results:
        if r["backend"] in ("nn.GRU", "reference") or "median_us" not in r:
            continue
        base = next((b for b in results if b["backend"] == "nn.GRU" and b["op"] == r["op"]
                     and b["mode"] == r["mode"] and b["shape"] == r["shape"]
                     and "median_us" in b), None)
        if base is None:
            continue
        batch = int(r["shape"].split("-")[0][1:])
        need = 2.0 if batch == 1 else 1.0 if batch >= 1024 else None
        speedup = base["median_us"] / r["median_us"]
        out.append({"op": r["op"], "mode": r["mode"], "shape": r["shape"], "backend": r["backend"],
                    "speedup_vs_nn_gru": round(speedup, 2), "target": need,
                    "met": None if need is None else speedup >= need})
    return out


STREAM_MODES = ("graph", "step", "ops")


def stream_report(device, windows=(40, 10), concurrency=(1024, 10000), extra=30,
                  deadline: float = float("inf")) -> Dict:
    """Streaming latency and throughput on ``device`` for every available streaming mode, with a
    random-weight model of the paper's size and random texts (no data set needed); each mode's
    probabilities are compared with the "ops" mode (the model's own layers)."""
    import torch
    from aghmn_fast.bench.stream import build_model
    from aghmn_fast.data import MELD_LABELS, Vocabulary
    from aghmn_fast.streaming import StreamingRecognizer
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    words = [f"w{i}" for i in range(2000)]
    vocab = Vocabulary.build([words], min_count=1)
    g = torch.Generator().manual_seed(0)

    def text() -> str:
        n = int(torch.randint(4, 20, (1,), generator=g))
        return " ".join(words[int(i)] for i in torch.randint(0, len(words), (n,), generator=g))

    report: Dict = {"device": str(device), "rows": []}
    for K in windows:
        model = build_model(K, vocab, None).to(device)
        recognizers = []
        for mode in STREAM_MODES:
            try:
                recognizers.append((mode, StreamingRecognizer(
                    model, device, vocab=vocab, label_names=MELD_LABELS, mode=mode)))
            except (ValueError, RuntimeError) as exc:
                report["rows"].append({"K": K, "mode": mode, "unavailable": str(exc)[:300]})
        texts = [text() for _ in range(K + extra)]
        probs = {}
        for mode, rec in recognizers:
            if time.perf_counter() > deadline:
                report["incomplete"] = "stopped at the stage deadline"
                break
            try:
                row = _stream_mode(rec, mode, K, texts, probs, sync,
                                   concurrency if K == windows[0] else (), deadline)
            except Exception as exc:  # one mode's failure (e.g. a capture) spares the others
                row = {"K": K, "mode": mode, "error": f"{type(exc).__name__}: {exc}"[:400]}
                report["failed"] = True
            report["rows"].append(row)
            print(row, flush=True)
        for mode, p in probs.items():
            if "ops" in probs:
                err = (p - probs["ops"]).abs().max().item()
                report["rows"].append({"K": K, "mode": mode, "max_prob_diff_vs_ops": err})
                print(f"K={K} {mode} vs ops: {err:.2e}", flush=True)
    diffs = [r["max_prob_diff_vs_ops"] for r in report["rows"] if "max_prob_diff_vs_ops" in r]
    report["ok"] = (bool(diffs) and max(diffs) <= 1e-4 and "incomplete" not in report
                    and "failed" not in report)
    return report


def _stream_mode(rec, mode: str, K: int, texts, probs: Dict, sync, concurrency,
                 deadline: float) -> Dict:
    """Latency of one conversation pushed through ``rec`` (its probabilities kept in
    ``probs[mode]``), then the rate of ``concurrency`` concurrent conversations."""
    import torch
    from aghmn_fast.data import MELD_LABELS
    lat, got = [], []
    for t in texts:
        sync()
        t0 = time.perf_counter()
        p = rec.push("c", t)
        lat.append((time.perf_counter() - t0) * 1e6)
        got.append([p.probabilities[n] for n in MELD_LABELS])
    probs[mode] = torch.tensor(got, dtype=torch.float64)
    steady = sorted(lat[K:])
    row = {"K": K, "mode": mode, "conversations": 1,
           "median_us": round(steady[len(steady) // 2], 1),
           "p99_us": round(steady[min(len(steady) - 1, int(0.99 * len(steady)))], 1)}
    for n in concurrency:
        if time.perf_counter() > deadline:
            break
        items = [(f"c{j}", texts[j % len(texts)]) for j in range(n)]
        for _ in range(2):  # warm-up rounds (and every conversation has a past)
            rec.push_many(items)
        sync()
        t0 = time.perf_counter()
        rec.push_many(items)
        sync()
        row[f"utt_per_s_{n}"] = round(n / (time.perf_counter() - t0))
    return row


def stage_stream(out: str, timeout: float) -> Dict:
    """Streaming on the GPU: one conversation at K = 40 and 10, 1,024 / 10,000 concurrent."""
    if not _cuda():
        return {"status": NO_GPU}
    return stream_report("cuda", deadline=time.perf_counter() + timeout - 10)


def stage_plots(out: str, timeout: float) -> Dict:
    """Bar plots of the timing table (one per op and mode); matplotlib is optional."""
    path = os.path.join(out, "timing", "timing.json")
    if not os.path.exists(path):
        return {"status": "skipped: no timing table (no CUDA device or the timing stage failed)"}
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return {"status": f"skipped: matplotlib unavailable ({type(exc).__name__})"}
    with open(path) as f:
        results = [r for r in json.load(f)["results"] if "median_us" in r]
    files = []
    for op in dict.fromkeys(r["op"] for r in results):
        for mode in dict.fromkeys(r["mode"] for r in results if r["op"] == op):
            rows = [r for r in results if r["op"] == op and r["mode"] == mode]
            shapes = list(dict.fromkeys(r["shape"] for r in rows))
            backends = list(dict.fromkeys(r["backend"] for r in rows))
            fig, ax = plt.subplots(figsize=(1.6 * len(shapes) + 3, 4))
            width = 0.8 / max(1, len(backends))
            for i, b in enumerate(backends):
                xs = [s + i * width for s, shape in enumerate(shapes)
                      for r in rows if r["shape"] == shape and r["backend"] == b]
                ys = [r["median_us"] for shape in shapes for r in rows
                      if r["shape"] == shape and r["backend"] == b]
                ax.bar(xs, ys, width, label=b)
            ax.set_xticks([s + 0.4 - width / 2 for s in range(len(shapes))], shapes, rotation=20)
            ax.set_yscale("log")
            ax.set_ylabel("median us (log)")
            ax.set_title(f"{op}, {mode}")
            ax.legend(fontsize=7)
            fig.tight_layout()
            name = f"{op}-{mode.replace('+', '-')}.png"
            fig.savefig(os.path.join(out, name), dpi=90)
            plt.close(fig)
            files.append(name)
    return {"ok": True, "files": files}


STAGE_FUNCS: Dict[str, Callable] = {
    "env": lambda out, timeout: stage_env(out), "build": stage_build, "tests": stage_tests,
    "compile": stage_compile, "correctness": stage_correctness, "timing": stage_timing,
    "stream": stage_stream, "plots": stage_plots}


def run_stage(name: str, out: str, timeout: float) -> int:
    """Child process entry: run one stage, write ``<out>/<name>.json``; exit code 0 ok, 1 failed,
    3 skipped."""
    started = time.perf_counter()
    try:
        data = STAGE_FUNCS[name](out, timeout)
    except Exception as exc:  # the stage's own crash is its result
        import traceback
        data = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                "traceback": _machine_free(traceback.format_exc()[-3000:])}
        print(data["traceback"], file=sys.stderr)
    data.setdefault("status", "ok" if data.get("ok", True) else "failed")
    data["seconds"] = round(time.perf_counter() - started, 1)
    _write(out, name, data)
    return SKIPPED_RC if data["status"].startswith("skipped") else 0 if data["status"] == "ok" else 1


# ---- the driver (parent process) --------------------------------------------------------------

def _mirror(out: str, mirror: Optional[str]) -> None:
    if mirror and os.path.abspath(mirror) != os.path.abspath(out):
        shutil.copytree(out, mirror, dirs_exist_ok=True)


def _summary_line(name: str, status: str, seconds: float) -> str:
    return f"{name:12s} {status[:52]:52s} {seconds:7.1f}"


def stage_timeout(name: str, later, left: float) -> float:
    """A stage's timeout with ``left`` seconds of the budget left: its nominal time, less what the
    stages still to run after it (``later``, rows of :data:`STAGES`) keep back."""
    return min(nominal_seconds(name), left - sum(r for _, _, r in later))


def plan(stages: List[str], budget: float) -> List[Dict]:
    """The worst case of :func:`drive`: each stage's timeout when every earlier one runs to its
    own (a stage under 5 s is skipped)."""
    chosen = [s for s in STAGES if s[0] in stages]
    left, rows = budget, []
    for i, (name, _, _) in enumerate(chosen):
        timeout = stage_timeout(name, chosen[i + 1:], left)
        runs = timeout >= 5
        rows.append({"stage": name, "timeout_s": round(max(timeout, 0.0)), "runs": runs})
        left -= timeout if runs else 0
    return rows


def print_plan(stages: List[str], budget: float) -> None:
    """``--dry-run``: the plan for this machine's cores and the pytest passes, nothing run."""
    print(f"budget {budget:.0f} s, {os.cpu_count()} cores; worst-case timeouts:")
    for row in plan(stages, budget):
        print(f"  {row['stage']:12s} {row['timeout_s']:5d} s" + ("" if row["runs"] else "  (skipped)"))
    for stage, passes in (("correctness", CORRECTNESS_PASSES), ("tests", TEST_PASSES)):
        if stage in stages:
            for subset, cmd, _ in pytest_pass_commands("<out>", stage, passes):
                print(f"{stage} pass {subset or 'all'}: AGHMN_TRITON_GPU=1"
                      + (f" AGHMN_OPS_SUBSET={subset}" if subset else "") + " "
                      + shlex.join(["python", *cmd[1:]]))


def drive(stages: List[str], budget: float, out: str, mirror: Optional[str]) -> int:
    """Run ``stages`` one after another as child processes within ``budget`` seconds."""
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    t0 = time.perf_counter()
    summary: Dict = {"format": "aghmn_fast.gpu_suite.v1", "budget_s": budget,
                     "started": datetime.datetime.now(datetime.timezone.utc)
                     .isoformat(timespec="seconds"), "stages": []}
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    chosen = [s for s in STAGES if s[0] in stages]
    for i, (name, _, _) in enumerate(chosen):
        timeout = stage_timeout(name, chosen[i + 1:], budget - (time.perf_counter() - t0))
        print(f"== {name} (timeout {timeout:.0f} s)", flush=True)
        s0 = time.perf_counter()
        if timeout < 5:
            status = "skipped: out of time budget"
        else:
            log_path = os.path.join(out, "logs", f"{name}.log")
            with open(log_path, "w") as log:
                rc, _ = run_bounded([sys.executable, os.path.abspath(__file__), "--stage", name,
                                     "--dir", out, "--timeout", str(timeout)], timeout, log=log,
                                    cwd=ROOT, env=env)
            with open(log_path) as f:
                tail = f.read()[-2500:]
            print(tail, flush=True)
            try:
                with open(os.path.join(out, f"{name}.json")) as f:
                    status = json.load(f).get("status", "ok")
            except (OSError, ValueError):
                status = f"failed (rc {rc}, no report)"
            if rc == 124:
                status = f"timeout after {timeout:.0f} s"
                _write(out, name, {"status": status})
        seconds = time.perf_counter() - s0
        summary["stages"].append({"stage": name, "status": status, "seconds": round(seconds, 1)})
        summary["elapsed_s"] = round(time.perf_counter() - t0, 1)
        _write(out, "suite", summary)
        _mirror(out, mirror)
    print("\n== summary (details: suite.json and <stage>.json)")
    print(f"{'stage':12s} {'status':52s} {'seconds':>7s}")
    for s in summary["stages"]:
        print(_summary_line(s["stage"], s["status"], s["seconds"]))
    print(_summary_line("total", "", summary["elapsed_s"]))
    bad = [s for s in summary["stages"] if not (s["status"] == "ok"
                                                 or s["status"].startswith("skipped"))]
    return 1 if bad else 0


def main(argv: Optional[List[str]] = None) -> int:
    """Command line: the driver, or (``--stage``) one stage in a child process."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=470, help="seconds for the whole call")
    p.add_argument("--stages", default=",".join(STAGE_NAMES),
                   help="comma-separated subset of " + ",".join(STAGE_NAMES))
    p.add_argument("--name", default=None,
                   help="results folder under benchmarks/results/ (default: the GPU's name)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the stages' worst-case timeouts and the pytest passes; run nothing")
    p.add_argument("--stage", choices=STAGE_NAMES, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=60, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage:
        return run_stage(args.stage, args.dir, args.timeout)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGE_NAMES]
    if unknown:
        p.error(f"unknown stage(s) {unknown}; choose from {','.join(STAGE_NAMES)}")
    if args.dry_run:
        print_plan(stages, args.budget)
        return 0
    out = os.path.join(HERE, "results", args.name or gpu_slug())
    return drive(stages, args.budget, out, os.environ.get("OUT"))


if __name__ == "__main__":
    sys.exit(main())
