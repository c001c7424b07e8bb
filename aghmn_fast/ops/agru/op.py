"""The AGRU op folder's declaration (see :mod:`aghmn_fast.ops.spec`): raw ops ``agru_forward`` /
``agru_backward`` and the public function ``agru``."""
from __future__ import annotations

import importlib

from ..spec import Function, OpSpec, recurrence_shared_bytes
from .autograd import (agru_backward_output_shapes, agru_forward_output_shapes, agru_fused,
                       register_agru_autograd, register_agru_fakes)
from .reference import agru_ref


def _load_triton():
    from .triton import triton_agru_backward, triton_agru_forward
    return {"agru_forward": triton_agru_forward, "agru_backward": triton_agru_backward}


SPEC = OpSpec(
    name="agru",
    raw_ops=("agru_forward", "agru_backward"),
    functions=(Function("agru", agru_ref, agru_fused,
                        lambda x, attn, w_ih, w_hh, *rest: (x, w_hh.shape[1], x.shape[1])),),
    register_autograd=lambda k: register_agru_autograd(k.agru_forward, k.agru_backward),
    register_fakes=lambda k: register_agru_fakes(k.agru_forward, k.agru_backward),
    load_triton=_load_triton,
    triton_compile=lambda: importlib.import_module(".triton", __package__).COMPILE_TARGETS,
    # two gate blocks (r, z) read from weight_hh per step; the attention replaces the update gate
    min_shared_bytes=lambda hidden, steps, itemsize: recurrence_shared_bytes(2, hidden, itemsize),
    output_shapes={"agru_forward": agru_forward_output_shapes,
                   "agru_backward": agru_backward_output_shapes},
)
