"""Loads the compiled extension ``aghmn_fast._C`` (its ops register under ``torch.ops.aghmn_fast``)."""
from __future__ import annotations

import glob
import os

import torch

_loaded_path = None


def load() -> str:
    """Load the extension once; return its path. Raises ImportError if it was not built."""
    global _loaded_path
    if _loaded_path is None:
        here = os.path.dirname(os.path.abspath(__file__))
        found = sorted(glob.glob(os.path.join(here, "_C*.so")) + glob.glob(os.path.join(here, "_C*.pyd")))
        if not found:
            raise ImportError("aghmn_fast._C is not built: run `pip install --no-build-isolation -e .` "
                              "or `python setup.py build_ext --inplace`")
        torch.ops.load_library(found[0])
        _loaded_path = found[0]
    return _loaded_path

