"""The serving engine: one :class:`~aghmn_fast.streaming.StreamingRecognizer`, a durable store,
and the bookkeeping between them (true utterance indexes, rebuilds, capacity, idle expiry).

Why a conversation can be rebuilt exactly: the recognizer's prediction for an utterance depends
only on the last K utterance texts of its conversation (the memory window starts from zero
states), so pushing a conversation's last (up to) K stored texts into a recognizer recreates the
state the next utterance needs (``tests/test_serving_engine.py`` checks this against an
uninterrupted run). The recognizer's own counter restarts at the rebuild, so the engine keeps each
conversation's true index itself.

The engine is synchronous and not thread-safe, like the recognizer: the server calls it from one
worker thread (:class:`~aghmn_runtime.serving.batcher.MicroBatcher`).
"""
from __future__ import annotations

import collections
import itertools
import logging
import re
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from .recognizers import Recognizer
from .store import ConversationStore, StoreConflict

log = logging.getLogger("aghmn_runtime.serving")

# matched with fullmatch: ``$`` would also match before a final newline ("abc\n")
CONVERSATION_ID = re.compile(r"[A-Za-z0-9._:@~-]{1,128}")


class ServingError(Exception):
    """A request the engine refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_conversation_id(cid) -> str:
    """The id if it is 1-128 characters of ``[A-Za-z0-9._:@~-]``; else ServingError(400)."""
    if not isinstance(cid, str) or not CONVERSATION_ID.fullmatch(cid):
        raise ServingError(400, "conversation id must be 1-128 characters of A-Z a-z 0-9 . _ : @ ~ -")
    return cid


def check_text(text, max_chars: int) -> str:
    """The text if it is a non-blank str of at most ``max_chars`` Unicode scalar values; else
    ServingError (a lone surrogate such as JSON's ``"\\ud800"`` is not one: 422)."""
    if not isinstance(text, str):
        raise ServingError(422, "'text' must be a string")
    if not text.strip():
        raise ServingError(422, "'text' is empty or whitespace only")
    if len(text) > max_chars:
        raise ServingError(413, f"'text' is longer than {max_chars} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ServingError(422, f"'text' is not valid Unicode (a lone surrogate at character {exc.start})") from None
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
        store: where the last K + 1 texts of each conversation live (see :mod:`.store`).
        max_conversations: the bound on conversations: a new conversation beyond it is refused
            with status 429 (the embedded stores count every stored conversation, a shared store
            the ones in memory), and never more than this many are held in memory (a stored
            conversation being rebuilt evicts the least recently used in-memory copy, which
            stays in the store).
        ttl_seconds: idle expiry: :meth:`expire` forgets conversations idle for longer
            (None: never).
        max_live: the most conversations held in memory, when fewer than ``max_conversations``
            (the server derives it from its memory budget, ``--max-memory``): beyond it the least
            recently used in-memory copy is evicted (it stays in the store and is rebuilt when
            used again). None: ``max_conversations``.
        stats: an optional object whose ``record(hits, rebuilds, new)`` is called after each
            batch with how many conversations were served from memory, rebuilt from the store,
            and opened (the server's Prometheus metrics).
        clock: the time of each conversation's last use, which :meth:`expire` compares for a
            shared store (an embedded store keeps its own times, on its own ``clock``).
    """

    def __init__(self, recognizer: Recognizer, store: ConversationStore,
                 max_conversations: int = 20_000, ttl_seconds: Optional[float] = None, stats=None,
                 max_live: Optional[int] = None, clock: Callable[[], float] = time.time):
        if max_conversations < 1:
            raise ValueError(f"max_conversations must be >= 1, got {max_conversations}")
        if max_live is not None and max_live < 1:
            raise ValueError(f"max_live must be >= 1, got {max_live}")
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds}")
        self.recognizer = recognizer
        self.store = store
        self.window = recognizer.window
        self.max_conversations = max_conversations
        # the bound on conversations in memory
        self.memory_cap = max_conversations if max_live is None else min(max_conversations, max_live)
        self.ttl_seconds = ttl_seconds
        self.stats = stats
        self.clock = clock
        self._count: Dict[str, int] = {}                 # in memory: true utterances seen
        self._used: "collections.OrderedDict[str, float]" = collections.OrderedDict()  # LRU order
        # each in-memory conversation's last answer (index, hash of its text, answer): a retry of
        # it is a lookup, no cheaper to refuse than to serve. The text's hash, not the text: a
        # text may be 10,000 characters, and memory is budgeted per conversation (str hashes are
        # keyed per process: a client cannot make another text collide on purpose).
        self._last: Dict[str, Tuple[int, int, dict]] = {}
        self.hits = self.rebuilds = self.new_conversations = self.replays = 0

    # ---- public --------------------------------------------------------------------------------
    @property
    def live(self) -> int:
        """Conversations held in memory."""
        return len(self._count)

    def restore(self) -> int:
        """Prepare to serve the stored conversations (on start); returns how many are stored.

        Nothing is rebuilt here: a stored conversation is rebuilt when it is first used, so
        readiness after a restart does not depend on how many conversations are stored (and a
        store holding more than ``max_conversations`` is served: only new conversations wait).
        """
        if self.store.shared:
            return 0
        if self.ttl_seconds is not None:
            self.store.expire(self.ttl_seconds)
        return self.store.count()

    def process(self, items: Sequence[Tuple], _retry: bool = True) -> List[Result]:
        """Classify a batch of (conversation id, text[, expected index]); one result per item.

        A result is a dict (``id``, ``index``, ``label``, ``probabilities``, ``rebuilt``) or a
        :class:`ServingError` for that item alone; the other items are served. Failures are
        isolated per conversation: a store failure of one conversation fails only that
        conversation's items (503), and so does an exception of the recognizer (500, ``internal
        error: <type>``): the batch is then computed again one conversation at a time, each
        rebuilt from the store, and only the conversations whose own computation fails are
        refused (nothing of them is stored or counted; their next utterance rebuilds them).

        An expected index makes retries safe: if it is the conversation's next index the
        utterance is served as usual; if it is the index of the conversation's last utterance
        and the text is the same (a retry whose first answer was lost), that answer is given
        again, exactly, without storing anything (``"replayed": true``); otherwise the item is
        refused with 409.
        """
        results: List[Optional[Result]] = [None] * len(items)
        stored = self._load([item[0] for item in items], items, results)
        in_batch = {item[0] for item in items}
        accepted: List[int] = []
        replays: List[int] = []
        rebuild: Dict[str, Tuple[int, List[str]]] = {}
        admitted_new = set()
        next_index: Dict[str, int] = {}
        counted = self.store.count()   # None: a shared store, whose size is not this process's
        for i, item in enumerate(items):
            if results[i] is not None:   # its conversation could not be loaded
                continue
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
                if not self._make_room(len(rebuild) + len(admitted_new), in_batch):
                    results[i] = self._full(self.memory_cap)
                    continue
                rebuild[cid] = stored[cid]
                accepted.append(i)
            elif ((counted if counted is not None else self.live + len(rebuild)) + len(admitted_new)
                  < self.max_conversations):
                if not self._make_room(len(rebuild) + len(admitted_new), in_batch):
                    results[i] = self._full(self.memory_cap)
                    continue
                admitted_new.add(cid)
                accepted.append(i)
            else:
                results[i] = self._full(self.max_conversations)
                continue
            next_index[cid] += 1
        self._replay(replays, items, stored, results)
        if not accepted:
            return results
        batch = [(items[i][0], items[i][1]) for i in accepted]
        predictions, failed = self._push(rebuild, batch)
        for cid, (count, _) in rebuild.items():
            if cid not in failed:
                self._count[cid] = count
        appends = []
        for i, (cid, text), p in zip(accepted, batch, predictions):
            if cid in failed:
                results[i] = failed[cid]
                continue
            index = self._count.get(cid, 0)
            self._count[cid] = index + 1
            appends.append((cid, index, text))
            out = p.to_dict()
            out.pop("latency_ms", None)
            out.update(index=index, rebuilt=cid in rebuild)
            results[i] = out
        involved = {cid for cid, _ in batch} - set(failed)
        try:
            not_stored = self._store(appends)
        except StoreConflict as conflict:   # another writer: nothing of the batch was stored
            return self._after_conflict(conflict, items, accepted, involved, results, _retry)
        for cid, err in not_stored.items():
            for i in accepted:
                if items[i][0] == cid:
                    results[i] = err
        self._forget(not_stored)   # memory is ahead of the store for these: never acknowledge that
        now = self.clock()
        for i, (cid, text) in zip(accepted, batch):
            if cid in involved and cid not in not_stored:
                self._used[cid] = now
                self._used.move_to_end(cid)
                self._last[cid] = (results[i]["index"], hash(text), dict(results[i]))
        served = involved - set(not_stored)
        n_new = len(admitted_new & served)
        n_rebuilt = len(served & set(rebuild))
        hits = len(served) - n_new - n_rebuilt
        self.hits += hits
        self.rebuilds += n_rebuilt
        self.new_conversations += n_new
        if self.stats is not None:
            self.stats.record(hits, n_rebuilt, n_new)
        return results

    def delete(self, cid: str) -> bool:
        """Forget a conversation in memory and in the store; True if it existed."""
        in_memory = cid in self._count
        self._forget([cid])
        return self.store.delete(cid) or in_memory

    def expire(self) -> int:
        """Forget conversations idle for longer than the TTL; returns how many left memory.

        One clock: an embedded store expires by its stored activity times and memory forgets
        exactly what the store forgot (a conversation can never be in memory but not stored).
        """
        if self.ttl_seconds is None:
            return 0
        if not self.store.shared:
            gone = [c for c in self.store.expire(self.ttl_seconds) if c in self._count]
            self._forget(gone)
            return len(gone)
        cutoff = self.clock() - self.ttl_seconds   # a shared store expires keys itself
        idle = []
        for cid, used in self._used.items():   # oldest first
            if used >= cutoff:
                break
            idle.append(cid)
        self._forget(idle)
        return len(idle)

    def close(self) -> None:
        """Release the store (every acknowledged utterance is already in it)."""
        self.store.close()

    # ---- internals -----------------------------------------------------------------------------
    def _full(self, limit: int) -> ServingError:
        return ServingError(429, f"too many live conversations (limit {limit}); "
                                 "retry later or close some")

    def _push(self, rebuild: Dict[str, Tuple[int, List[str]]], batch: List[Tuple[str, str]]):
        """The recognizer's predictions for ``batch`` after replaying the stored texts of the
        conversations in ``rebuild``: (predictions in batch order, ``{conversation id: error}``
        for the conversations that failed; their predictions are None).

        One ``push_many`` for everything; if it raises, every conversation of the batch is
        forgotten (the recognizer may be part-way) and computed again alone, rebuilt from the
        store (the ones that were in memory join ``rebuild``), so that one conversation's
        failure fails only its own items."""
        K = self.window
        replay = [(cid, text) for cid, (_, texts) in rebuild.items() for text in texts[-K:]]
        try:
            return self.recognizer.push_many(replay + batch)[len(replay):], {}
        except Exception as exc:
            log.error("a batch of %d utterance(s) failed (%s: %s); computing its conversations one by one",
                      len(batch), type(exc).__name__, exc)
        involved = list(dict.fromkeys(cid for cid, _ in batch))
        self._forget(involved)
        failed: Dict[str, ServingError] = {}
        was_live = [cid for cid in involved if cid not in rebuild]   # and new ones: not stored
        if was_live:
            try:
                rebuild.update(self.store.load(was_live))
            except Exception as exc:   # the store too: these cannot be rebuilt now
                log.error("state store failed: %s", exc)
                failed.update((cid, _unavailable(exc)) for cid in was_live)
        positions: Dict[str, List[int]] = {}
        for j, (cid, _) in enumerate(batch):
            positions.setdefault(cid, []).append(j)
        predictions: List = [None] * len(batch)
        for cid in involved:
            if cid in failed:
                continue
            history = [(cid, text) for text in rebuild[cid][1][-K:]] if cid in rebuild else []
            try:
                out = self.recognizer.push_many(history + [batch[j] for j in positions[cid]])[len(history):]
            except Exception as exc:
                log.error("conversation %s failed: %s: %s", cid, type(exc).__name__, exc)
                self._forget([cid])
                failed[cid] = ServingError(500, f"internal error: {type(exc).__name__}")
                continue
            for j, p in zip(positions[cid], out):
                predictions[j] = p
        return predictions, failed

    def _store(self, appends: List[Tuple[str, int, str]]) -> Optional[Dict[str, ServingError]]:
        """Store the batch's appends: ``{conversation id: error}`` for the conversations that
        could not be stored (empty: all stored); StoreConflict if another writer changed some
        (then nothing was stored). One failing conversation never fails the others: after a
        failed batch each conversation is stored on its own."""
        try:
            self.store.append(appends)
            return {}
        except StoreConflict:
            raise
        except Exception as exc:
            if len({cid for cid, _, _ in appends}) == 1:
                log.error("state store failed: %s", exc)
                return {appends[0][0]: _unavailable(exc)}
        failed: Dict[str, ServingError] = {}
        for cid, group in _by_conversation(appends).items():
            try:
                self.store.append(group)
            except Exception as exc:   # a conflict here is another writer: refused like a failure
                log.error("state store failed for conversation %s: %s", cid, exc)
                failed[cid] = (ServingError(409, f"conversation {cid} was updated elsewhere meanwhile; retry")
                               if isinstance(exc, StoreConflict) else _unavailable(exc))
        return failed

    def _after_conflict(self, conflict: StoreConflict, items, accepted, involved, results,
                        retry: bool) -> List[Result]:
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
        if rest and retry:
            for i, r in zip(rest, self.process([items[i] for i in rest], _retry=False)):
                results[i] = r
        else:
            for i in rest:
                results[i] = ServingError(409, "store conflict; retry")
        return results

    def _load(self, cids: Sequence[str], items, results: List) -> Dict[str, Tuple[int, List[str]]]:
        """Stored state of the conversations that must be (re)built from the store. If the store
        fails, each conversation is loaded alone and the items of those that still fail are
        answered 503 in ``results``."""
        unique = list(dict.fromkeys(cids))
        try:
            return self._load_all(unique)
        except Exception as exc:
            log.error("state store failed loading %d conversation(s): %s", len(unique), exc)
        stored: Dict[str, Tuple[int, List[str]]] = {}
        for cid in unique:
            try:
                stored.update(self._load_all([cid]))
            except Exception as exc:
                err = _unavailable(exc)
                for i, item in enumerate(items):
                    if item[0] == cid:
                        results[i] = err
        return stored

    def _load_all(self, unique: List[str]) -> Dict[str, Tuple[int, List[str]]]:
        if not self.store.shared:
            return self.store.load([c for c in unique if c not in self._count])
        # Another replica may have served a conversation since this copy was made: trust the
        # in-memory copy only if its count is the stored one.
        stored = self.store.load(unique)
        stale = [c for c in unique if c in self._count and stored.get(c, (0,))[0] != self._count[c]]
        self._forget(stale)
        return {c: v for c, v in stored.items() if c not in self._count}

    def _replay(self, replays: List[int], items, stored, results: List) -> None:
        """Answer retries of conversations' last utterances: from memory when the conversation
        is there (a lookup), else computed again from the stored texts (the K before it and
        itself: the store keeps K + 1), all in one ``push_many`` on scratch conversations (if
        it raises, each retry is computed alone: one failure answers only its own item)."""
        compute = []
        for i in replays:
            cid, text, index = items[i][0], items[i][1], items[i][2]
            last = self._last.get(cid)
            if last is not None and last[0] == index:
                same = last[1] == hash(text)
                results[i] = (dict(last[2], replayed=True) if same else
                              ServingError(409, f"utterance {index} of conversation {cid} is not this "
                                                "text; cannot replay it"))
                self.replays += same
                continue
            state = stored.get(cid)
            if state is None:
                try:
                    state = self.store.load([cid]).get(cid)
                except Exception as exc:
                    log.error("state store failed: %s", exc)
                    results[i] = _unavailable(exc)
                    continue
            if state is None or state[0] != index + 1 or state[1][-1] != text:
                results[i] = ServingError(409, f"utterance {index} of conversation {cid} is not this text; "
                                               "cannot replay it")
                continue
            compute.append((i, texts_to_replay(state[1], self.window)))
        if not compute:
            return
        try:
            answers = self._compute_replays([texts for _, texts in compute])
        except Exception as exc:
            log.error("%d replay(s) failed (%s: %s); computing them one by one", len(compute),
                      type(exc).__name__, exc)
            answers = []
            for i, texts in compute:
                try:
                    answers += self._compute_replays([texts])
                except Exception as exc:
                    log.error("replay of conversation %s failed: %s: %s", items[i][0], type(exc).__name__, exc)
                    answers.append(ServingError(500, f"internal error: {type(exc).__name__}"))
        for (i, _), answer in zip(compute, answers):
            if isinstance(answer, ServingError):
                results[i] = answer
                continue
            out = answer.to_dict()
            out.pop("latency_ms", None)
            out.update(id=items[i][0], index=items[i][2], rebuilt=True, replayed=True)
            results[i] = out
            self.replays += 1

    def _compute_replays(self, texts: List[List[str]]) -> list:
        """The prediction of each list's last text after the texts before it, each list on a
        scratch conversation of the recognizer (closed again, also on failure). A scratch id is
        a str that is never a conversation id (``#`` is not allowed in one): both recognizers take
        it, and no conversation is touched."""
        scratch = [f"#replay-{n}" for n in range(len(texts))]
        pushes = [(sid, t) for sid, ts in zip(scratch, texts) for t in ts]
        try:
            predictions = self.recognizer.push_many(pushes)
        finally:
            for sid in scratch:
                try:
                    self.recognizer.close(sid)
                except KeyError:
                    pass
        ends = list(itertools.accumulate(len(ts) for ts in texts))
        return [predictions[end - 1] for end in ends]

    def _make_room(self, pending: int, keep) -> bool:
        """Evict least recently used in-memory copies (they stay in the store) until one more
        conversation fits in memory beside ``pending`` new ones; never one of ``keep`` (this
        batch's). False if no room can be made."""
        while self.live + pending >= self.memory_cap:
            victim = next((c for c in self._used if c not in keep), None)
            if victim is None:
                return False
            self._forget([victim])
        return True

    def _forget(self, cids) -> None:
        for cid in list(cids):
            self._count.pop(cid, None)
            self._used.pop(cid, None)
            self._last.pop(cid, None)
            try:   # also a conversation a failed push may have opened before its count was kept
                self.recognizer.close(cid)
            except KeyError:
                pass


def texts_to_replay(stored_texts: List[str], window: int) -> List[str]:
    """What recomputes the prediction of a conversation's last stored utterance: the (up to) K
    texts before it, then itself."""
    return stored_texts[:-1][-window:] + stored_texts[-1:]


def _by_conversation(appends):
    groups: Dict[str, list] = {}
    for append in appends:
        groups.setdefault(append[0], []).append(append)
    return groups


def _unavailable(exc: Exception) -> ServingError:
    return ServingError(503, f"state store unavailable: {exc}")
