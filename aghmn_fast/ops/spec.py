"""What an op folder declares about itself (the folders are discovered by :mod:`.catalog`).

Each op is a folder ``aghmn_fast/ops/<op>/`` whose ``op.py`` defines ``SPEC``, an
:class:`OpSpec`: its raw kernels (by name), the public functions built on them, how those reach
an implementation's kernels, how its raw ops get their autograd and fake rules, where its Triton
kernels are, and its CUDA kernels' smallest shared-memory need. The registry, the extension
loader, the Triton loader and the conformance suite read only these specs: no op is named
outside its folder (``tests/ops/test_registry.py`` checks it), so adding an op adds a folder and
edits no loader.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Tuple

from .common import Kernels

__all__ = ["Function", "OpSpec", "recurrence_shared_bytes"]


@dataclasses.dataclass(frozen=True)
class Function:
    """A public function of an op folder (``aghmn_fast.ops.<name>``).

    ``reference(*args)``: the reference loop (arguments already validated);
    ``fused(kernels, *args)``: the function over an implementation's raw :class:`Kernels`;
    ``dims(*args) -> (first, hidden, steps)``: what the capability checks read from a call (its
    first tensor, hidden size and recurrence steps).
    """
    name: str
    reference: Callable
    fused: Callable
    dims: Callable


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One op folder (see the module doc).

    ``raw_ops``: its raw ops' names in ``torch.ops.aghmn_fast`` (the Triton ones carry the
    prefix ``triton_``); ``register_autograd(kernels)`` / ``register_fakes(kernels)``: give the
    raw forward op its backward / the C++ raw ops their shape functions; ``load_triton()``:
    import its Triton kernels and return them by raw op name; ``min_shared_bytes(hidden, steps,
    itemsize)``: the least shared memory per block its CUDA launcher can work with;
    ``output_shapes``: raw op name -> a function of that op's arguments giving its outputs'
    shapes (what its fake implementation allocates; the test harnesses allocate with it too);
    ``triton_compile()``: import its Triton kernels and return what
    :mod:`~aghmn_fast.ops.compile_check` compiles of them (a
    :class:`~aghmn_fast.ops.triton_common.CompileTargets`, or None for an op without Triton
    kernels).
    """
    name: str
    raw_ops: Tuple[str, ...]
    functions: Tuple[Function, ...]
    register_autograd: Callable[[Kernels], None]
    register_fakes: Callable[[Kernels], None]
    load_triton: Callable[[], Dict[str, Any]]
    min_shared_bytes: Callable[[int, int, int], int]
    output_shapes: Mapping[str, Callable[..., Tuple[Tuple[int, ...], ...]]] = \
        dataclasses.field(default_factory=dict)
    triton_compile: Callable[[], Any] = lambda: None


def recurrence_shared_bytes(gates: int, hidden: int, itemsize: int, forward_extra: int = 0) -> int:
    """The smallest shared-memory layout of a launcher on ``csrc/common/recurrence.cuh`` (weights
    in global memory, one sequence per block) for ``gates`` gate blocks: forward bias +
    double-buffered state (+ ``forward_extra`` bytes of the op's own), or backward double-buffered
    gate gradients + carry + per-warp partial sums (<= 16 warps); plus alignment padding."""
    forward = (gates + 2) * hidden * itemsize + forward_extra
    backward = (2 * gates + 1) * hidden * itemsize + 2 * 16 * itemsize
    return max(forward, backward) + 64
