"""Distillation targets: the averaged, tempered probabilities of teacher checkpoints.

A teacher is any checkpoint of this package (another seed, another reader) or a contextual
teacher (``aghmn-fast train-teacher``, :mod:`aghmn_fast.training.contextual_teacher`);
:func:`teacher_targets` gives :func:`aghmn_fast.training.trainer.train` its ``soft_targets``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..data import Dialogue
from ..models.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from .contextual_teacher import CONTEXTUAL_FORMAT, checkpoint_format, contextual_log_probs
from .trainer import check_distillation_options, check_labels, encode_dialogues, predict


def teacher_log_probs(path: str, dialogues: Sequence[Dialogue], label_names: Sequence[str]) -> torch.Tensor:
    """A teacher's log-probabilities [total utterances, C] over the dialogues, in eval mode.

    The one place that dispatches on what the checkpoint is: an ordinary checkpoint of this
    package (any reader, read with its own vocabulary) or a contextual teacher
    (:mod:`aghmn_fast.training.contextual_teacher`, whose predictions are cached on disk per checkpoint
    and dialogues). Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file
    that is neither, or a teacher whose labels differ from ``label_names``.
    """
    kind = checkpoint_format(path)
    if kind == CONTEXTUAL_FORMAT:
        return contextual_log_probs(path, dialogues, label_names)
    if kind != CHECKPOINT_FORMAT:
        raise ValueError(f"teacher {path} is neither an aghmn_fast checkpoint ({CHECKPOINT_FORMAT}) "
                         f"nor a contextual teacher ({CONTEXTUAL_FORMAT})")
    model, vocab, labels, _ = load_checkpoint(path)
    check_labels(path, labels, label_names, "teacher")
    return predict(model, encode_dialogues(dialogues, vocab, model.config.max_len, model))


def teacher_targets(teacher_paths: Sequence[str], dialogues: Sequence[Dialogue],
                    label_names: Sequence[str], temperature: float,
                    weights: Optional[Sequence[float]] = None) -> List[torch.Tensor]:
    """Per dialogue, the teachers' averaged probabilities at ``temperature`` ([utterances, C]).

    Each teacher is any checkpoint of this package (another seed, another reader) or a contextual
    teacher (``aghmn-fast train-teacher``) over the same labels (:func:`teacher_log_probs`).
    ``weights``: one non-negative weight per teacher for the average (default: equal). Raises
    ``ValueError`` for no teachers, a non-positive or non-finite temperature, bad weights, or a
    teacher whose labels differ; ``FileNotFoundError`` for a missing checkpoint.
    """
    if not teacher_paths:
        raise ValueError("teacher_paths is empty: give at least one teacher checkpoint")
    check_distillation_options(temperature, 0.0)
    weights = check_teacher_weights(weights, len(teacher_paths))
    total = None
    for path, weight in zip(teacher_paths, weights):
        log_probs = teacher_log_probs(path, dialogues, label_names)
        probs = weight * torch.softmax(log_probs.double() / temperature, dim=-1)  # logits up to a constant
        total = probs if total is None else total + probs
    mean = (total / sum(weights)).float()
    return list(torch.split(mean, [len(d.texts) for d in dialogues]))


def check_teacher_weights(weights: Optional[Sequence[float]], count: int) -> List[float]:
    """The teachers' averaging weights as floats (all 1 when ``weights`` is None); ``ValueError``
    naming --teacher-weight unless there is one finite weight >= 0 per teacher, not all 0."""
    if weights is None:
        return [1.0] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise ValueError(f"--teacher-weight must be given once per --teacher: {len(weights)} "
                         f"weight(s) for {count} teacher(s)")
    if not all(0 <= w < float("inf") for w in weights) or sum(weights) == 0:
        raise ValueError(f"--teacher-weight values must be finite, >= 0 and not all 0, got {weights}")
    return weights
