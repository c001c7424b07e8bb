"""An opt-in ensemble of streaming recognizers: several checkpoints of the same window K, their
class probabilities averaged per utterance (issue 21).

Each member is an ordinary :class:`~aghmn_fast.streaming.StreamingRecognizer` with its own ring
store, computing its push on its fastest path; the ensemble pushes every utterance through every
member and averages the probabilities, so its answer equals the offline ensemble's (the mean of
the members' offline probabilities) as each member's equals its own offline model's. It costs
N pushes per utterance: an accuracy-first option for deployments that can afford N times the
work (the cost is measured in docs/RESULTS.md).
"""
from __future__ import annotations

import time
from typing import Hashable, Iterable, List, Optional, Sequence, Tuple

from .recognizer import Prediction, StreamingRecognizer


class EnsembleRecognizer:
    """Streams conversations through several recognizers and averages their probabilities.

    Args:
        members: two or more recognizers over the same labels (in the same order) and the same
            window K (a conversation is rebuilt from its last K utterances, by the server too).

    The public API is the streaming part of :class:`StreamingRecognizer`'s: ``push``,
    ``push_many``, ``close``, ``conversations``, ``utterances_seen``, ``window``,
    ``label_names``, ``mode``. Stream-state files (``save_state``) are per member and are not
    offered for an ensemble. Not thread-safe, like its members.
    """

    def __init__(self, members: Sequence[StreamingRecognizer]):
        members = list(members)
        if len(members) < 2 or not all(isinstance(m, StreamingRecognizer) for m in members):
            raise ValueError("an ensemble needs two or more StreamingRecognizer members, got "
                             f"{len(members)}")
        first = members[0]
        for i, m in enumerate(members[1:], 1):
            if m.label_names != first.label_names:
                raise ValueError(f"member {i} predicts {m.label_names}, member 0 "
                                 f"{first.label_names}: an ensemble needs the same labels")
            if m.window != first.window:
                raise ValueError(f"member {i} has window K = {m.window}, member 0 K = "
                                 f"{first.window}: an ensemble needs one window")
        self.members = members
        self.window = first.window
        self.label_names = list(first.label_names)

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str], device=None,
                         backend: Optional[str] = None) -> "EnsembleRecognizer":
        """An ensemble of the checkpoints at ``paths`` (each loaded as
        :meth:`StreamingRecognizer.from_checkpoint` does; the same errors)."""
        return cls([StreamingRecognizer.from_checkpoint(p, device=device, backend=backend)
                    for p in paths])

    @property
    def mode(self) -> str:
        """The members' compute modes (e.g. ``"push"``), comma-separated where they differ."""
        modes = [m.mode for m in self.members]
        return modes[0] if len(set(modes)) == 1 else ",".join(modes)

    @property
    def conversations(self) -> List[Hashable]:
        """Ids of the open conversations."""
        return self.members[0].conversations

    def utterances_seen(self, conversation_id: Hashable) -> int:
        """How many utterances of the conversation were pushed (0 if unknown)."""
        return self.members[0].utterances_seen(conversation_id)

    @property
    def bytes_per_conversation(self) -> int:
        """Bytes of state one open conversation holds: every member's."""
        return sum(m.bytes_per_conversation for m in self.members)

    @property
    def store_bytes(self) -> int:
        """Bytes the members' ring stores hold now."""
        return sum(m.store_bytes for m in self.members)

    def push(self, conversation_id: Hashable, utterance_text: str) -> Prediction:
        """Classify the next utterance of a conversation with every member, probabilities averaged."""
        return self.push_many([(conversation_id, utterance_text)])[0]

    def push_many(self, items: Iterable[Tuple[Hashable, str]]) -> List[Prediction]:
        """As :meth:`StreamingRecognizer.push_many`, probabilities averaged over the members.

        The first member validates the whole batch before any member's state changes (the
        members validate alike), so bad input leaves every member untouched.
        """
        start = time.perf_counter()
        items = list(items)
        answers = [m.push_many(items) for m in self.members]
        n = len(self.members)
        out = []
        for per_member in zip(*answers):
            first = per_member[0]
            probs = [sum(p.probabilities[name] for p in per_member) / n for name in self.label_names]
            best = max(range(len(probs)), key=probs.__getitem__)
            out.append(Prediction(first.conversation_id, first.index, self.label_names[best], best,
                                  dict(zip(self.label_names, probs)), 0.0))
        latency = (time.perf_counter() - start) * 1e3
        for p in out:
            p.latency_ms = latency
        return out

    def close(self, conversation_id: Hashable) -> None:
        """Forget a conversation in every member. Unknown ids raise ``KeyError``."""
        if self.members[0].utterances_seen(conversation_id) == 0:
            raise KeyError(f"unknown conversation_id {conversation_id!r}")
        for m in self.members:
            m.close(conversation_id)


def recognizer_from_checkpoints(paths, device=None, backend: Optional[str] = None, precision: str = "fp32",
                                projection_cache: bool = True):
    """A :class:`StreamingRecognizer` for one checkpoint path (or a list of one), an
    :class:`EnsembleRecognizer` averaging them for a list of two or more (opt-in: N times the work
    per push). ``precision`` and ``projection_cache`` as in
    :meth:`StreamingRecognizer.from_checkpoint`; an ensemble runs in fp32 with the projection
    cache. Errors as :meth:`StreamingRecognizer.from_checkpoint`, and, for an ensemble,
    ``ValueError`` for members of different labels or windows, or for another precision or no
    projection cache."""
    if isinstance(paths, (list, tuple)):
        if not paths:
            raise ValueError("paths is empty: give at least one checkpoint")
        if len(paths) > 1:
            if precision != "fp32":
                raise ValueError(f"precision {precision!r}: an ensemble runs in fp32 only")
            if projection_cache is not True:
                raise ValueError("projection_cache=False: an ensemble keeps the projection cache "
                                 "(give one checkpoint, or keep the cache)")
            return EnsembleRecognizer.from_checkpoints(paths, device=device, backend=backend)
        paths = paths[0]
    return StreamingRecognizer.from_checkpoint(paths, device=device, backend=backend, precision=precision,
                                               projection_cache=projection_cache)
