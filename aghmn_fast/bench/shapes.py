"""The benchmark shapes (the one registry every benchmark uses) and their input builders.

A shape is (B, T, H): for ``agru``, B sequences of T steps with input size D = H; for
``memory_bank``, Q = B windows of K = T slots over the N = B + T - 1 utterances of one stream
(window q holds utterances q .. q + K - 1: every utterance sits in up to K windows, as in the
model's sliding windows), BiF (two directions) unless stated.

- :data:`SHAPES`: the standard shapes (the workloads of the kernel design notes, KERNELS.md);
- :data:`BATCH_SWEEP`, :data:`WINDOW_SWEEP`: latency against the batch at K = 10 and against
  the window length at B = 32 (H = 100), for the plots of ``aghmn-fast bench``;
- :data:`QUICK_SHAPES`: the ``--quick`` subset.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, List

import torch

__all__ = ["Shape", "SHAPES", "BATCH_SWEEP", "WINDOW_SWEEP", "QUICK_SHAPES", "all_shapes",
           "shape_by_id", "agru_inputs", "memory_bank_inputs", "stacked_windows"]


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmark size; ``kind`` says which workload it stands for."""
    B: int
    T: int
    H: int
    kind: str

    @property
    def id(self) -> str:
        return f"B{self.B}-T{self.T}-H{self.H}"


SHAPES: List[Shape] = [
    Shape(1, 40, 100, "streaming, IEMOCAP window (K = 40)"),
    Shape(1, 10, 100, "streaming, MELD window (K = 10)"),
    Shape(32, 40, 100, "training batch, IEMOCAP"),
    Shape(1024, 10, 100, "1,024 concurrent streams / MELD training windows"),
    Shape(256, 40, 256, "wide hidden size"),
]

BATCH_SWEEP: List[Shape] = [Shape(b, 10, 100, "batch sweep (K = 10)")
                            for b in (1, 4, 16, 64, 256, 1024)]
WINDOW_SWEEP: List[Shape] = [Shape(32, t, 100, "window sweep (B = 32)") for t in (5, 10, 20, 40, 80)]

QUICK_SHAPES: List[Shape] = [
    Shape(1, 10, 100, "streaming, MELD window (K = 10)"),
    Shape(32, 10, 100, "window sweep (B = 32)"),
    Shape(32, 40, 100, "training batch, IEMOCAP"),
    Shape(256, 10, 100, "batch sweep (K = 10)"),
]


def all_shapes(*groups: Iterable[Shape]) -> List[Shape]:
    """The union of shape lists, first occurrence of each (B, T, H) kept, in order."""
    seen, out = set(), []
    for group in groups:
        for s in group:
            if (s.B, s.T, s.H) not in seen:
                seen.add((s.B, s.T, s.H))
                out.append(s)
    return out


def shape_by_id(shape_id: str) -> Shape:
    """The registered shape with id ``shape_id`` (e.g. "B1-T40-H100"); else one built from it."""
    for s in all_shapes(SHAPES, BATCH_SWEEP, WINDOW_SWEEP, QUICK_SHAPES):
        if s.id == shape_id:
            return s
    try:
        b, t, h = shape_id.split("-")
        if not (b[0], t[0], h[0]) == ("B", "T", "H"):
            raise ValueError
        return Shape(int(b[1:]), int(t[1:]), int(h[1:]), "custom")
    except (ValueError, IndexError):
        raise ValueError(f"shape id must look like B32-T10-H100, got {shape_id!r}") from None


def agru_inputs(shape: Shape, dtype=torch.float32, requires_grad=False, seed=0):
    """``(x, attn, weight_ih, weight_hh, bias_ih, bias_hh, h0)`` for ``agru``."""
    g = torch.Generator().manual_seed(seed)
    B, T, H = shape.B, shape.T, shape.H
    t = [torch.randn(B, T, H, generator=g), torch.rand(B, T, generator=g),
         torch.randn(2 * H, H, generator=g) / H ** 0.5, torch.randn(2 * H, H, generator=g) / H ** 0.5,
         torch.randn(2 * H, generator=g) * 0.1, torch.randn(2 * H, generator=g) * 0.1,
         torch.zeros(B, H)]
    return [x.to(dtype).requires_grad_(requires_grad) for x in t]


def memory_bank_inputs(shape: Shape, dtype=torch.float32, requires_grad=False, bidirectional=True,
                       seed=0):
    """``(utterances, windows, flat_weights)`` for ``memory_bank``."""
    g = torch.Generator().manual_seed(seed)
    Q, K, H = shape.B, shape.T, shape.H
    N = Q + K - 1
    utterances = torch.randn(N, H, generator=g).to(dtype).requires_grad_(requires_grad)
    windows = torch.arange(Q).unsqueeze(1) + torch.arange(K).unsqueeze(0)
    windows[0, : K // 2] = -1  # the start of a conversation: empty leading slots
    flat = []
    for _ in range(2 if bidirectional else 1):
        flat += [torch.randn(3 * H, H, generator=g) / H ** 0.5,
                 torch.randn(3 * H, H, generator=g) / H ** 0.5,
                 torch.randn(3 * H, generator=g) * 0.1, torch.randn(3 * H, generator=g) * 0.1]
    flat = [w.to(dtype).requires_grad_(requires_grad) for w in flat]
    return utterances, windows, flat


def stacked_windows(utterances: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """[Q, K, H] window contents (zeros in empty slots): what ``torch.nn.GRU`` would be fed."""
    keep = (windows >= 0).unsqueeze(-1).to(utterances.dtype)
    return utterances[windows.clamp(min=0)] * keep
