"""The torch recognizer of the server (``aghmn_runtime.serving``): its plug-in module.

The serving code lives in the torch-free ``aghmn-fast-runtime`` distribution and serves
``.aghmn`` model files on the native runtime. When it is given a checkpoint of ``aghmn-fast
train`` (or several: an ensemble) it imports this module, by name
(``aghmn_runtime.serving.recognizers.TORCH_PLUGIN``), and loads the checkpoint here, with torch.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union


def load_recognizer(checkpoint: Union[str, Sequence[str]], backend: Optional[str] = None, threads: int = 1,
                    precision: str = "fp32", projection_cache: bool = True):
    """The :class:`~aghmn_fast.streaming.StreamingRecognizer` of a checkpoint, or the
    :class:`~aghmn_fast.streaming.EnsembleRecognizer` of a list of them, computing on
    ``threads`` torch threads with op backend ``backend`` (None: the fastest available), its
    weights and ring store stored in ``precision`` ("fp32" or "bf16"; an ensemble: fp32 only),
    its ring store with or without the fusion projections (``projection_cache``; an ensemble:
    with them)."""
    import torch

    from .streaming import recognizer_from_checkpoints
    torch.set_num_threads(threads)
    paths = [checkpoint] if isinstance(checkpoint, str) else list(checkpoint)
    return recognizer_from_checkpoints(paths, backend=backend, precision=precision, projection_cache=projection_cache)
