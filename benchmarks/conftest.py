"""Benchmark options and the results table.

Run (not part of the test suite): ``.venv/bin/python -m pytest benchmarks/ --benchmark-only``.
Options: ``--bench-compile`` adds the reference under ``torch.compile`` (slow to compile);
``--bench-table PATH`` writes the medians as a markdown table at the end of the run.
"""
import collections
import platform

import pytest
import torch


def pytest_addoption(parser):
    group = parser.getgroup("aghmn_fast benchmarks")
    group.addoption("--bench-compile", action="store_true", default=False,
                    help="also time the reference ops under torch.compile (inductor)")
    group.addoption("--bench-table", default=None, metavar="PATH",
                    help="write a markdown table of the results to PATH")


@pytest.fixture
def bench_compile(request):
    return request.config.getoption("--bench-compile")


@pytest.fixture
def threads(request):
    """Runs the benchmark with torch.set_num_threads(request.param), restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


@pytest.fixture
def record(request):
    """record(benchmark, **keys): after ``benchmark(...)`` ran, keep its min and median."""
    rows = request.config.__dict__.setdefault("_aghmn_bench_rows", [])

    def add(benchmark, **keys):
        stats = benchmark.stats.stats
        rows.append(dict(keys, median_us=stats.median * 1e6, min_us=stats.min * 1e6))
    return add


def _table(rows, stat):
    backends = []
    for r in rows:
        if r["backend"] not in backends:
            backends.append(r["backend"])
    by_case = collections.OrderedDict()
    for r in rows:
        by_case.setdefault((r["threads"], r["op"], r["mode"], r["shape"]), {})[r["backend"]] = r
    lines = []
    for threads in sorted({k[0] for k in by_case}):
        lines += [f"\n### {threads} thread{'s' if threads > 1 else ''}\n",
                  "| op | mode | shape (B,T,H) | " + " | ".join(f"{b} (us)" for b in backends)
                  + " | cpu vs reference | cpu vs nn.GRU |",
                  "|---|---|---|" + "---:|" * (len(backends) + 2)]
        for (t, op, mode, shape), cells in by_case.items():
            if t != threads:
                continue
            vals = [f"{cells[b][stat]:.1f}" if b in cells else "-" for b in backends]
            ratio = lambda other: (f"{cells[other][stat] / cells['cpu'][stat]:.1f}x"  # noqa: E731
                                   if "cpu" in cells and other in cells else "-")
            lines.append(f"| {op} | {mode} | {shape} | " + " | ".join(vals)
                         + f" | {ratio('reference')} | {ratio('nn.GRU')} |")
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("--bench-table")
    rows = session.config.__dict__.get("_aghmn_bench_rows")
    if not path or not rows:
        return
    header = (f"pytest-benchmark rounds, microseconds; torch {torch.__version__}, "
              f"{platform.machine()}, {torch.backends.cpu.get_cpu_capability()}.\n")
    with open(path, "w") as f:
        f.write(header + "\n## Minimum over rounds\n" + _table(rows, "min_us")
                + "\n## Median over rounds\n" + _table(rows, "median_us"))
