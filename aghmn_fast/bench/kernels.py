"""Benchmark of the two hot ops, ``agru`` and ``memory_bank``: every backend against the baselines.

Columns ("backends" in the rows):

- every backend of :func:`aghmn_fast.backends` for the device ("cpu", "cuda", "triton",
  "reference" = the eager step loop users of the authors' code get). Triton on a CPU is only
  ever its interpreter here: listed as skipped, never timed;
- "reference-compiled": the reference under ``torch.compile`` (inductor, ``dynamic=False``),
  compiled per shape, mode and thread count (inductor bakes the thread count into its kernels);
  the first call (the compilation) is reported as ``compile_s``, never timed;
- "nn.GRU", the vendor yardstick (oneDNN on the CPU, cuDNN on a GPU): for ``agru`` a
  unidirectional ``torch.nn.GRU`` of the same (B, T, H), which computes a different function
  (3 gates to AGRU's 2), so it has no correctness check; for ``memory_bank`` a bidirectional
  ``torch.nn.GRU`` with the same weights over the windows stacked to [Q, K, H] (the gather is
  not timed, which favours nn.GRU), checked by summing its two directions plus the residual.

Correctness gate: before timing, every column is run on the case's inputs and its output (and,
for forward+backward, every input gradient under one random output gradient) is compared with
the reference evaluated in float64 on the same inputs. A column whose worst error, relative to
the largest magnitude of the tensor, exceeds the tolerance (or that produces NaN) is reported as
WRONG and not timed; one that raises is reported as an error.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import ops, reference
from .shapes import Shape, agru_inputs, memory_bank_inputs, stacked_windows
from .timing import FULL_BUDGET, Budget, num_threads, sample, summarize

__all__ = ["OPS", "MODES", "COMPILED", "VENDOR", "OpSuiteConfig", "columns", "default_tolerance",
           "run_ops", "timed_step", "compile_reference"]

OPS = ("agru", "memory_bank")
MODES = ("forward", "forward+backward")
COMPILED = "reference-compiled"
VENDOR = "nn.GRU"
# reference.memory_bank validates its window indices with a data-dependent check that dynamo
# cannot trace: it compiles as two graphs around that check instead of one.
_FULLGRAPH = {"agru": True, "memory_bank": False}
# The torch.compile backend of the compiled baseline ("eager" in the fast tests of the machinery).
COMPILE_BACKEND = "inductor"


@dataclasses.dataclass
class OpSuiteConfig:
    """What :func:`run_ops` measures. ``backends=None``: every backend for the device plus the
    baselines; ``compile_shapes``: ids of the shapes that get the compiled baseline (None: all)."""
    shapes: Sequence[Shape]
    device: str = "cpu"
    ops: Sequence[str] = OPS
    modes: Sequence[str] = MODES
    threads: Sequence[int] = (1, 2)
    backends: Optional[Sequence[str]] = None
    compile: bool = True
    compile_shapes: Optional[Sequence[str]] = None
    budget: Budget = FULL_BUDGET
    tolerance: Optional[float] = None

    def __post_init__(self):
        bad = [o for o in self.ops if o not in OPS]
        if bad:
            raise ValueError(f"ops must be among {OPS}, got {bad}")
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"modes must be among {MODES}, got {bad}")
        if not self.shapes:
            raise ValueError("shapes is empty")


def default_tolerance(device: str) -> float:
    """Largest accepted error relative to a tensor's largest magnitude, float32 vs float64.

    The C++ kernels stay near 1e-6; GPU kernels may reassociate sums over H and over (B, T).
    """
    return 1e-4 if torch.device(device).type == "cpu" else 1e-3


def columns(device: str, compile_reference: bool = True) -> List[str]:
    """The columns of the op tables: the device's backends, fastest first, then the baselines."""
    names = list(ops.backends(device))
    extra = ([COMPILED] if compile_reference else []) + [VENDOR]
    return names + [e for e in extra if e not in names]


# ---- one case: inputs, expected values, the callables of every column -------------------------

@dataclasses.dataclass
class _Runner:
    """``gate()`` -> (output, leaves) comparable with the reference (None: a yardstick with
    nothing to compare); ``call()`` -> the timed call's output, whose sum is back-propagated
    into ``leaves`` in forward+backward mode."""
    gate: Optional[Callable[[], Tuple[Tensor, List[Tensor]]]]
    call: Callable[[], Tensor]
    leaves: List[Tensor]


def _inputs(op: str, shape: Shape, device: str, grad: bool, dtype=torch.float32):
    """(the op's arguments, the tensors whose gradients are compared) for one case."""
    if op == "agru":
        args = [a.to(device).requires_grad_(grad) for a in agru_inputs(shape, dtype=dtype)]
        return args, args
    u, windows, flat = memory_bank_inputs(shape, dtype=dtype)
    u = u.to(device).requires_grad_(grad)
    flat = [w.to(device).requires_grad_(grad) for w in flat]
    return [u, windows.to(device), flat], [u, *flat]


def _apply(op: str, fn: Callable, args: List) -> Tensor:
    return fn(*args)[0] if op == "agru" else fn(*args)


def _vendor_runner(op: str, shape: Shape, device: str, grad: bool,
                   dtype=torch.float32) -> _Runner:
    H = shape.H
    args, leaves = _inputs(op, shape, device, grad, dtype)
    if op == "agru":
        torch.manual_seed(0)
        gru = torch.nn.GRU(H, H, batch_first=True).to(device, dtype)
        return _Runner(None, lambda: gru(args[0])[0], [args[0], *gru.parameters()])
    u, windows, flat = args
    gru = torch.nn.GRU(H, H, batch_first=True, bidirectional=True).to(device, dtype)
    with torch.no_grad():
        for p, w in zip(gru._flat_weights, flat):
            p.copy_(w)
    params = list(gru._flat_weights)
    stacked = stacked_windows(u.detach(), windows).requires_grad_(grad)

    def gate():
        # The gather is part of the checked function (so that the utterance gradient
        # compares), not of the timed one.
        s = stacked_windows(u, windows)
        out = gru(s)[0]
        return out[..., :H] + out[..., H:] + s, [u, *params]
    return _Runner(gate, lambda: gru(stacked)[0], [stacked, *params])


def _runner(op: str, backend: str, shape: Shape, device: str, grad: bool,
            compiled: Optional[Callable], dtype=torch.float32) -> _Runner:
    """The callables of one column for one case (fresh inputs, always the same values)."""
    if backend == VENDOR:
        return _vendor_runner(op, shape, device, grad, dtype)
    fn = compiled or getattr(ops.resolve_backend(backend, torch.device(device)), op)
    args, leaves = _inputs(op, shape, device, grad, dtype)

    def call():
        return _apply(op, fn, args)
    return _Runner(lambda: (call(), leaves), call, leaves)


def _expected(op: str, shape: Shape, device: str, grad: bool, cotangent_seed: int = 1):
    """(reference output in float64, the output gradient the gate uses, the float64 input
    gradients or None in forward mode), on the case's inputs."""
    args, leaves = _inputs(op, shape, device, grad, dtype=torch.float64)
    out = _apply(op, getattr(reference, op), args)
    g = torch.Generator().manual_seed(cotangent_seed)
    cot = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device)
    grads = list(torch.autograd.grad(out, leaves, cot)) if grad else None
    return out.detach(), cot, grads


def _max_rel_error(got: Tensor, want: Tensor) -> float:
    if got.shape != want.shape:
        return math.inf
    got = got.detach().double()
    if not torch.isfinite(got).all():
        return math.inf
    scale = float(want.abs().max()) if want.numel() else 0.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    return err / scale if scale > 0 else err


def _gate(runner: _Runner, expected, grad: bool) -> Tuple[float, str]:
    """(worst relative error, the tensor it was found in) of one column against the reference."""
    want_out, cot, want_grads = expected
    if grad:
        out, leaves = runner.gate()
        grads = torch.autograd.grad(out, leaves, cot.to(out.dtype))
    else:
        with torch.no_grad():
            out, _ = runner.gate()
        grads = []
    worst, where = _max_rel_error(out, want_out), "output"
    for i, (g, w) in enumerate(zip(grads, want_grads or [])):
        e = _max_rel_error(g, w)
        if not e <= worst:
            worst, where = e, f"grad of input {i}"
    return worst, where


def _step(runner: _Runner, grad: bool) -> Callable[[], None]:
    if grad:
        def step():
            # the sum in float32: a float16 sum of a large output could overflow
            torch.autograd.grad(runner.call().float().sum(), runner.leaves)
    else:
        def step():
            with torch.no_grad():
                runner.call()
    return step


def timed_step(op: str, backend: str, shape: Shape, device: str, grad: bool,
               compiled: Optional[Callable] = None, dtype=torch.float32) -> Callable[[], None]:
    """The step that the suite times for one column (``backend``, or ``COMPILED`` with
    ``compiled`` from :func:`compile_reference`, or ``VENDOR``) of one case: a forward under
    ``torch.no_grad()``, or with ``grad`` a forward and a backward of its sum into every input.
    ``dtype``: of the inputs (the suite times float32). The pytest-benchmark suite
    (``benchmarks/test_bench_ops.py``) and ``benchmarks/gpu_bench.py`` time the same steps."""
    return _step(_runner(op, backend, shape, device, grad, compiled, dtype), grad)


# ---- the suite --------------------------------------------------------------------------------

def compile_reference(op: str) -> Callable:
    """The op's reference under ``torch.compile`` as the ``COMPILED`` column runs it."""
    # A fresh dynamo state per compiled case: the recompile limit counts per code object, and a
    # case silently falling back to eager would be timed as "compiled".
    torch._dynamo.reset()
    return torch.compile(getattr(reference, op), fullgraph=_FULLGRAPH[op], dynamic=False,
                         backend=COMPILE_BACKEND)


def _skip_reason(backend: str, shape: Shape, cfg: OpSuiteConfig) -> Optional[str]:
    if backend == "triton" and torch.device(cfg.device).type == "cpu":
        return "Triton on a CPU runs in its interpreter: not a benchmark"
    if backend == COMPILED and not cfg.compile:
        return "--no-compile"
    if backend == COMPILED and cfg.compile_shapes is not None and shape.id not in cfg.compile_shapes:
        return "not compiled at this shape (compile time)"
    return None


def run_ops(cfg: OpSuiteConfig, log: Callable[[str], None] = print) -> List[Dict]:
    """Gate and time every (op, shape, mode, thread count, column); returns one dict per row.

    A row has op, mode, shape (id), B, T, H, kind, backend, threads, status ("ok", "WRONG",
    "error", "skipped"), and when timed median_us, q1_us, q3_us, p10_us, p90_us, min_us, reps;
    ``max_rel_err`` when checked; ``compile_s`` for the compiled reference; ``load1``, the
    1-minute load average after the case; ``note``.
    """
    tol = cfg.tolerance if cfg.tolerance is not None else default_tolerance(cfg.device)
    names = list(cfg.backends) if cfg.backends is not None else columns(cfg.device, cfg.compile)
    rows: List[Dict] = []
    for op in cfg.ops:
        for shape in cfg.shapes:
            for mode in cfg.modes:
                grad = mode != "forward"
                expected = _expected(op, shape, cfg.device, grad)
                for threads in cfg.threads:
                    with num_threads(threads):
                        case = [dict(op=op, mode=mode, shape=shape.id, B=shape.B, T=shape.T,
                                     H=shape.H, kind=shape.kind, backend=b, threads=threads,
                                     device=cfg.device) for b in names]
                        _run_case(case, shape, grad, expected, tol, cfg)
                    for row in case:
                        log(_progress(row))
                    rows += case
    return rows


def _run_case(case: List[Dict], shape: Shape, grad: bool, expected, tol: float,
              cfg: OpSuiteConfig) -> None:
    """Gate every column of one case, then time the ones that passed, round by round."""
    timed = []
    try:
        for row in case:
            step = _prepare(row, shape, grad, expected, tol, cfg)
            if step is not None:
                timed.append((row, step, []))
        for r in range(cfg.budget.rounds):
            budget = cfg.budget.round()
            if r == 0:
                budget = dataclasses.replace(budget, warmup=cfg.budget.warmup)
            for row, step, samples in timed:
                if row.get("status") == "error":
                    continue
                try:
                    samples += sample(step, budget, cfg.device)
                except Exception as exc:  # e.g. out of memory on a large shape
                    row.update(status="error", note=f"{type(exc).__name__}: {exc}"[:300])
        for row, _, samples in timed:
            if row.get("status") != "error":
                row.update(summarize(samples), status="ok")
    finally:
        if any(row["backend"] == COMPILED for row, _, _ in timed):
            torch._dynamo.reset()
    load = _load1()
    for row in case:
        row["load1"] = load


def _prepare(row: Dict, shape: Shape, grad: bool, expected, tol: float,
             cfg: OpSuiteConfig) -> Optional[Callable[[], None]]:
    """Skip or gate one column (filling ``row``); the step to time when it is to be timed."""
    op, backend = row["op"], row["backend"]
    why = _skip_reason(backend, shape, cfg)
    if why:
        row.update(status="skipped", note=why)
        return None
    try:
        compiled = compile_reference(op) if backend == COMPILED else None
        runner = _runner(op, backend, shape, cfg.device, grad, compiled)
        if runner.gate is None:
            row["note"] = "yardstick: a plain GRU, not the same function (no check)"
        else:
            start = _now(cfg.device)
            err, where = _gate(runner, expected, grad)
            if compiled is not None:
                row["compile_s"] = _now(cfg.device) - start
            row["max_rel_err"] = err
            if not err <= tol:
                row.update(status="WRONG", note=f"{where}: error {err:.3g} > tolerance {tol:g}")
                return None
        return _step(runner, grad)
    except Exception as exc:  # a backend refusing a size is reported in its cell, not fatal
        row.update(status="error", note=f"{type(exc).__name__}: {exc}"[:300])
        return None


def _load1() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _now(device: str) -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def _progress(row: Dict) -> str:
    if row["status"] == "ok":
        what = f"{row['median_us']:11.1f} us  [{row['p10_us']:.1f} .. {row['p90_us']:.1f}]"
        if "compile_s" in row:
            what += f"  (compile {row['compile_s']:.1f} s)"
    else:
        what = f"{row['status']:>11s}  {row.get('note', '')}"
    return (f"{row['op']:11s} {row['mode']:16s} {row['shape']:15s} t={row['threads']} "
            f"{row['backend']:18s} {what}")
