"""Fixtures of the op conformance suites: ``impl``, one implementation (tests/ops/conformance.py),
parametrised by name; tests take it with ``@pytest.mark.parametrize("impl, dtype", pairs(),
indirect=["impl"])`` or ``@pytest.mark.parametrize("impl", IMPLEMENTATIONS, indirect=True)``."""
import pytest

from conformance import make_implementation


@pytest.fixture
def impl(request):
    """The implementation; Triton's kernel buffers are NaN-filled while it runs (the emulator
    poisons its own), so an element a kernel forgets to write fails the comparison."""
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
