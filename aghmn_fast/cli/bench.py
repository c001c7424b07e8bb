"""``aghmn-fast bench``: the benchmark suite as one command.

    aghmn-fast bench [--device cpu|cuda] [--ops agru,memory_bank,model,stream] [--quick]
                     [--threads 1,2] [--out-dir DIR] [--no-compile] [--no-plots] ...

Writes ``DIR/<machine>/bench.json`` (the record, first), ``bench.md`` (the report) and
``agru.png`` / ``memory_bank.png`` (latency plots, last; skipped with a note when matplotlib is
missing). DIR defaults to a new folder ``aghmn-bench-<date>-<time>`` under the current
directory; a file tracked by git is never overwritten. ``--quick`` writes ``bench-quick.*``.
The README's "Performance" section is refreshed from a ``bench.json`` by the developer script
``benchmarks/refresh_readme.py``, never by this command.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
from typing import Dict, List

from .options import DATA_HELP, plain_text

__all__ = ["add_parser", "cmd_bench", "options_from_args", "default_out_dir", "COMMANDS"]


def _csv(text: str) -> List[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _threads(text: str) -> List[int]:
    try:
        values = [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes integers like 1,2, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("--threads values must be >= 1")
    return values


def add_parser(sub) -> None:
    """Add the ``bench`` subcommand to the CLI's subparsers."""
    p = sub.add_parser("bench", help="benchmark the fused ops, the model and streaming against the "
                                     "baselines; write a JSON record, a report and plots",
                       description=plain_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="device to benchmark (default: %(default)s)")
    # the parts are not imported here: that would import torch for every command of the CLI
    p.add_argument("--ops", type=_csv, default=None, metavar="LIST",
                   help="parts to run, comma-separated among agru,memory_bank,model,stream "
                        "(default: all; model and stream read MELD, and without it they are "
                        "skipped with a note when not asked for by name)")
    p.add_argument("--quick", action="store_true",
                   help="a few shapes and repeats, a few dozen dialogues (extrapolated); no "
                        "torch.compile unless --compile; under two minutes on 2 cores")
    p.add_argument("--threads", type=_threads, default=[1, 2], metavar="LIST",
                   help="torch thread counts (default: 1,2)")
    p.add_argument("--out-dir", default=None,
                   help="results go to OUT_DIR/<machine>/ (default: a new folder "
                        "aghmn-bench-<date>-<time> under the current directory)")
    comp = p.add_mutually_exclusive_group()
    comp.add_argument("--no-compile", dest="compile", action="store_false", default=None,
                      help="skip the reference-under-torch.compile baseline")
    comp.add_argument("--compile", dest="compile", action="store_true",
                      help="include the torch.compile baseline also in a --quick run")
    p.add_argument("--compile-shapes", type=_csv, default=None, metavar="IDS",
                   help="shape ids that get the compiled baseline, or 'all' (default: the "
                        "standard shapes with T = 10: B1-T10-H100,B1024-T10-H100)")
    p.add_argument("--shapes", type=_csv, default=None, metavar="IDS",
                   help="shape ids like B32-T10-H100 (default: standard shapes and sweeps; quick: "
                        "a subset)")
    p.add_argument("--backends", type=_csv, default=None, metavar="LIST",
                   help="columns to run (default: every backend for the device, "
                        "reference-compiled, nn.GRU)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="correctness gate: largest error relative to a tensor's largest magnitude "
                        "(default 1e-4 CPU, 1e-3 CUDA)")
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--model-dialogues", type=int, default=None,
                   help="training dialogues timed by the model part (default: all; quick: 24)")
    p.add_argument("--model-epochs", type=int, default=1, help="timed epochs per model row")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--name", default=None, help="results folder name (default: from the machine)")


def _parts(args) -> List[str]:
    """The --ops parts, all of them by default."""
    from ..bench.suite import PARTS
    return list(PARTS) if args.ops is None else args.ops


def _command_line(args) -> str:
    parts = ["aghmn-fast", "bench", "--device", args.device, "--ops", ",".join(_parts(args)),
             "--threads", ",".join(map(str, args.threads))]
    if args.quick:
        parts.append("--quick")
    if args.compile is not None:
        parts.append("--compile" if args.compile else "--no-compile")
    for flag in ("compile_shapes", "shapes", "backends"):
        if getattr(args, flag):
            parts += ["--" + flag.replace("_", "-"), ",".join(getattr(args, flag))]
    for flag in ("tolerance", "model_dialogues", "name"):
        if getattr(args, flag) is not None:
            parts += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    if args.model_epochs != 1:
        parts += ["--model-epochs", str(args.model_epochs)]
    return " ".join(shlex.quote(p) for p in parts)


def default_out_dir() -> str:
    """A new folder under the current directory, named after the current local time."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = f"aghmn-bench-{stamp}", 1
    while os.path.exists(path):
        n += 1
        path = f"aghmn-bench-{stamp}-{n}"
    return path


def options_from_args(args):
    """The :class:`~aghmn_fast.bench.suite.SuiteOptions` that the parsed flags ask for."""
    from ..bench.shapes import shape_by_id   # here: torch loads only when a command needs it
    from ..bench.suite import SuiteOptions
    return SuiteOptions(
        device=args.device, parts=_parts(args), quick=args.quick, threads=args.threads,
        out_dir=args.out_dir or default_out_dir(), shapes=[shape_by_id(s) for s in args.shapes] if args.shapes else None,
        compile=args.compile, compile_shapes=args.compile_shapes, tolerance=args.tolerance,
        backends=args.backends, data=args.data, model_dialogues=args.model_dialogues,
        model_epochs=args.model_epochs, plots=not args.no_plots, name=args.name,
        command=_command_line(args))


def cmd_bench(args) -> int:
    """Run the suite; exit status 1 when a backend failed its correctness gate or raised, 2 for
    bad input (the MELD data a part asked for by name is missing, a tracked file in the way)."""
    import dataclasses

    from ..bench.suite import missing_data, run_suite
    opts = options_from_args(args)
    missing = missing_data(opts)
    if missing and args.ops is None:
        # Not asked for by name: run what needs no data, and say so before the first timing.
        note = (f"Skipped the {', '.join(missing)} part(s): {next(iter(missing.values()))}")
        print(f"aghmn-fast bench: {note}", flush=True)
        opts = dataclasses.replace(opts, notes=[note], parts=[p for p in opts.parts if p not in missing])
    # A file git tracks in the way, or MELD missing for a part asked for by name: run_suite
    # raises before timing anything (one line on stderr, exit 2, through the CLI's boundary).
    record: Dict = run_suite(opts)
    for path in record["files"]:
        print("wrote", path)
    bad = [r for r in record["ops"] if r["status"] in ("WRONG", "error")]
    if bad:
        print(f"{len(bad)} case(s) WRONG or failing: see the report")
    return 1 if bad else 0


COMMANDS = {"bench": cmd_bench}
