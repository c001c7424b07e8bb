"""The op folders, discovered: every ``aghmn_fast/ops/<op>/op.py`` and its ``SPEC``
(:class:`~aghmn_fast.ops.spec.OpSpec`).

Apart from :mod:`.spec`, which the op folders import, so that no module reaches itself through
the folders it discovers.
"""
from __future__ import annotations

import functools
import importlib
import pathlib
from typing import Dict, Tuple

from .spec import Function, OpSpec


@functools.lru_cache(maxsize=None)
def specs() -> Tuple[OpSpec, ...]:
    """Every op folder's spec, in folder-name order."""
    here = pathlib.Path(__file__).resolve().parent
    found = []
    for path in sorted(here.glob("*/op.py")):
        module = importlib.import_module(f"{__package__}.{path.parent.name}.op")
        found.append(module.SPEC)
    return tuple(found)


def functions() -> Dict[str, Tuple[OpSpec, Function]]:
    """Public function name -> (its op folder's spec, the function)."""
    return {f.name: (spec, f) for spec in specs() for f in spec.functions}
