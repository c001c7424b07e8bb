"""Durable conversation stores: the last K + 1 utterance texts and the true utterance count of
each live conversation, from which :class:`~aghmn_runtime.serving.engine.ConversationEngine` rebuilds a
conversation exactly (the recognizer's state for the next utterance is a function of the last K
texts only; the one more lets the engine answer a retried last utterance again, exactly).

Two implementations share one small interface:

- :class:`SQLiteStore`, the embedded default: one SQLite file in WAL mode. An utterance is
  acknowledged only after its batch's transaction committed, and a committed WAL transaction
  survives a ``kill -9`` of the server (it is in the operating system's page cache; with
  ``fsync=True`` it also survives a power loss, at the cost of an fsync per batch).
- :class:`RedisStore`, for several replicas (Ray Serve): appends are conditional on the count the
  replica expects, so two replicas can never interleave one conversation silently.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# (conversation id, index of the utterance in its conversation, text)
Append = Tuple[str, int, str]


class StoreConflict(Exception):
    """An append found the stored count different from the expected one (another writer)."""

    def __init__(self, conversation_ids: Sequence[str]):
        super().__init__(f"conversations changed elsewhere: {', '.join(map(str, conversation_ids))}")
        self.conversation_ids = list(conversation_ids)


class StoreUnavailable(Exception):
    """A write failed (disk full, I/O error); nothing of it was stored. The message says why."""


class ConversationStore:
    """Interface of a durable store (see the module doc). Methods are called from one thread."""

    #: True when other processes may write the same conversations (the engine then checks the
    #: stored count before trusting its in-memory copy).
    shared = False

    def load(self, conversation_ids: Sequence[str]) -> Dict[str, Tuple[int, List[str]]]:
        """``{id: (utterance count, last K + 1 texts oldest first)}`` for the ids that are stored."""
        raise NotImplementedError

    def append(self, items: Sequence[Append]) -> None:
        """Store a batch of utterances atomically; each index must equal the stored count."""
        raise NotImplementedError

    def delete(self, conversation_id: str) -> bool:
        """Forget a conversation; True if it was stored."""
        raise NotImplementedError

    def ids(self) -> List[str]:
        """Ids of every stored conversation."""
        raise NotImplementedError

    def count(self) -> Optional[int]:
        """How many conversations are stored; None for a shared store (others write it too)."""
        return None

    def expire(self, idle_seconds: float) -> List[str]:
        """Delete the conversations idle for more than ``idle_seconds``; returns their ids."""
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release the store."""


class MemoryStore(ConversationStore):
    """A non-durable store (tests, ``--store memory``): the same contract, nothing survives.

    ``clock`` gives the activity times that :meth:`expire` compares (seconds; tests pass a clock
    they advance, so expiry is tested without sleeping).
    """

    def __init__(self, window: int, clock: Callable[[], float] = time.time):
        self.window = _check_window(window)
        self.clock = clock
        self.keep = window + 1
        self._data: Dict[str, Tuple[int, List[str], float]] = {}

    def load(self, conversation_ids):
        return {c: (self._data[c][0], list(self._data[c][1])) for c in conversation_ids if c in self._data}

    def append(self, items):
        counts = {c: v[0] for c, v in self._data.items()}
        bad = []
        for cid, index, _ in items:
            if counts.get(cid, 0) != index:
                bad.append(cid)
            counts[cid] = index + 1
        if bad:
            raise StoreConflict(bad)
        now = self.clock()
        for cid, index, text in items:
            texts = self._data.get(cid, (0, [], now))[1]
            texts.append(text)
            self._data[cid] = (index + 1, texts[-self.keep:], now)

    def delete(self, conversation_id):
        return self._data.pop(conversation_id, None) is not None

    def ids(self):
        return list(self._data)

    def count(self):
        return len(self._data)

    def expire(self, idle_seconds):
        cutoff = self.clock() - idle_seconds
        gone = [c for c, v in self._data.items() if v[2] < cutoff]
        for c in gone:
            del self._data[c]
        return gone


class SQLiteStore(ConversationStore):
    """The embedded durable store: one SQLite database file in WAL mode, owned by one process.

    One table of text slots: utterance ``i`` of a conversation goes to slot ``i mod (K + 1)``
    with its index and time, so an append is one upsert per utterance in the batch's one
    transaction, and a conversation's count is its largest index + 1. The file is locked
    exclusively while open: a second server on the same file is refused with ``ValueError``
    (the counts and activity times mirrored in memory are the truth only with a single writer),
    and the lock dies with the process, so a killed server can be restarted at once.

    Args:
        path: the database file (created if absent; its directory must exist).
        window: K (K + 1 texts are kept per conversation). A file written for another K is
            refused with ``ValueError`` (rebuilding with fewer texts than K would not be exact).
        fsync: also survive an operating-system crash (``synchronous=FULL``); the default
            survives a crash or ``kill -9`` of the server process.
        clock: the activity times stored with each utterance and compared by :meth:`expire`
            (seconds since the epoch: they outlive the process; tests pass a clock they advance).
    """

    def __init__(self, path: str, window: int, fsync: bool = False, clock: Callable[[], float] = time.time):
        self.window = _check_window(window)
        self.clock = clock
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"state directory not found: {directory}")
        db = None
        try:
            # check_same_thread=False: the engine may run on a worker thread while the server's
            # main thread opens and closes the store.
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0.5)
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            db.executescript(   # BEGIN IMMEDIATE takes the exclusive lock now, not at the first append
                "BEGIN IMMEDIATE;"
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                "CREATE TABLE IF NOT EXISTS texts (id TEXT NOT NULL, slot INTEGER NOT NULL,"
                " idx INTEGER NOT NULL, text TEXT NOT NULL, seen REAL NOT NULL,"
                " PRIMARY KEY (id, slot)) WITHOUT ROWID;"
                "COMMIT;")
            row = db.execute("SELECT value FROM meta WHERE key = 'window'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('window', ?)", (json.dumps(window),))
            rows = db.execute("SELECT id, MAX(idx) + 1, MAX(seen) FROM texts GROUP BY id").fetchall()
        except sqlite3.OperationalError as exc:
            if db is not None:
                db.close()
            if "locked" in str(exc):
                raise ValueError(f"{path} is in use by another server (one state file per server)") from None
            raise ValueError(f"{path} is not a usable conversation store: {exc}") from None
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            raise ValueError(f"{path} is not a usable conversation store: {exc}") from None
        if row is not None and json.loads(row[0]) != window:
            db.close()
            raise ValueError(f"{path} holds conversations of a model with window K={row[0]}, "
                             f"this model has K={window}: use another --state file")
        self._db = db
        self._lock = threading.Lock()
        self._counts: Dict[str, int] = {cid: n for cid, n, _ in rows}
        self._seen: Dict[str, float] = {cid: t for cid, _, t in rows}
        self.path = path

    def load(self, conversation_ids):
        out: Dict[str, Tuple[int, List[str]]] = {}
        with self._lock:
            for cid in conversation_ids:
                count = self._counts.get(cid)
                if count is not None:
                    out[cid] = (count, [t for (t,) in self._db.execute(
                        "SELECT text FROM texts WHERE id = ? ORDER BY idx", (cid,))])
        return out

    def append(self, items):
        # The exclusive lock makes this process the only writer, so the counts mirrored in
        # memory are the stored ones: the index check needs no query.
        counts: Dict[str, int] = {}
        bad = []
        for cid, index, _ in items:
            if counts.get(cid, self._counts.get(cid, 0)) != index:
                bad.append(cid)
            counts[cid] = index + 1
        if bad:
            raise StoreConflict(bad)
        now = self.clock()
        keep = self.window + 1
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                db.executemany("INSERT OR REPLACE INTO texts VALUES (?, ?, ?, ?, ?)",
                               [(cid, index % keep, index, text, now) for cid, index, text in items])
                db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:   # SQLite has already rolled back after e.g. a full disk
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreUnavailable(_sqlite_reason(exc)) from None
                raise
            self._counts.update(counts)
            for cid in counts:
                self._seen[cid] = now

    def delete(self, conversation_id):
        return bool(self._delete([conversation_id]))

    def _delete(self, ids: Sequence[str]) -> List[str]:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM texts WHERE id = ?", [(c,) for c in ids])
            self._db.execute("COMMIT")
            for c in ids:
                self._seen.pop(c, None)
            return [c for c in ids if self._counts.pop(c, None) is not None]

    def ids(self):
        with self._lock:
            return sorted(self._seen, key=self._seen.__getitem__)

    def count(self):
        return len(self._counts)

    def expire(self, idle_seconds):
        cutoff = self.clock() - idle_seconds
        with self._lock:
            gone = [c for c, t in self._seen.items() if t < cutoff]
        return self._delete(gone) if gone else []

    def close(self):
        with self._lock:
            try:
                # fold the WAL into the main file so that a stopped server leaves one file
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()


def _sqlite_reason(exc: sqlite3.Error) -> str:
    """What a failed write means (said to clients: no path; nothing of the batch was stored)."""
    if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "full" in str(exc):
        return "the disk of the state file is full; nothing of this request was stored"
    return f"{exc}; nothing of this request was stored"


def _check_window(window) -> int:
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    return window

