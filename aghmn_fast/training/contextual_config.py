"""The contextual teacher's options (:class:`ContextualConfig`), without torch.

``aghmn-fast train-teacher`` builds its parser from these defaults, and the CLI's parser must
build without importing torch; the training itself is :mod:`aghmn_fast.training.contextual_teacher`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

MAX_POSITIONS = 512  # MiniLM's position table


@dataclasses.dataclass
class ContextualConfig:
    """Options of :func:`train_contextual_teacher` (the first three are also the model's)."""
    context: int = 8            # previous utterances read with the target (0: the target alone)
    max_tokens: int = 128       # tokens per sequence, [CLS] and [SEP]s included
    dropout: float = 0.1
    epochs: int = 4
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1         # fraction of the steps with a linearly rising lr
    batch_size: int = 16        # utterances per step
    clip: float = 1.0
    class_weight_rate: float = 0.5
    seed: int = 1
    progress: bool = True
    init: Optional[str] = None  # start from this contextual teacher (file name recorded) instead of MiniLM


def check_config(config: ContextualConfig) -> None:
    """``ValueError`` naming the option for a value out of range."""
    if not (isinstance(config.context, int) and config.context >= 0):
        raise ValueError(f"--context must be an integer >= 0, got {config.context!r}")
    if not (isinstance(config.max_tokens, int) and 8 <= config.max_tokens <= MAX_POSITIONS):
        raise ValueError(f"--max-tokens must be an integer in [8, {MAX_POSITIONS}], got {config.max_tokens!r}")
    if not (isinstance(config.epochs, int) and config.epochs >= 1):
        raise ValueError(f"--epochs must be a positive integer, got {config.epochs!r}")
    if not (0 < config.lr < 1):
        raise ValueError(f"--lr must be in (0, 1), got {config.lr}")
    if not (isinstance(config.batch_size, int) and config.batch_size >= 1):
        raise ValueError(f"--batch-size must be a positive integer, got {config.batch_size!r}")
    for name in ("dropout", "warmup"):
        value = getattr(config, name)
        if not 0 <= value < 1:
            raise ValueError(f"--{name} must be in [0, 1), got {value}")
