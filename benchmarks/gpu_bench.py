#!/usr/bin/env python
"""GPU benchmark of the two hot ops: every fused backend against the baselines.

Compared, on the same inputs and shapes (``aghmn_fast/bench/shapes.py``), forward (under no_grad) and
forward+backward (gradients of a sum into every input):

- every backend in ``aghmn_fast.ops.backends(device)`` ("cuda", "triton", ..., "reference" =
  the eager step loop), plus "triton+tf32" (the Triton kernels with TF32 allowed);
- "reference-compiled": the reference under ``torch.compile(fullgraph=True)`` (compile time is
  reported separately as the first call, not timed);
- "nn.GRU": cuDNN's GRU at the same shape (agru: a unidirectional GRU of the same (B, T, H), 3
  gates to AGRU's 2; memory_bank: a bidirectional GRU over the windows already stacked to
  [Q, K, H], the gather not timed), the vendor yardstick.

Times are medians of per-call CUDA-event intervals after a warm-up (on a CPU ``--device cpu``
dry run: wall-clock medians). Results go to ``<out-dir>/<card>.md`` and ``.json`` with the card,
driver and torch/triton/CUDA versions. ``--sweep`` also times every candidate Triton launch
configuration, to tune ``aghmn_fast.ops.triton_common.choose_config``.

    python benchmarks/gpu_bench.py [--out-dir benchmarks/results/gpu] [--no-compile] [--sweep]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

from aghmn_fast.bench.shapes import SHAPES

HERE = os.path.dirname(os.path.abspath(__file__))

OPS = ("agru", "memory_bank")
MODES = ("forward", "forward+backward")
EXTRA_BACKENDS = ("reference-compiled", "nn.GRU", "triton+tf32")


# ---- arguments -------------------------------------------------------------------------------

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line (see ``--help``); unknown shapes or ops are errors."""
    parser = argparse.ArgumentParser(description="GPU benchmark of agru and memory_bank.")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results", "gpu"),
                        help="where <card>.md and <card>.json go (default: %(default)s)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: a dry run of the script itself (wall-clock timing)")
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--shapes", nargs="+", default=[s.id for s in SHAPES],
                        help="shape ids, e.g. B1-T40-H100 (default: all of shapes.SHAPES)")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: every backend for the device plus "
                             + ", ".join(EXTRA_BACKENDS))
    parser.add_argument("--no-compile", action="store_true",
                        help="skip reference-compiled (torch.compile takes minutes)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--sweep", action="store_true",
                        help="also time every candidate Triton launch configuration")
    parser.add_argument("--name", default=None, help="file name stem (default: the card name)")
    args = parser.parse_args(argv)
    known = {s.id for s in SHAPES}
    unknown = [s for s in args.shapes if s not in known]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; known: {sorted(known)}")
    if args.warmup < 0 or args.reps < 1:
        parser.error("--warmup must be >= 0 and --reps >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: use --device cpu for a dry run")
    return args


# ---- environment -----------------------------------------------------------------------------

def _run(cmd: List[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(device: str) -> Dict[str, str]:
    """Card, driver and library versions of this run."""
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": str(torch.version.cuda), "platform": platform.platform(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "git_commit": _run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"]) or "unknown"}
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception as exc:  # the table still records why there is no Triton column
        env["triton"] = f"unavailable ({type(exc).__name__})"
    if device == "cuda":
        env["card"] = torch.cuda.get_device_name()
        smi = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env["driver"] = smi.splitlines()[0] if smi else "unknown"
        env["cudnn"] = str(torch.backends.cudnn.version())
        cc = torch.cuda.get_device_capability()
        env["compute_capability"] = f"{cc[0]}.{cc[1]}"
    else:
        env["card"] = f"cpu-{platform.machine()}"
        env["driver"] = "n/a"
    return env


def card_slug(card: str) -> str:
    """A file-name-safe form of a card name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    return slug or "unknown-card"


# ---- cases -----------------------------------------------------------------------------------

def _shape(shape_id: str):
    return next(s for s in SHAPES if s.id == shape_id)


@contextlib.contextmanager
def _tf32(enabled: bool):
    from aghmn_fast.ops import triton_common as tb
    before = tb.allow_tf32()
    tb.set_allow_tf32(enabled)
    try:
        yield
    finally:
        tb.set_allow_tf32(before)


def make_case(op: str, backend: str, shape_id: str, mode: str, device: str,
              dtype: torch.dtype) -> Callable[[], None]:
    """A no-argument callable running one timed call (forward, or forward and backward): the
    step of ``aghmn-fast bench`` (:func:`aghmn_fast.bench.kernels.timed_step`) in ``dtype``, with
    TF32 allowed around it for the "triton+tf32" column."""
    from aghmn_fast.bench import kernels
    compiled = kernels.compile_reference(op) if backend == kernels.COMPILED else None
    name = "triton" if backend == "triton+tf32" else backend
    step = kernels.timed_step(op, name, _shape(shape_id), device, mode != "forward", compiled,
                              dtype=dtype)
    if backend != "triton+tf32":
        return step

    def tf32_step():
        with _tf32(True):
            step()
    return tf32_step


def time_call(step: Callable[[], None], device: str, warmup: int, reps: int) -> Dict[str, float]:
    """Median, quartiles and 10th/90th percentiles in microseconds of ``reps`` calls after
    ``warmup`` (timed by :mod:`aghmn_fast.bench.timing`: CUDA events on a GPU); ``first_call_s``:
    the first call (compilation included) in seconds."""
    from aghmn_fast.bench import timing
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    budget = timing.Budget(warmup=warmup, min_reps=reps, max_reps=reps, min_seconds=0.0)
    return {**timing.summarize(timing.sample(step, budget, device)), "first_call_s": first}


# ---- runs ------------------------------------------------------------------------------------

def default_backends(device: str, compile_reference: bool) -> List[str]:
    """Every registered backend for ``device`` plus the extra columns that apply."""
    from aghmn_fast import ops
    names = list(ops.backends(device))
    if device == "cpu":
        names = [n for n in names if n != "triton"]  # interpreted: not a benchmark
    extra = [b for b in EXTRA_BACKENDS if b != "triton+tf32" or "triton" in names]
    if not compile_reference:
        extra = [b for b in extra if b != "reference-compiled"]
    return names + [b for b in extra if b not in names]


def run_cases(args: argparse.Namespace, backends: List[str]) -> List[Dict]:
    """Time every (op, mode, shape, backend); a failing case is recorded, not fatal."""
    dtype = getattr(torch, args.dtype)
    results = []
    for op in args.ops:
        for mode in args.modes:
            for shape_id in args.shapes:
                for backend in backends:
                    row = {"op": op, "mode": mode, "shape": shape_id, "backend": backend,
                           "dtype": args.dtype}
                    try:
                        step = make_case(op, backend, shape_id, mode, args.device, dtype)
                        row.update(time_call(step, args.device, args.warmup, args.reps))
                    except Exception as exc:  # e.g. a backend refusing a size or dtype
                        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                    results.append(row)
                    print(_progress(row), flush=True)
    return results


def _progress(row: Dict) -> str:
    what = (f"{row['median_us']:10.1f} us" if "median_us" in row
            else "     error  " + row["error"][:120])
    return f"{row['op']:12s} {row['mode']:17s} {row['shape']:16s} {row['backend']:20s} {what}"


def sweep_configs(H: int):
    """Candidate Triton launch configurations for hidden size ``H``."""
    from aghmn_fast.ops.triton_common import KernelConfig
    from aghmn_fast.ops.triton_common import padded_hidden
    small = padded_hidden(H) <= 128
    configs = []
    for bb in (1, 2, 4, 8, 16):
        for warps in (4, 8, 16):
            if small:
                configs.append(KernelConfig(block_b=bb, resident=True, num_warps=warps))
            for bk in (8, 16):
                configs.append(KernelConfig(block_b=bb, resident=False, block_k=bk,
                                            num_warps=warps))
    for bb in (16, 32):
        for warps in (4, 8, 16):
            configs.append(KernelConfig(block_b=bb, resident=True, num_warps=warps, dot=True))
            configs.append(KernelConfig(block_b=bb, resident=False, block_k=32,
                                        num_warps=warps, dot=True))
    return configs


def run_sweep(args: argparse.Namespace) -> List[Dict]:
    """Time the Triton backend under every candidate configuration (TF32 off and on)."""
    from aghmn_fast.ops.triton_common import use_config
    dtype = getattr(torch, args.dtype)
    results = []
    for op in args.ops:
        for mode in args.modes:
            for shape_id in args.shapes:
                for cfg in sweep_configs(_shape(shape_id).H):
                    for backend in ("triton", "triton+tf32"):
                        if backend == "triton+tf32" and not cfg.dot:
                            continue
                        row = {"op": op, "mode": mode, "shape": shape_id, "backend": backend,
                               "config": repr(cfg), "dtype": args.dtype}
                        try:
                            with use_config(cfg):
                                step = make_case(op, backend, shape_id, mode, args.device, dtype)
                                row.update(time_call(step, args.device, args.warmup, args.reps))
                        except Exception as exc:
                            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                        results.append(row)
                        print(_progress(row) + "  " + row["config"], flush=True)
    return results


# ---- output ----------------------------------------------------------------------------------

def markdown(env: Dict[str, str], results: List[Dict], sweep: List[Dict],
             command: str = "") -> str:
    """The results as markdown: one table per (op, mode), median microseconds per backend."""
    lines = [f"# GPU benchmark: {env.get('card', '?')}", ""]
    for key in ("card", "compute_capability", "driver", "cuda", "cudnn", "torch", "triton",
                "python", "platform", "git_commit", "date"):
        if key in env:
            lines.append(f"- {key}: {env[key]}")
    if command:
        lines.append(f"- command: `{command}`")
    lines += ["", "Median of per-call times in microseconds (lower is better; fastest in bold; "
              "`ref / best`: eager reference over the fastest). The JSON also holds the 10th/90th "
              "percentiles and each case's first call in seconds (compilation included).", ""]
    notes: List[str] = []
    for op in dict.fromkeys(r["op"] for r in results):
        for mode in dict.fromkeys(r["mode"] for r in results if r["op"] == op):
            rows = [r for r in results if r["op"] == op and r["mode"] == mode]
            backends = list(dict.fromkeys(r["backend"] for r in rows))
            lines += [f"## {op}, {mode}", "",
                      "| shape | " + " | ".join(backends) + " | ref / best |",
                      "|---|" + "---:|" * (len(backends) + 1)]
            for shape in dict.fromkeys(r["shape"] for r in rows):
                cells = {r["backend"]: r for r in rows if r["shape"] == shape}
                timed = {b: r["median_us"] for b, r in cells.items() if "median_us" in r}
                best = min(timed, key=timed.get) if timed else None
                out = []
                for b in backends:
                    r = cells.get(b)
                    if r is None:
                        out.append("")
                    elif "median_us" in r:
                        text = f"{r['median_us']:.1f}"
                        out.append(f"**{text}**" if b == best else text)
                    else:
                        notes.append(f"{op} {mode} {shape} {b}: {r['error']}")
                        out.append(f"error [{len(notes)}]")
                ratio = (f"{timed['reference'] / timed[best]:.1f}x"
                         if best and "reference" in timed else "")
                lines.append(f"| {shape} | " + " | ".join(out) + f" | {ratio} |")
            lines.append("")
    if notes:
        lines += ["Errors:", ""] + [f"{i}. {n}" for i, n in enumerate(notes, 1)] + [""]
    if sweep:
        lines += ["## Triton launch-configuration sweep (best three per case)", "",
                  "| op | mode | shape | backend | median us | config |",
                  "|---|---|---|---|---:|---|"]
        groups: Dict[tuple, List[Dict]] = {}
        for r in sweep:
            if "median_us" in r:
                groups.setdefault((r["op"], r["mode"], r["shape"], r["backend"]), []).append(r)
        for (op, mode, shape, backend), rs in groups.items():
            for r in sorted(rs, key=lambda r: r["median_us"])[:3]:
                lines.append(f"| {op} | {mode} | {shape} | {backend} | {r['median_us']:.1f} | "
                             f"`{r['config']}` |")
        lines.append("")
    return "\n".join(lines)


def write_results(out_dir: str, env: Dict[str, str], results: List[Dict], sweep: List[Dict],
                  name: Optional[str] = None, command: str = "") -> List[str]:
    """Write ``<out_dir>/<name or card>.md`` and ``.json``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, card_slug(name or env.get("card", "")))
    md_path, json_path = stem + ".md", stem + ".json"
    with open(md_path, "w") as f:
        f.write(markdown(env, results, sweep, command))
    with open(json_path, "w") as f:
        json.dump({"environment": env, "command": command, "results": results,
                   "sweep": sweep}, f, indent=1)
    return [md_path, json_path]


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark and write the tables; exit status 0 even when single cases fail."""
    args = parse_args(argv)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 baselines in full precision
        torch.backends.cudnn.allow_tf32 = False
    backends = args.backends or default_backends(args.device, not args.no_compile)
    env = environment(args.device)
    print(f"{env['card']}: backends {', '.join(backends)}", flush=True)
    results = run_cases(args, backends)
    sweep = run_sweep(args) if args.sweep else []
    command = " ".join(["benchmarks/gpu_bench.py"] + (argv if argv is not None else sys.argv[1:]))
    for path in write_results(args.out_dir, env, results, sweep, args.name, command):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
