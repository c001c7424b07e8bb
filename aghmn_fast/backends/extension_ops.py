"""The compiled extension's ops (``torch.ops.aghmn_fast.*``: CPU kernels, and CUDA kernels when
built) behind the shared glue of :mod:`aghmn_fast.backends.glue`.

Importing this module loads the extension (ImportError when it is not built), registers the
ops' fake and autograd rules, and exposes :func:`agru`, :func:`memory_bank` and
:func:`window_gru` with the reference signatures.
"""
from __future__ import annotations

import torch

from .. import _extension
from .glue import (OpSet, agru_hh_grads, make_agru, make_backend, make_memory_bank,  # noqa: F401
                   make_window_gru, register_autograd_rules, register_fake_impls, window_hh_grads)

__all__ = ["OpSet", "register_autograd_rules", "register_fake_impls", "make_agru",
           "make_memory_bank", "make_backend", "agru_hh_grads", "window_hh_grads", "agru",
           "memory_bank", "window_gru", "EXTENSION_OPS"]


def _load() -> OpSet:
    _extension.load()
    ns = torch.ops.aghmn_fast
    ops = OpSet(ns.agru_forward.default, ns.agru_backward.default,
                ns.window_gru_forward.default, ns.window_gru_backward.default)
    register_fake_impls(ops)
    register_autograd_rules(ops)
    return ops


#: The compiled extension's ops (``torch.ops.aghmn_fast.*``), with fake and autograd registered.
EXTENSION_OPS: OpSet = _load()
agru, memory_bank = make_backend(EXTENSION_OPS)
agru.__doc__ = "Attention GRU on the compiled extension's ops (CPU, and CUDA when built)."
memory_bank.__doc__ = "Memory bank on the compiled extension's ops (CPU, and CUDA when built)."
window_gru = make_window_gru(EXTENSION_OPS.window_gru_forward, EXTENSION_OPS.window_gru_backward)
window_gru.__doc__ = "Window GRU from projections on the compiled extension's ops (CPU, and CUDA)."
