"""Pieces shared by the ops' autograd code: the kernel set of one implementation, and
deterministic segment sums.

The fused kernels do only the sequential part of each recurrence. Everything time-parallel is
done by the autograd Functions next to each op (``ops/<op>/autograd.py``) with ordinary torch
ops, on whatever device the tensors live on. Those Functions take a :class:`Kernels` as their
first argument, so one named Function serves every implementation (the compiled extension, where
the torch dispatcher picks the CPU or CUDA kernel, and Triton).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["Kernels", "overload", "needs_grad", "segment_offsets", "segment_sum",
           "residual_grad"]


class Kernels(dict):
    """The raw op handles of one implementation: raw op name (``"agru_forward"``, ...; the
    schemas of ``docs/OPS.md``) -> anything ``torch.library.register_autograd`` accepts and that
    can be called: an ``OpOverload`` (``torch.ops.aghmn_fast.agru_forward.default``), a
    ``CustomOpDef`` (from ``torch.library.custom_op`` or ``triton_op``). Attribute access reads
    the same entries (``kernels.agru_forward``). Every op folder's raw ops are in one set
    (``aghmn_fast.ops.spec``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__ = self  # attribute access without a failed lookup first (hot path)


def overload(op):
    """``torch.ops.ns.name`` (a packet) -> its only overload, which ``register_*`` accept."""
    return op.default if isinstance(op, torch._ops.OpOverloadPacket) else op


def needs_grad(*tensors) -> bool:
    """Whether autograd will need a backward through a call on ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def segment_offsets(index: Tensor, num_segments: int) -> Tuple[Tensor, Tensor]:
    """``(order, offsets)``: positions sorted by ``index`` (stable: each segment in increasing
    position) and the bounds ``offsets[s] .. offsets[s + 1]`` of segment s in that order
    (``num_segments + 1`` entries). Static shapes, no host read-back."""
    key, order = torch.sort(index, stable=True)
    bounds = torch.arange(num_segments + 1, dtype=key.dtype, device=key.device)
    return order, torch.searchsorted(key, bounds)


def segment_sum(rows: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """``out[s] = sum of rows[i] over i with index[i] == s`` ([num_segments, C]), each segment
    added in increasing i, with no atomics: bitwise reproducible on every device, and equal to
    ``index_add_`` done sequentially (as on the CPU).

    The rows are put in segment order by a stable sort of ``index``; segment boundaries come from
    ``searchsorted`` and ``torch.segment_reduce`` adds each segment. No value is read back to the
    host (``unsafe=True`` skips segment_reduce's own consistency check, a device sync; the
    offsets are consistent by construction). ``index`` must lie in [0, num_segments).
    """
    order, offsets = segment_offsets(index, num_segments)
    if rows.shape[0] == 0:
        return rows.new_zeros(num_segments, *rows.shape[1:])
    return torch.segment_reduce(rows.index_select(0, order), "sum", offsets=offsets, axis=0,
                                unsafe=True)


def residual_grad(grad_rows: Tensor, index: Tensor, num_rows: int) -> Tensor:
    """The memory bank residual's gradient: ``grad_rows`` (one per window slot) summed onto
    the ``num_rows`` utterance rows (the last row collects the empty slots).

    CUDA's ``index_add_`` accumulates with atomics, so its rounding differs from run to run;
    there :func:`segment_sum` gives the same sum deterministically. On the CPU ``index_add_``
    already adds in index order (deterministic, and the cheapest), so it is kept.
    """
    if grad_rows.device.type == "cpu":
        return grad_rows.new_zeros(num_rows, grad_rows.shape[1]).index_add_(0, index, grad_rows)
    return segment_sum(grad_rows, index, num_rows)
