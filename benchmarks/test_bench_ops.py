"""Benchmarks of the two hot ops, forward and forward+backward, per backend, one and two threads.

Backends: "reference" (the eager step loop users of the authors' code get), "reference-compiled"
(the same under torch.compile, with --bench-compile), "cpu" (the fused C++ kernels), and the
vendor yardstick "nn.GRU" (oneDNN): for agru a unidirectional torch.nn.GRU of the same (B, T, H)
(it does 3 gates to AGRU's 2); for memory_bank a bidirectional torch.nn.GRU over the same
windows, already stacked to [Q, K, H] (the gather is not timed, which favours nn.GRU).

"forward" runs under torch.no_grad() (inference/streaming); "forward+backward" builds the graph
and back-propagates a sum into every input. The steps, inputs and shapes are those of
``aghmn-fast bench`` (:func:`aghmn_fast.bench.kernels.timed_step`); this file only hands them to
pytest-benchmark. Not part of the test suite:

    .venv/bin/python -m pytest benchmarks/ --benchmark-only [--bench-compile] [--bench-table F]
"""
import pytest

from aghmn_fast.bench import kernels
from aghmn_fast.bench.shapes import SHAPES

MODES = list(kernels.MODES)
BACKENDS = ["reference", kernels.COMPILED, "cpu", kernels.VENDOR]


def _run(benchmark, record, bench_compile, op, backend, mode, shape, threads):
    if backend == kernels.COMPILED and not bench_compile:
        pytest.skip("reference under torch.compile: pass --bench-compile")
    compiled = kernels.compile_reference(op) if backend == kernels.COMPILED else None
    step = kernels.timed_step(op, backend, shape, "cpu", mode != "forward", compiled)
    step()  # warm-up (and compilation)
    keys = dict(op=op, backend=backend, shape=f"({shape.B},{shape.T},{shape.H})", threads=threads)
    benchmark.group = f"{op} {mode} {keys['shape']} threads={threads}"
    benchmark.extra_info.update(keys, mode=mode)
    benchmark(step)
    record(benchmark, mode=mode, **keys)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
def test_agru(benchmark, record, bench_compile, threads, backend, mode, shape):
    _run(benchmark, record, bench_compile, "agru", backend, mode, shape, threads)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
def test_memory_bank(benchmark, record, bench_compile, threads, backend, mode, shape):
    _run(benchmark, record, bench_compile, "memory_bank", backend, mode, shape, threads)
