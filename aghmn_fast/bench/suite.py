"""One benchmark run: ops, model and streaming parts, then the JSON record (first), the report
and the plots (last; optional). The ``aghmn-fast bench`` command is a thin layer over
:func:`run_suite`. Nothing here writes a file that git tracks (the README's section is
refreshed by ``benchmarks/refresh_readme.py``)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from . import report
from .kernels import OPS, OpSuiteConfig, run_ops
from .machine import machine_info, machine_slug
from .shapes import BATCH_SWEEP, QUICK_SHAPES, SHAPES, WINDOW_SWEEP, Shape, all_shapes
from .timing import FULL_BUDGET, QUICK_BUDGET, Budget

__all__ = ["PARTS", "MELD_SPLIT_OF_PART", "missing_data", "DEFAULT_COMPILE_SHAPES", "SuiteOptions",
           "run_suite", "TrackedFileError", "tracked_files"]

PARTS = OPS + ("model", "stream")
# The MELD split each data-driven part reads.
MELD_SPLIT_OF_PART = {"model": "train", "stream": "test"}
# The compiled baseline by default only at the K = 10 standard shapes (streaming and MELD
# training): inductor unrolls the step loop, and a K = 40 forward+backward takes minutes to
# compile on a small CPU. ``compile_shapes=["all"]`` compiles every shape of the run.
DEFAULT_COMPILE_SHAPES = [s for s in SHAPES if s.T == 10]
QUICK_MODEL_DIALOGUES = 24


@dataclasses.dataclass
class SuiteOptions:
    """Options of :func:`run_suite` (the CLI flags). ``None`` means "the default for quick/full":

    shapes: quick: :data:`QUICK_SHAPES`; full: the standard shapes plus the batch and window
    sweeps. compile: the torch.compile baseline, default off in quick runs (compiling takes
    minutes per shape on a small CPU). compile_shapes: shape ids compiled, or ["all"] (default:
    :data:`DEFAULT_COMPILE_SHAPES`; quick with compile: every shape). model_dialogues: quick
    24, full all. plots: PNG plots (skipped with a note when matplotlib is missing).
    """
    device: str = "cpu"
    parts: Sequence[str] = PARTS
    quick: bool = False
    threads: Sequence[int] = (1, 2)
    out_dir: str = os.path.join("benchmarks", "results")
    shapes: Optional[Sequence[Shape]] = None
    compile: Optional[bool] = None
    compile_shapes: Optional[Sequence[str]] = None
    budget: Optional[Budget] = None
    tolerance: Optional[float] = None
    backends: Optional[Sequence[str]] = None
    data: Optional[str] = None
    model_dialogues: Optional[int] = None
    model_epochs: int = 1
    stream_concurrency: Optional[int] = None
    plots: bool = True
    name: Optional[str] = None
    command: str = "aghmn-fast bench"
    notes: Sequence[str] = ()

    def __post_init__(self):
        bad = [p for p in self.parts if p not in PARTS]
        if bad:
            raise ValueError(f"unknown benchmark part(s) {bad}; choose from {', '.join(PARTS)}")
        if not self.threads or any(int(n) < 1 for n in self.threads):
            raise ValueError(f"threads must be positive integers, got {list(self.threads)}")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible to torch")


def missing_data(opts: SuiteOptions) -> Dict[str, str]:
    """Part -> why it cannot run, for the selected parts whose MELD split is not there (checked
    without reading the files, before anything runs)."""
    from ..data.datasets import meld_split_path
    missing = {}
    for part in opts.parts:
        if part in MELD_SPLIT_OF_PART:
            try:
                meld_split_path(opts.data, MELD_SPLIT_OF_PART[part])
            except (FileNotFoundError, NotADirectoryError) as exc:
                missing[part] = str(exc)
    return missing


class TrackedFileError(ValueError):
    """The run would overwrite a file that git tracks (committed results)."""


def tracked_files(paths: Sequence[str]) -> List[str]:
    """Those of ``paths`` that git tracks (none when git or a repository is missing)."""
    found = []
    for path in paths:
        folder = os.path.dirname(os.path.abspath(path))
        while not os.path.isdir(folder):
            folder = os.path.dirname(folder)
        try:
            done = subprocess.run(["git", "ls-files", "--error-unmatch", os.path.abspath(path)],
                                  cwd=folder, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return []
        if done.returncode == 0:
            found.append(path)
    return found


def _outputs(opts: SuiteOptions, out_dir: str) -> List[str]:
    stem = "bench-quick" if opts.quick else "bench"
    prefix = "quick-" if opts.quick else ""
    return ([os.path.join(out_dir, stem + ext) for ext in (".json", ".md")]
            + [os.path.join(out_dir, f"{prefix}{op}.png") for op in OPS])


def _resolved(opts: SuiteOptions) -> Dict:
    shapes = opts.shapes or (QUICK_SHAPES if opts.quick else
                             all_shapes(SHAPES, BATCH_SWEEP, WINDOW_SWEEP))
    compile_on = (not opts.quick) if opts.compile is None else opts.compile
    if opts.compile_shapes is None:
        compile_shapes = [s.id for s in (shapes if opts.quick else DEFAULT_COMPILE_SHAPES)]
    elif list(opts.compile_shapes) == ["all"]:
        compile_shapes = [s.id for s in shapes]
    else:
        compile_shapes = list(opts.compile_shapes)
    return {"shapes": list(shapes), "compile": compile_on, "compile_shapes": list(compile_shapes),
            "budget": opts.budget or (QUICK_BUDGET if opts.quick else FULL_BUDGET),
            "model_dialogues": (opts.model_dialogues if opts.model_dialogues is not None
                                else (QUICK_MODEL_DIALOGUES if opts.quick else None))}


def run_suite(opts: SuiteOptions, log: Callable[[str], None] = print) -> Dict:
    """Run the selected parts and write ``<out_dir>/<machine>/bench[-quick].{json,md}`` and the
    plots. Returns the record, with the written paths under ``"files"``. Raises
    :class:`TrackedFileError` before running anything when one of the files is tracked by git,
    ``FileNotFoundError`` when a selected part's MELD data is missing (:func:`missing_data`). A run
    that fails leaves no empty folder behind."""
    started = time.perf_counter()
    res = _resolved(opts)
    machine = machine_info(opts.device)
    slug = machine_slug(machine, opts.name)
    out_dir = os.path.join(opts.out_dir, slug)
    tracked = tracked_files(_outputs(opts, out_dir))
    if tracked:
        raise TrackedFileError(f"refusing to overwrite files tracked by git: {', '.join(tracked)}; "
                               "choose another --out-dir (or --name)")
    missing = missing_data(opts)
    if missing:
        raise FileNotFoundError(next(iter(missing.values())) + " (needed by the "
                                + ", ".join(missing) + " part(s))")
    created = _missing_folders(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        return _run_parts(opts, res, machine, slug, out_dir, started, log)
    except BaseException:
        for folder in created:  # deepest first; a folder holding anything stays
            try:
                os.rmdir(folder)
            except OSError:
                break
        raise


def _missing_folders(path: str) -> List[str]:
    """The folders ``os.makedirs(path)`` would create, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _run_parts(opts: SuiteOptions, res: Dict, machine: Dict, slug: str, out_dir: str,
               started: float, log: Callable[[str], None]) -> Dict:
    if torch.device(opts.device).type == "cuda":
        # fp32 everywhere: baselines and fused kernels compared at full precision.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    record: Dict = {
        "format": "aghmn_fast.bench.v1", "slug": slug, "command": opts.command, "machine": machine,
        "config": {"device": opts.device, "parts": list(opts.parts), "quick": opts.quick,
                   "threads": list(opts.threads), "shapes": [s.id for s in res["shapes"]],
                   "compile": res["compile"], "compile_shapes": res["compile_shapes"],
                   "budget": dataclasses.asdict(res["budget"]), "dtype": "float32"},
        "notes": list(opts.notes), "ops": [], "model": None, "stream": []}
    if machine.get("load_average_at_start") and machine["load_average_at_start"][0] > 1.5:
        record["notes"].append(f"The machine was busy at the start (1-minute load average "
                               f"{machine['load_average_at_start'][0]:.1f} on {machine['cores']} "
                               "cores): other processes share the cores; times, two-thread ones "
                               "most, may be inflated.")
    if not res["compile"] and any(p in OPS for p in opts.parts):
        record["notes"].append("No torch.compile baseline in this run"
                               + (" (quick run)." if opts.quick and opts.compile is None else "."))
    ops_parts = [p for p in opts.parts if p in OPS]
    if ops_parts:
        cfg = OpSuiteConfig(shapes=res["shapes"], device=opts.device, ops=ops_parts,
                            threads=list(opts.threads), backends=opts.backends,
                            compile=res["compile"], compile_shapes=res["compile_shapes"],
                            budget=res["budget"], tolerance=opts.tolerance)
        record["ops"] = run_ops(cfg, log)
    if "model" in opts.parts:
        from .model import run_model
        record["model"] = run_model(opts.data, res["model_dialogues"], opts.model_epochs,
                                    opts.threads, opts.device, log)
    if "stream" in opts.parts:
        from .stream import run as run_stream
        record["stream"] = [run_stream(quick=opts.quick, data=opts.data, log=log, threads=n,
                                       device=opts.device, concurrency=opts.stream_concurrency)
                            for n in opts.threads]
    return _write(record, opts, out_dir, started)


def _write(record: Dict, opts: SuiteOptions, out_dir: str, started: float) -> Dict:
    # The record is written before any plot: a plotting failure never loses the timings.
    stem = "bench-quick" if opts.quick else "bench"
    try:
        record["machine"]["load_average_at_end"] = list(os.getloadavg())
    except OSError:
        pass
    loads = sorted(r["load1"] for r in record["ops"] if r.get("load1") is not None)
    if loads:
        record["notes"].append(
            f"1-minute load average after each op case: median {loads[len(loads) // 2]:.2f}, "
            f"max {loads[-1]:.2f} on {record['machine']['cores']} cores (this benchmark itself "
            "adds up to its thread count); per-case values are in the JSON (`load1`).")
    record["plots"] = []
    record["elapsed_s"] = time.perf_counter() - started
    files = _write_record(record, out_dir, stem)
    notes = len(record["notes"])
    plots = _plots(record, opts, out_dir)
    if plots or len(record["notes"]) != notes:
        record["plots"] = plots
        _write_record(record, out_dir, stem)  # the same record, now listing its plots
    files += [os.path.join(out_dir, p) for p in plots]
    record["files"] = files
    return record


def _write_record(record: Dict, out_dir: str, stem: str) -> List[str]:
    json_path = report.write_json(os.path.join(out_dir, stem + ".json"), record)
    md = os.path.join(out_dir, stem + ".md")
    with open(md, "w") as f:
        f.write(report.markdown(record) + "\n")
    return [json_path, md]


def _plots(record: Dict, opts: SuiteOptions, out_dir: str) -> List[str]:
    """The PNG plots (file names); a note in the record instead when they cannot be drawn."""
    if not opts.plots or not record["ops"]:
        return []
    try:
        import matplotlib  # noqa: F401
    except Exception as exc:  # optional: the JSON and the report hold every number
        record["notes"].append(f"No plots: matplotlib is not available ({type(exc).__name__}).")
        return []
    plots = []
    for op in dict.fromkeys(r["op"] for r in record["ops"]):
        try:
            # A quick run never overwrites the full run's files.
            name = report.plot_ops(record["ops"], out_dir, op,
                                   prefix="quick-" if opts.quick else "")
        except Exception as exc:  # a broken plotting stack must not fail the run
            record["notes"].append(f"No {op} plot: {type(exc).__name__}: {exc}")
            continue
        if name:
            plots.append(name)
    return plots
