"""The window GRU op folder's declaration (see :mod:`aghmn_fast.ops.spec`): raw ops
``window_gru_forward`` / ``window_gru_backward`` and the public functions ``window_gru`` and
``memory_bank`` (the window GRU plus the input projections and a residual)."""
from __future__ import annotations

import importlib

from ..spec import Function, OpSpec, recurrence_shared_bytes
from .autograd import (memory_bank_fused, register_window_gru_autograd, register_window_gru_fakes,
                       window_gru_backward_output_shapes, window_gru_forward_output_shapes,
                       window_gru_fused)
from .reference import memory_bank_ref, window_gru_ref


def _load_triton():
    from .triton import triton_window_gru_backward, triton_window_gru_forward
    return {"window_gru_forward": triton_window_gru_forward,
            "window_gru_backward": triton_window_gru_backward}


SPEC = OpSpec(
    name="window_gru",
    raw_ops=("window_gru_forward", "window_gru_backward"),
    functions=(
        Function("memory_bank", memory_bank_ref, memory_bank_fused,
                 lambda u, windows, flat: (u, u.shape[1], windows.shape[1])),
        Function("window_gru", window_gru_ref, window_gru_fused,
                 lambda proj, pad, w_hh, b_hh, windows: (proj, w_hh.shape[-1], windows.shape[-1])),
    ),
    register_autograd=lambda k: register_window_gru_autograd(k.window_gru_forward,
                                                             k.window_gru_backward),
    register_fakes=lambda k: register_window_gru_fakes(k.window_gru_forward, k.window_gru_backward),
    load_triton=_load_triton,
    triton_compile=lambda: importlib.import_module(".triton", __package__).COMPILE_TARGETS,
    # three gate blocks; the forward also stages the window's K slot indices (int32)
    min_shared_bytes=lambda hidden, steps, itemsize: recurrence_shared_bytes(
        3, hidden, itemsize, forward_extra=4 * steps),
    output_shapes={"window_gru_forward": window_gru_forward_output_shapes,
                   "window_gru_backward": window_gru_backward_output_shapes},
)
