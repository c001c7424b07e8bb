"""Timing of one benchmark case: warm-up, then repeated calls, summarised by order statistics."""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from typing import Callable, Dict, Iterator, List, Sequence

import torch

__all__ = ["Budget", "QUICK_BUDGET", "FULL_BUDGET", "measure", "summarize", "num_threads"]


@dataclasses.dataclass(frozen=True)
class Budget:
    """How long to time one case: ``warmup`` untimed calls, then at least ``min_reps`` calls and
    ``min_seconds`` of timed calls, at most ``max_reps``."""
    warmup: int
    min_reps: int
    max_reps: int
    min_seconds: float


QUICK_BUDGET = Budget(warmup=1, min_reps=3, max_reps=15, min_seconds=0.02)
FULL_BUDGET = Budget(warmup=3, min_reps=10, max_reps=400, min_seconds=0.4)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    # Linear interpolation between order statistics (numpy's default), without numpy.
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_us: Sequence[float]) -> Dict[str, float]:
    """Median, quartiles (the IQR) and 10th/90th percentiles of per-call times in microseconds."""
    if not samples_us:
        raise ValueError("no samples to summarize")
    s = sorted(samples_us)
    return {"median_us": statistics.median(s), "q1_us": _quantile(s, 0.25),
            "q3_us": _quantile(s, 0.75), "p10_us": _quantile(s, 0.10),
            "p90_us": _quantile(s, 0.90), "min_us": s[0], "reps": len(s)}


def measure(step: Callable[[], object], budget: Budget, device: str = "cpu") -> Dict[str, float]:
    """Time ``step()`` per call after ``budget.warmup`` untimed calls.

    On CUDA each call is bracketed by CUDA events (the GPU time of the call, launch overhead
    included), synchronised at the end; on the CPU by ``time.perf_counter``.
    """
    cuda = torch.device(device).type == "cuda"
    for _ in range(budget.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    samples: List[float] = []
    start = time.perf_counter()
    if cuda:
        events = []
        while len(events) < budget.max_reps and (
                len(events) < budget.min_reps or time.perf_counter() - start < budget.min_seconds):
            begin, end = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            begin.record()
            step()
            end.record()
            events.append((begin, end))
            if len(events) % 16 == 0:
                torch.cuda.synchronize()  # so that the wall-clock budget tracks GPU time
        torch.cuda.synchronize()
        samples = [b.elapsed_time(e) * 1e3 for b, e in events]
    else:
        while len(samples) < budget.max_reps and (
                len(samples) < budget.min_reps or time.perf_counter() - start < budget.min_seconds):
            t0 = time.perf_counter()
            step()
            samples.append((time.perf_counter() - t0) * 1e6)
    return summarize(samples)


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)``; the previous count is restored after."""
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)
