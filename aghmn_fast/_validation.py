"""Compatibility path: the argument checks live in :mod:`aghmn_fast.ops.validation` (this name
is that module, so that its switches set through either name are the same)."""
import sys

from .ops import validation

sys.modules[__name__] = validation
