"""The serving engine: one :class:`~aghmn_fast.streaming.StreamingRecognizer`, a durable store,
and the bookkeeping between them (true utterance indexes, rebuilds, capacity, idle expiry).

Why a conversation can be rebuilt exactly: the recognizer's prediction for an utterance depends
only on the last K utterance texts of its conversation (the memory window starts from zero
states), so pushing a conversation's last (up to) K stored texts into a recognizer recreates the
state the next utterance needs (``tests/test_serving_engine.py`` checks this against an
uninterrupted run). The recognizer's own counter restarts at the rebuild, so the engine keeps each
conversation's true index itself.

The engine is synchronous and not thread-safe, like the recognizer: the server calls it from one
worker thread (:class:`~aghmn_fast.serving.batcher.MicroBatcher`).
"""
from __future__ import annotations

import collections
import logging
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .recognizers import Recognizer
from .store import ConversationStore, StoreConflict

log = logging.getLogger("aghmn_fast.serving")

CONVERSATION_ID = re.compile(r"^[A-Za-z0-9._:@~-]{1,128}$")


class ServingError(Exception):
    """A request the engine refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_conversation_id(cid) -> str:
    """The id if it is 1-128 characters of ``[A-Za-z0-9._:@~-]``; else ServingError(400)."""
    if not isinstance(cid, str) or not CONVERSATION_ID.match(cid):
        raise ServingError(400, "conversation id must be 1-128 characters of A-Z a-z 0-9 . _ : @ ~ -")
    return cid


def check_text(text, max_chars: int) -> str:
    """The text if it is a non-blank str of at most ``max_chars`` characters; else ServingError."""
    if not isinstance(text, str):
        raise ServingError(422, "'text' must be a string")
    if not text.strip():
        raise ServingError(422, "'text' is empty or whitespace only")
    if len(text) > max_chars:
        raise ServingError(413, f"'text' is longer than {max_chars} characters")
    return text


def check_index(index) -> Optional[int]:
    """The optional expected utterance index: None or an int >= 0; else ServingError(422)."""
    if index is None or (isinstance(index, int) and not isinstance(index, bool) and index >= 0):
        return index
    raise ServingError(422, "'index' must be an integer >= 0 (the utterance's expected index)")


Result = Union[dict, ServingError]


class ConversationEngine:
    """Serves utterances of many conversations through one recognizer, durably.

    Args:
        recognizer: the recognizer this engine owns (nothing else may use it).
        store: where the last K texts of each conversation live (see :mod:`.store`).
        max_conversations: the bound on conversations held in memory; a new conversation beyond
            it is refused with status 429. (With a shared store a conversation being rebuilt may
            instead evict the least recently used copy: it stays in the store.)
        ttl_seconds: idle expiry: :meth:`expire` forgets conversations idle for longer
            (None: never).
        stats: an optional object whose ``record(hits, rebuilds, new)`` is called after each
            batch with how many conversations were served from memory, rebuilt from the store,
            and opened (the server's Prometheus metrics).
    """

    def __init__(self, recognizer: Recognizer, store: ConversationStore,
                 max_conversations: int = 100_000, ttl_seconds: Optional[float] = None, stats=None):
        if max_conversations < 1:
            raise ValueError(f"max_conversations must be >= 1, got {max_conversations}")
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds}")
        self.recognizer = recognizer
        self.store = store
        self.window = recognizer.window
        self.max_conversations = max_conversations
        self.ttl_seconds = ttl_seconds
        self.stats = stats
        self._count: Dict[str, int] = {}                 # in memory: true utterances seen
        self._used: "collections.OrderedDict[str, float]" = collections.OrderedDict()  # LRU order
        self.hits = self.rebuilds = self.new_conversations = self.replays = 0

    # ---- public --------------------------------------------------------------------------------
    @property
    def live(self) -> int:
        """Conversations held in memory."""
        return len(self._count)

    def restore(self, chunk: int = 512) -> int:
        """Rebuild every stored conversation in memory (embedded store, on start); returns how many.

        A shared store is not restored eagerly: its conversations are rebuilt when they are used.
        """
        if self.store.shared:
            return 0
        if self.ttl_seconds is not None:
            self.store.expire(self.ttl_seconds)
        ids = self.store.ids()
        if len(ids) > self.max_conversations:
            raise ValueError(f"the state store holds {len(ids)} conversations, more than "
                             f"--max-conversations {self.max_conversations}")
        for start in range(0, len(ids), chunk):
            stored = self.store.load(ids[start:start + chunk])
            self._rebuild(stored)
        return len(ids)

    def process(self, items: Sequence[Tuple], _retry: bool = True) -> List[Result]:
        """Classify a batch of (conversation id, text[, expected index]); one result per item.

        A result is a dict (``id``, ``index``, ``label``, ``probabilities``, ``rebuilt``) or a
        :class:`ServingError` for that item alone; the other items are served.

        An expected index makes retries safe: if it is the conversation's next index the
        utterance is served as usual; if it is the index of the conversation's last utterance
        and the text is the same (a retry whose first answer was lost), that answer is computed
        again, exactly, without storing anything (``"replayed": true``); otherwise the item is
        refused with 409.
        """
        results: List[Optional[Result]] = [None] * len(items)
        stored = self._load([item[0] for item in items])
        accepted: List[int] = []
        replays: List[int] = []
        rebuild: Dict[str, Tuple[int, List[str]]] = {}
        admitted_new = set()
        next_index: Dict[str, int] = {}
        for i, item in enumerate(items):
            cid = item[0]
            expected = item[2] if len(item) > 2 else None
            first = cid not in next_index
            if first:
                next_index[cid] = self._count[cid] if cid in self._count else stored.get(cid, (0,))[0]
            if expected is not None and expected != next_index[cid]:
                if first and expected == next_index[cid] - 1:
                    replays.append(i)
                else:
                    results[i] = ServingError(409, f"conversation {cid} is at utterance index "
                                                   f"{next_index[cid]}, not {expected}")
                continue
            if cid in self._count or cid in rebuild or cid in admitted_new:
                accepted.append(i)
            elif cid in stored:
                self._make_room(len(rebuild) + len(admitted_new))
                rebuild[cid] = stored[cid]
                accepted.append(i)
            elif self.live + len(rebuild) + len(admitted_new) < self.max_conversations:
                admitted_new.add(cid)
                accepted.append(i)
            else:
                results[i] = ServingError(429, f"too many live conversations (limit "
                                               f"{self.max_conversations}); retry later or close some")
                continue
            next_index[cid] += 1
        for i in replays:
            results[i] = self._replay(items[i][0], items[i][1], items[i][2])
        if not accepted:
            return results
        batch = [(items[i][0], items[i][1]) for i in accepted]
        involved = {cid for cid, _ in batch}
        K = self.window
        try:
            replay = [(cid, text) for cid, (_, texts) in rebuild.items() for text in texts[-K:]]
            predictions = self.recognizer.push_many(replay + batch)[len(replay):]
        except Exception:
            self._forget(involved)   # the recognizer may be part-way: rebuild from the store later
            raise
        for cid, (count, _) in rebuild.items():
            self._count[cid] = count
        appends = []
        for i, (cid, text), p in zip(accepted, batch, predictions):
            index = self._count.get(cid, 0)
            self._count[cid] = index + 1
            appends.append((cid, index, text))
            out = p.to_dict()
            out.pop("latency_ms", None)
            out.update(index=index, rebuilt=cid in rebuild)
            results[i] = out
        try:
            self.store.append(appends)
        except StoreConflict as conflict:
            # Another replica wrote some of these conversations: nothing of the batch was stored.
            # Drop the in-memory copies, refuse the conflicting items, serve the rest again.
            self._forget(involved)
            bad = set(conflict.conversation_ids)
            log.warning("store conflict on %d conversation(s); rebuilding them", len(bad))
            rest = [i for i in accepted if items[i][0] not in bad]
            for i in accepted:
                if items[i][0] in bad:
                    results[i] = ServingError(409, f"conversation {items[i][0]} was updated "
                                                   "elsewhere meanwhile; retry")
            if rest and _retry:
                for i, r in zip(rest, self.process([items[i] for i in rest], _retry=False)):
                    results[i] = r
            else:
                for i in rest:
                    results[i] = ServingError(409, "store conflict; retry")
            return results
        except Exception as exc:
            self._forget(involved)   # memory is ahead of the store: never acknowledge that
            log.error("state store failed: %s", exc)
            err = ServingError(503, f"state store unavailable: {exc}")
            for i in accepted:
                results[i] = err
            return results
        now = time.monotonic()
        for cid in involved:
            self._used[cid] = now
            self._used.move_to_end(cid)
        n_new = len(admitted_new)
        hits = len(involved) - n_new - len(rebuild)
        self.hits += hits
        self.rebuilds += len(rebuild)
        self.new_conversations += n_new
        if self.stats is not None:
            self.stats.record(hits, len(rebuild), n_new)
        return results

    def delete(self, cid: str) -> bool:
        """Forget a conversation in memory and in the store; True if it existed."""
        in_memory = cid in self._count
        self._forget([cid])
        return self.store.delete(cid) or in_memory

    def expire(self) -> int:
        """Forget conversations idle for longer than the TTL; returns how many left memory."""
        if self.ttl_seconds is None:
            return 0
        cutoff = time.monotonic() - self.ttl_seconds
        idle = []
        for cid, used in self._used.items():   # oldest first
            if used >= cutoff:
                break
            idle.append(cid)
        self._forget(idle)
        if not self.store.shared:
            self.store.expire(self.ttl_seconds)   # a shared store expires keys itself
        return len(idle)

    def close(self) -> None:
        """Release the store (every acknowledged utterance is already in it)."""
        self.store.close()

    # ---- internals -----------------------------------------------------------------------------
    def _load(self, cids: Sequence[str]) -> Dict[str, Tuple[int, List[str]]]:
        """Stored state of the conversations that must be (re)built from the store."""
        unique = list(dict.fromkeys(cids))
        if not self.store.shared:
            return self.store.load([c for c in unique if c not in self._count])
        # Another replica may have served a conversation since this copy was made: trust the
        # in-memory copy only if its count is the stored one.
        stored = self.store.load(unique)
        stale = [c for c in unique if c in self._count and stored.get(c, (0,))[0] != self._count[c]]
        self._forget(stale)
        return {c: v for c, v in stored.items() if c not in self._count}

    def _replay(self, cid: str, text: str, index: int) -> Result:
        """The answer to utterance ``index`` (the conversation's last) computed again from the
        stored texts: the K before it and itself (the store keeps K + 1)."""
        stored = self.store.load([cid]).get(cid)
        if stored is None or stored[0] != index + 1 or stored[1][-1] != text:
            return ServingError(409, f"utterance {index} of conversation {cid} is not this text; "
                                     "cannot replay it")
        scratch = ("replay", cid)   # a tuple: never one of the str ids of real conversations
        try:
            predictions = self.recognizer.push_many(
                [(scratch, t) for t in stored[1][:-1][-self.window:]] + [(scratch, text)])
        finally:
            try:
                self.recognizer.close(scratch)
            except KeyError:
                pass
        out = predictions[-1].to_dict()
        out.pop("latency_ms", None)
        out.update(id=cid, index=index, rebuilt=True, replayed=True)
        self.replays += 1
        return out

    def _rebuild(self, stored: Dict[str, Tuple[int, List[str]]]) -> None:
        replay = [(cid, text) for cid, (_, texts) in stored.items() for text in texts[-self.window:]]
        try:
            self.recognizer.push_many(replay)
        except Exception:
            self._forget(stored)
            raise
        now = time.monotonic()
        for cid, (count, _) in stored.items():
            self._count[cid] = count
            self._used[cid] = now
            self._used.move_to_end(cid)

    def _make_room(self, pending: int) -> None:
        # Rebuilding a stored conversation is never refused while the store is shared: the least
        # recently used in-memory copy makes room (it stays in the store).
        while self.store.shared and self._used and self.live + pending >= self.max_conversations:
            self._forget([next(iter(self._used))])

    def _forget(self, cids) -> None:
        for cid in list(cids):
            self._count.pop(cid, None)
            self._used.pop(cid, None)
            try:   # also a conversation a failed push may have opened before its count was kept
                self.recognizer.close(cid)
            except KeyError:
                pass
