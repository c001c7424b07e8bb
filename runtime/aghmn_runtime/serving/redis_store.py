"""The Redis conversation store, shared by every replica of a Ray Serve deployment.

Per conversation two keys: ``{prefix}n:{id}`` (the utterance count) and ``{prefix}t:{id}`` (a list
of its last K + 1 texts); a sorted set ``{prefix}ids`` scores every id by its last activity. A batch
is appended by one Lua script, atomically and only if every stored count equals the index the
replica computed: a replica whose in-memory copy is stale can never interleave a conversation
(it gets :class:`~aghmn_runtime.serving.store.StoreConflict` and rebuilds).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

from .store import ConversationStore, StoreConflict, _check_window

# KEYS: count key and text key per item, then the ids set.
# ARGV: K, ttl seconds (0 = none), now, then id, index, text per item.
_APPEND = """
local K, ttl, now = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local n = (#ARGV - 3) / 3
local zkey = KEYS[#KEYS]
local expected, bad = {}, {}
for i = 0, n - 1 do
  local key, idx = KEYS[2 * i + 1], tonumber(ARGV[5 + 3 * i])
  local e = expected[key]
  if e == nil then e = tonumber(redis.call('GET', key) or '0') end
  if e ~= idx then table.insert(bad, ARGV[4 + 3 * i]) end
  expected[key] = idx + 1
end
if #bad > 0 then return bad end
for i = 0, n - 1 do
  local nkey, tkey = KEYS[2 * i + 1], KEYS[2 * i + 2]
  redis.call('SET', nkey, tonumber(ARGV[5 + 3 * i]) + 1)
  redis.call('RPUSH', tkey, ARGV[6 + 3 * i])
  redis.call('LTRIM', tkey, -K, -1)
  if ttl > 0 then
    redis.call('EXPIRE', nkey, ttl)
    redis.call('EXPIRE', tkey, ttl)
  end
  redis.call('ZADD', zkey, now, ARGV[4 + 3 * i])
end
return bad
"""


class RedisStore(ConversationStore):
    """Conversations in a Redis server (see the module doc).

    Args:
        url: ``redis://host:port/db`` (or ``unix://``).
        window: K (K + 1 texts are kept per conversation); a server holding conversations of
            another K (recorded under ``{prefix}window``) is refused with ``ValueError``.
        ttl_seconds: idle expiry, applied by Redis itself to both keys (None: never).
        prefix: key prefix, so that several deployments can share a server.
    """

    shared = True

    def __init__(self, url: str, window: int, ttl_seconds: Optional[float] = None,
                 prefix: str = "aghmn:"):
        import redis

        self.window = _check_window(window)
        self.ttl = 0 if not ttl_seconds else max(1, int(round(ttl_seconds)))
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10,
                                           socket_connect_timeout=5)
        try:
            self._redis.setnx(prefix + "window", window)
            stored = int(self._redis.get(prefix + "window"))
        except redis.RedisError as exc:
            raise ValueError(f"cannot use the Redis store at {url}: {exc}") from exc
        if stored != window:
            raise ValueError(f"the Redis store at {url} (prefix {prefix!r}) holds conversations "
                             f"of a model with window K={stored}, this model has K={window}")
        self._append = self._redis.register_script(_APPEND)
        self._ids = prefix + "ids"

    def _keys(self, cid: str) -> Tuple[str, str]:
        return f"{self.prefix}n:{cid}", f"{self.prefix}t:{cid}"

    def load(self, conversation_ids):
        ids = list(dict.fromkeys(conversation_ids))
        pipe = self._redis.pipeline(transaction=True)
        for cid in ids:
            nkey, tkey = self._keys(cid)
            pipe.get(nkey)
            pipe.lrange(tkey, 0, -1)
        replies = pipe.execute()
        out: Dict[str, Tuple[int, List[str]]] = {}
        for i, cid in enumerate(ids):
            count, texts = replies[2 * i], replies[2 * i + 1]
            if count is not None:
                out[cid] = (int(count), texts)
        return out

    def append(self, items):
        if not items:
            return
        keys: List[str] = []
        args: List = [self.window + 1, self.ttl, time.time()]
        for cid, index, text in items:
            keys.extend(self._keys(cid))
            args.extend((cid, index, text))
        bad = self._append(keys=keys + [self._ids], args=args)
        if bad:
            raise StoreConflict(bad)

    def delete(self, conversation_id):
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(*self._keys(conversation_id))
        pipe.zrem(self._ids, conversation_id)
        return pipe.execute()[0] > 0

    def ids(self):
        ids = self._redis.zrange(self._ids, 0, -1)
        pipe = self._redis.pipeline(transaction=False)
        for cid in ids:
            pipe.exists(self._keys(cid)[0])
        return [c for c, alive in zip(ids, pipe.execute()) if alive]

    def expire(self, idle_seconds):
        cutoff = time.time() - idle_seconds
        gone = self._redis.zrangebyscore(self._ids, "-inf", cutoff)
        if gone:
            pipe = self._redis.pipeline(transaction=True)
            for cid in gone:
                pipe.delete(*self._keys(cid))
            pipe.zrem(self._ids, *gone)
            pipe.execute()
        return gone

    def clear(self) -> None:
        """Delete every conversation of this prefix (tests, benchmarks)."""
        for cid in self._redis.zrange(self._ids, 0, -1):
            self._redis.delete(*self._keys(cid))
        self._redis.delete(self._ids)

    def close(self):
        self._redis.close()
