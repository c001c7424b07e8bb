"""Timing of one benchmark case: warm-up, then repeated calls, summarised by order statistics."""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from typing import Callable, Dict, Iterator, List, Sequence

import torch

__all__ = ["Budget", "QUICK_BUDGET", "FULL_BUDGET", "sample", "measure", "summarize",
           "num_threads"]


@dataclasses.dataclass(frozen=True)
class Budget:
    """How long to time one case: ``warmup`` untimed calls, then at least ``min_reps`` calls and
    ``min_seconds`` of timed calls, at most ``max_reps``, split into ``rounds`` rounds (the
    columns of a case take turns round by round, so that a burst of load from other processes
    lands on all of them rather than on one)."""
    warmup: int
    min_reps: int
    max_reps: int
    min_seconds: float
    rounds: int = 1

    def round(self) -> "Budget":
        """The share of one round (no warm-up)."""
        n = max(1, self.rounds)
        return Budget(0, -(-self.min_reps // n), -(-self.max_reps // n), self.min_seconds / n)


QUICK_BUDGET = Budget(warmup=1, min_reps=3, max_reps=15, min_seconds=0.02)
FULL_BUDGET = Budget(warmup=3, min_reps=12, max_reps=400, min_seconds=0.4, rounds=4)


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


def sample(step: Callable[[], object], budget: Budget, device: str = "cpu") -> List[float]:
    """Per-call times of ``step()`` in microseconds after ``budget.warmup`` untimed calls.

    On CUDA each call is bracketed by CUDA events (the GPU time of the call, launch overhead
    included), synchronised at the end; on the CPU by ``time.perf_counter``.
    """
    cuda = torch.device(device).type == "cuda"
    for _ in range(budget.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()

    def more(done: int) -> bool:
        return done < budget.max_reps and (
            done < budget.min_reps or time.perf_counter() - start < budget.min_seconds)
    if not cuda:
        samples: List[float] = []
        while more(len(samples)):
            t0 = time.perf_counter()
            step()
            samples.append((time.perf_counter() - t0) * 1e6)
        return samples
    events = []
    while more(len(events)):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        step()
        end.record()
        events.append((begin, end))
        if len(events) % 16 == 0:
            torch.cuda.synchronize()  # so that the wall-clock budget tracks GPU time
    torch.cuda.synchronize()
    return [b.elapsed_time(e) * 1e3 for b, e in events]


def measure(step: Callable[[], object], budget: Budget, device: str = "cpu") -> Dict[str, float]:
    """:func:`summarize` of :func:`sample` over all of ``budget`` (its rounds back to back)."""
    return summarize(sample(step, budget, device))


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
