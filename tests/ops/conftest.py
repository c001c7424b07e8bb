"""Fixtures of the op conformance suites: ``impl``, one implementation (tests/ops/conformance.py),
parametrised by name; tests take it with ``@pytest.mark.parametrize("impl, dtype", pairs(),
indirect=["impl"])`` or ``@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)``."""
import os

import pytest

from conformance import make_implementation


@pytest.fixture
def impl(request):
    """The implementation; Triton's kernel buffers are NaN-filled while it runs (the emulator
    poisons its own), so an element a kernel forgets to write fails the comparison. The test's
    implementation and dtype are recorded as its properties (JUnit XML: the GPU suite's
    correctness rows)."""
    request.node.user_properties.append(("implementation", request.param))
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and "dtype" in callspec.params:
        request.node.user_properties.append(
            ("dtype", str(callspec.params["dtype"]).replace("torch.", "")))
    implementation = make_implementation(request.param, request)
    if not implementation.name.startswith("triton"):
        yield implementation
        return
    from aghmn_fast.ops import triton_common
    triton_common.set_poison_outputs(True)
    try:
        yield implementation
    finally:
        triton_common.set_poison_outputs(False)


#: ``AGHMN_OPS_SUBSET=first``: of each test function, only its first case per (implementation,
#: dtype), i.e. one representative shape per test, implementation and dtype (the conformance
#: sweeps list their sizes smallest-first ... largest); ``=rest``: every other case. The GPU
#: suite runs "first" as its correctness stage and "rest" when time is left, so that a short
#: loan reports every check on at least one shape (benchmarks/gpu_suite.py).
SUBSETS = ("first", "rest")


def subset_of(items, subset: str):
    """The items of ``subset`` (see :data:`SUBSETS`), in collection order."""
    seen, chosen = set(), []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        key = (item.nodeid.split("[")[0], str(params.get("impl")), str(params.get("dtype")))
        first = key not in seen
        seen.add(key)
        if first == (subset == "first"):
            chosen.append(item)
    return chosen


def pytest_collection_modifyitems(config, items):
    subset = os.environ.get("AGHMN_OPS_SUBSET")
    if not subset:
        return
    if subset not in SUBSETS:
        raise pytest.UsageError(f"AGHMN_OPS_SUBSET must be one of {', '.join(SUBSETS)}, "
                                f"got {subset!r}")
    ops_dir = os.path.dirname(os.path.abspath(__file__))
    mine = [i for i in items if os.path.dirname(str(i.path)) == ops_dir]
    keep = set(map(id, subset_of(mine, subset)))
    dropped = [i for i in mine if id(i) not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if id(i) in keep or i not in mine]
