"""Storage precision of the streaming path: ``"fp32"`` (the default) or ``"bf16"`` (weights,
embedding table and ring slots in bfloat16, arithmetic in float32; docs/RUNTIME.md).

The one rounding from float32 to bfloat16 of the Python side, round to nearest with ties to
even, is :func:`bf16_bits`: the exporter and the torch push path round with it, and the C++
kernel's ``bf16_bits`` (csrc/common/bf16_cpu.h), which rounds the ring-slot writes and the
packed weights, is the same function (tests/test_precision.py checks them bit for bit).
"""
from typing import Tuple

import numpy as np

PRECISIONS: Tuple[str, ...] = ("fp32", "bf16")


def check_precision(precision, name: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`; otherwise a ``ValueError`` naming the
    argument ``name`` and the accepted values."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, PRECISIONS))}, "
                         f"got {precision!r}")
    return precision


def bf16_bits(values) -> np.ndarray:
    """The bfloat16 bit patterns (uint16, same shape) of float32 values: round to nearest, ties
    to even; a NaN stays a quiet NaN of the same sign, infinities stay infinite."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    quiet = (u >> np.uint32(16)) | np.uint32(0x0040)
    return np.where(nan, quiet, rounded).astype(np.uint16)


def to_bfloat16(tensor):
    """A float ``torch.Tensor`` rounded to a ``torch.bfloat16`` tensor (CPU, contiguous) by
    :func:`bf16_bits`."""
    import torch  # here: the CLI imports this module (through export) for every command
    bits = bf16_bits(tensor.detach().to("cpu", torch.float32).numpy())
    return torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)
