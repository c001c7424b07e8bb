"""Benchmarks of the two hot ops, forward and forward+backward, per backend, one and two threads.

Backends: "reference" (the eager step loop users of the authors' code get), "reference-compiled"
(the same under torch.compile, with --bench-compile), "cpu" (the fused C++ kernels), and the
vendor yardstick "nn.GRU" (oneDNN): for agru a unidirectional torch.nn.GRU of the same (B, T, H)
(it does 3 gates to AGRU's 2); for memory_bank a bidirectional torch.nn.GRU over the same
windows, already stacked to [Q, K, H] (the gather is not timed, which favours nn.GRU).

"forward" runs under torch.no_grad() (inference/streaming); "forward+backward" builds the graph
and back-propagates a sum into every input. Not part of the test suite:

    .venv/bin/python -m pytest benchmarks/ --benchmark-only [--bench-compile] [--bench-table F]
"""
import functools

import pytest
import torch

from aghmn_fast import reference
from aghmn_fast import ops
from shapes import SHAPES, agru_inputs, memory_bank_inputs, stacked_windows  # noqa: E402

MODES = ["forward", "forward+backward"]
BACKENDS = ["reference", "reference-compiled", "cpu", "nn.GRU"]


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    return torch.compile(fn, fullgraph=True, dynamic=False)


def _agru_case(backend, shape, mode):
    """(fn, args, leaves): fn(*args) returns the output to back-propagate from."""
    args = agru_inputs(shape, requires_grad=mode != "forward")
    if backend == "nn.GRU":
        gru = torch.nn.GRU(shape.H, shape.H, batch_first=True)
        return (lambda x: gru(x)[0]), args[:1], args[:1] + list(gru.parameters())
    fn = {"reference": reference.agru, "reference-compiled": _compiled(reference.agru),
          "cpu": ops.resolve_backend("cpu", torch.device("cpu")).agru}[backend]
    return (lambda *a: fn(*a)[0]), args, args


def _bank_case(backend, shape, mode):
    utterances, windows, flat = memory_bank_inputs(shape, requires_grad=mode != "forward")
    if backend == "nn.GRU":
        gru = torch.nn.GRU(shape.H, shape.H, batch_first=True, bidirectional=True)
        stacked = stacked_windows(utterances.detach(), windows).requires_grad_(mode != "forward")
        return (lambda x: gru(x)[0]), [stacked], [stacked] + list(gru.parameters())
    fn = {"reference": reference.memory_bank, "reference-compiled": _compiled(reference.memory_bank),
          "cpu": ops.resolve_backend("cpu", torch.device("cpu")).memory_bank}[backend]
    return (lambda u, w, *fl: fn(u, w, list(fl))), [utterances, windows, *flat], [utterances, *flat]


def _run(benchmark, record, case, mode, **keys):
    fn, args, leaves = case
    if mode == "forward":
        def step():
            with torch.no_grad():
                fn(*args)
    else:
        def step():
            torch.autograd.grad(fn(*args).sum(), leaves)
    step()  # warm-up (and compilation)
    benchmark.group = f"{keys['op']} {mode} {keys['shape']} threads={keys['threads']}"
    benchmark.extra_info.update(keys, mode=mode)
    benchmark(step)
    record(benchmark, mode=mode, **keys)


def _skip_unless_wanted(backend, bench_compile):
    if backend == "reference-compiled" and not bench_compile:
        pytest.skip("reference under torch.compile: pass --bench-compile")


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
def test_agru(benchmark, record, bench_compile, threads, backend, mode, shape):
    _skip_unless_wanted(backend, bench_compile)
    _run(benchmark, record, _agru_case(backend, shape, mode), mode, op="agru", backend=backend,
         shape=f"({shape.B},{shape.T},{shape.H})", threads=threads)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
def test_memory_bank(benchmark, record, bench_compile, threads, backend, mode, shape):
    _skip_unless_wanted(backend, bench_compile)
    _run(benchmark, record, _bank_case(backend, shape, mode), mode, op="memory_bank",
         backend=backend, shape=f"({shape.B},{shape.T},{shape.H})", threads=threads)
