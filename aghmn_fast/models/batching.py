"""Turning dialogues into model inputs: padded token ids, and the memory windows of every query."""
from __future__ import annotations

import dataclasses
from typing import List, Sequence

import torch
from torch import Tensor


@dataclasses.dataclass
class Batch:
    """A batch of whole dialogues, utterances flattened in dialogue order.

    tokens [N, L] int64 (0 = <pad>), lengths [N] int64 (>= 1), windows [Q, K] int64 global
    utterance indices (-1 = empty slot), query_index [Q] int64 (the utterance each window serves:
    every utterance that is not the first of its dialogue), labels [N] int64 or None,
    dialogue_sizes: utterances per dialogue, features [N, F] float (the frozen sentence vectors
    of a sentence reader; then tokens are a placeholder [N, 1] of ones) or None.
    """
    tokens: Tensor
    lengths: Tensor
    windows: Tensor
    query_index: Tensor
    labels: Tensor | None
    dialogue_sizes: List[int]
    features: Tensor | None = None

    def to(self, device) -> "Batch":
        """The same batch with its tensors on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(move(self.tokens), move(self.lengths), move(self.windows),
                     move(self.query_index), move(self.labels), list(self.dialogue_sizes),
                     move(self.features))


def dialogue_windows(sizes: Sequence[int], window: int) -> tuple[Tensor, Tensor]:
    """Memory windows for dialogues of the given sizes, flattened.

    Query t >= 1 of a dialogue sees utterances t-K .. t-1 (clipped at 0), left-padded with -1 to K
    slots, the most recent at slot K-1. Utterance 0 of each dialogue has no window.
    Returns (windows [Q, K], query_index [Q]) with global utterance indices.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    rows, queries, offset = [], [], 0
    for n in sizes:
        if n < 1:
            raise ValueError("a dialogue has no utterances (empty dialogue)")
        for t in range(1, n):
            lo = max(0, t - window)
            idx = list(range(offset + lo, offset + t))
            rows.append([-1] * (window - len(idx)) + idx)
            queries.append(offset + t)
        offset += n
    windows = torch.tensor(rows, dtype=torch.int64).reshape(-1, window)
    return windows, torch.tensor(queries, dtype=torch.int64)


def pad_token_ids(token_ids: Sequence[Sequence[int]], max_len: int) -> tuple[Tensor, Tensor]:
    """Pad id lists to the longest (at most ``max_len``) with 0; an empty list becomes one <unk>."""
    ids = [list(t[:max_len]) if len(t) else [1] for t in token_ids]
    L = max(len(t) for t in ids)
    tokens = torch.zeros(len(ids), L, dtype=torch.int64)
    for i, t in enumerate(ids):
        tokens[i, :len(t)] = torch.tensor(t, dtype=torch.int64)
    return tokens, torch.tensor([len(t) for t in ids], dtype=torch.int64)


def make_batch(dialogues_token_ids: Sequence[Sequence[Sequence[int]]], window: int,
               labels: Sequence[Sequence[int]] | None = None, max_len: int = 60) -> Batch:
    """Build a :class:`Batch` from dialogues given as lists of utterance token-id lists, or as
    lists of per-utterance sentence vectors (1-d tensors, for a sentence reader)."""
    sizes = [len(d) for d in dialogues_token_ids]
    if not sizes:
        raise ValueError("no dialogues given")
    flat = [u for d in dialogues_token_ids for u in d]
    windows, query_index = dialogue_windows(sizes, window)
    features = None
    if isinstance(flat[0], Tensor):
        if not all(isinstance(u, Tensor) and u.shape == flat[0].shape for u in flat) or flat[0].dim() != 1:
            raise ValueError("sentence vectors must all be 1-d tensors of one size")
        features = torch.stack(flat)
        tokens = torch.ones(len(flat), 1, dtype=torch.int64)
        lengths = torch.ones(len(flat), dtype=torch.int64)
    else:
        tokens, lengths = pad_token_ids(flat, max_len)
    y = None
    if labels is not None:
        y = torch.tensor([l for d in labels for l in d], dtype=torch.int64)
        if y.numel() != len(flat):
            raise ValueError(f"labels give {y.numel()} utterances but the dialogues have {len(flat)}")
    return Batch(tokens, lengths, windows, query_index, y, sizes, features)
