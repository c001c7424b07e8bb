"""The benchmark shapes and input builders: a re-export of :mod:`aghmn_fast.bench.shapes`, the one
source of truth, so that the pytest benchmarks and ``gpu_bench.py`` (which import ``shapes`` from
this folder) and ``aghmn-fast bench`` time the same sizes."""
from aghmn_fast.bench.shapes import (BATCH_SWEEP, QUICK_SHAPES, SHAPES, WINDOW_SWEEP,  # noqa: F401
                                     Shape, agru_inputs, all_shapes, memory_bank_inputs,
                                     shape_by_id, stacked_windows)

__all__ = ["Shape", "SHAPES", "BATCH_SWEEP", "WINDOW_SWEEP", "QUICK_SHAPES", "all_shapes",
           "shape_by_id", "agru_inputs", "memory_bank_inputs", "stacked_windows"]
