"""Serving engine and stores: exact rebuilds from the last K texts, restarts, capacity, expiry."""
import os
import random
import subprocess
import sys
import time

import pytest
import torch

from aghmn_runtime.serving.engine import ConversationEngine, ServingError, check_conversation_id, check_text
from aghmn_runtime.serving.store import MemoryStore, SQLiteStore, StoreConflict
from aghmn_fast.streaming import StreamingRecognizer

from serving_fixtures import (SOURCE_PATH, assert_matches_offline, meld_model, meld_test_third, offline_probabilities,
                              redis_url, synthetic_dialogues, tiny_model)  # noqa: F401 (fixture)


def _rec(model):
    return StreamingRecognizer(model, vocab=model.vocab, label_names=model.label_names)


@pytest.mark.parametrize("window", [1, 3, 6])
@pytest.mark.parametrize("path", ["push", "ops"])
def test_rebuild_from_last_k_texts_equals_uninterrupted(window, path):
    """The claim everything rests on: pushing the last (up to) K texts recreates the state."""
    model = tiny_model(window=window, seed=window)
    if path == "ops":
        model.config.backend = "reference"
    texts = synthetic_dialogues(1, seed=3, min_len=20, max_len=20)[0].texts
    for cut in (1, window - 1, window, window + 1, 2 * window + 3, 19):
        if cut < 1:
            continue
        full = StreamingRecognizer(model, vocab=model.vocab, label_names=model.label_names, mode=path)
        uninterrupted = [full.push("c", t) for t in texts]
        rebuilt = StreamingRecognizer(model, vocab=model.vocab, label_names=model.label_names, mode=path)
        rebuilt.push_many([("c", t) for t in texts[max(0, cut - window):cut]])
        resumed = [rebuilt.push("c", t) for t in texts[cut:]]
        a = torch.tensor([list(p.probabilities.values()) for p in uninterrupted[cut:]])
        b = torch.tensor([list(p.probabilities.values()) for p in resumed])
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
        assert [p.label for p in resumed] == [p.label for p in uninterrupted[cut:]]


def _serve_interleaved(engine_at, dialogues, seed=0, max_batch=17, restart_after=None):
    """Sends the dialogues' utterances interleaved at random in batches; ``engine_at(step)`` gives
    the engine for each batch (so tests can restart or switch engines). Results per dialogue."""
    rng = random.Random(seed)
    pending = {d.id: list(d.texts) for d in dialogues}
    got = {d.id: [] for d in dialogues}
    step = 0
    while any(pending.values()):
        live = [cid for cid, texts in pending.items() if texts]
        batch = []
        for cid in rng.sample(live, min(len(live), rng.randint(1, max_batch))):
            for _ in range(rng.choice((1, 1, 1, 2))):   # sometimes two of one conversation
                if pending[cid]:
                    batch.append((cid, pending[cid].pop(0)))
        for (cid, _), r in zip(batch, engine_at(step).process(batch)):
            assert not isinstance(r, ServingError), r
            got[cid].append(r)
        step += 1
    return got


def test_engine_equals_offline_with_restarts_on_sqlite(tmp_path):
    model = tiny_model(window=4)
    dialogues = synthetic_dialogues(40, seed=1)
    expect = offline_probabilities(_rec(model), dialogues)
    path = str(tmp_path / "state.db")
    engines = {}

    def engine_at(step):
        generation = step // 6  # a restart every 6 batches: a fresh process would do the same
        if generation not in engines:
            if engines:
                engines[generation - 1].close()
            engines[generation] = ConversationEngine(_rec(model), SQLiteStore(path, 4))
            engines[generation].restore()
        return engines[generation]

    got = _serve_interleaved(engine_at, dialogues)
    assert len(engines) > 2
    assert_matches_offline(got, dialogues, expect)
    rebuilt = [r for rs in got.values() for r in rs if r["rebuilt"]]
    # a restart rebuilds nothing eagerly: a stored conversation is rebuilt when first touched,
    # once per restart at most
    assert rebuilt and len(rebuilt) <= len(dialogues) * (len(engines) - 1)


def test_sqlite_survives_a_killed_writer(tmp_path):
    """What a kill -9 leaves: committed appends, no close (the WAL is not checkpointed)."""
    path = str(tmp_path / "state.db")
    code = ("import os, sys; from aghmn_runtime.serving.store import SQLiteStore; s = SQLiteStore(sys.argv[1], 3); "
            "s.append([('a', 0, 'one'), ('a', 1, 'two'), ('b', 0, 'x')]); s.append([('a', 2, 'three'), "
            "('a', 3, 'four')]); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, path], check=True, env=dict(os.environ, PYTHONPATH=SOURCE_PATH))
    store = SQLiteStore(path, 3)
    assert store.load(["a", "b", "c"]) == {"a": (4, ["one", "two", "three", "four"]), "b": (1, ["x"])}
    assert sorted(store.ids()) == ["a", "b"]
    with pytest.raises(StoreConflict):
        store.append([("b", 0, "again")])
    assert store.load(["b"]) == {"b": (1, ["x"])}  # a refused batch writes nothing
    with pytest.raises(ValueError, match="in use by another server"):
        SQLiteStore(path, 3)
    store.close()
    SQLiteStore(path, 3).close()   # free again once closed


def test_sqlite_store_refuses_another_window_and_garbage(tmp_path):
    path = str(tmp_path / "state.db")
    SQLiteStore(path, 3).close()
    with pytest.raises(ValueError, match="window K=3"):
        SQLiteStore(path, 5)
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(ValueError, match="not a usable conversation store"):
        SQLiteStore(str(bad), 3)
    with pytest.raises(FileNotFoundError, match="state directory"):
        SQLiteStore(str(tmp_path / "missing" / "x.db"), 3)


def test_capacity_delete_and_ttl():
    model = tiny_model(window=3)
    engine = ConversationEngine(_rec(model), MemoryStore(3), max_conversations=2, ttl_seconds=0.2)
    out = engine.process([("a", "hi"), ("b", "hello"), ("c", "no"), ("a", "yes")])
    assert [isinstance(r, ServingError) for r in out] == [False, False, True, False]
    assert out[2].status == 429 and "limit 2" in out[2].message
    assert out[3]["index"] == 1
    assert engine.delete("b") and not engine.delete("b")
    assert engine.process([("c", "no")])[0]["index"] == 0   # room again
    time.sleep(0.3)
    engine.process([("c", "fine")])                          # c stays fresh
    assert engine.expire() == 1                              # a expired
    assert engine.process([("a", "hi")])[0]["index"] == 0    # a starts over
    assert engine.process([("c", "ok")])[0]["index"] == 2


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_expected_index_makes_retries_exact(store_kind, tmp_path):
    """A retried last utterance is answered again exactly (not counted twice); out-of-sequence
    indexes are refused; windows full and not full."""
    model = tiny_model(window=3)
    texts = synthetic_dialogues(1, seed=8, min_len=9, max_len=9)[0].texts
    rec_ref = _rec(model)
    reference = [rec_ref.push("c", t) for t in texts]
    store = MemoryStore(3) if store_kind == "memory" else SQLiteStore(str(tmp_path / "s.db"), 3)
    engine = ConversationEngine(_rec(model), store)
    for n, text in enumerate(texts):
        first = engine.process([("c", text, n)])[0]
        again = engine.process([("c", text, n)])[0]        # the answer was "lost": retry
        assert first["index"] == again["index"] == n and again["replayed"]
        for r in (first, again):
            got = torch.tensor(list(r["probabilities"].values()))
            torch.testing.assert_close(got, torch.tensor(list(reference[n].probabilities.values())),
                                       rtol=0, atol=1e-5)
            assert r["label"] == reference[n].label
        stale = engine.process([("c", "other text", n), ("c", text, n + 5)])
        assert [e.status for e in stale] == [409, 409]
    assert engine.replays == len(texts) and engine.live == 1
    # several in one batch, in order, with and without indexes
    out = engine.process([("d", "hi", 0), ("d", "yes", 1), ("d", "no"), ("d", "ok", 3), ("d", "ok", 9)])
    assert [r["index"] if isinstance(r, dict) else r.status for r in out] == [0, 1, 2, 3, 409]


def test_bad_items_are_refused_alone():
    with pytest.raises(ServingError) as e:
        check_conversation_id("no spaces")
    assert e.value.status == 400
    for bad, status in ((None, 422), ("  ", 422), ("x" * 11, 413)):
        with pytest.raises(ServingError) as e:
            check_text(bad, 10)
        assert e.value.status == status


def test_shared_redis_store_across_engines_is_exact(redis_url):
    """Two engines over one Redis (two replicas): a conversation moving between them, and back to
    a stale copy, still gives the offline predictions; a stale append is refused."""
    from aghmn_runtime.serving.redis_store import RedisStore

    model = tiny_model(window=4)
    dialogues = synthetic_dialogues(30, seed=2)
    expect = offline_probabilities(_rec(model), dialogues)
    engines = [ConversationEngine(_rec(model), RedisStore(redis_url, 4)) for _ in range(2)]
    rng = random.Random(5)
    got = _serve_interleaved(lambda step: engines[rng.randrange(2)], dialogues, seed=3)
    assert_matches_offline(got, dialogues, expect)
    assert engines[0].rebuilds > 0 and engines[1].rebuilds > 0 and engines[0].hits > 0
    store = RedisStore(redis_url, 4)
    with pytest.raises(StoreConflict):
        store.append([(dialogues[0].id, 0, "stale")])
    with pytest.raises(ValueError, match="window K=4"):
        RedisStore(redis_url, 6)


def test_redis_ttl_and_delete(redis_url):
    from aghmn_runtime.serving.redis_store import RedisStore

    store = RedisStore(redis_url, 2, ttl_seconds=1)
    store.append([("a", 0, "w"), ("a", 1, "x"), ("a", 2, "y"), ("a", 3, "z")])
    assert store.load(["a"]) == {"a": (4, ["x", "y", "z"])}   # K + 1 texts
    assert store.ids() == ["a"]
    time.sleep(1.3)
    assert store.load(["a"]) == {} and store.ids() == []
    store.append([("b", 0, "x")])
    assert store.delete("b") and store.load(["b"]) == {}


def test_meld_third_through_the_engine_with_a_restart(tmp_path):
    dialogues = meld_test_third()
    model = meld_model(dialogues)
    expect = offline_probabilities(_rec(model), dialogues)
    path = str(tmp_path / "state.db")
    engines = {}

    def engine_at(step):
        g = int(step >= 20)
        if g not in engines:
            if g:
                engines[0].close()
            engines[g] = ConversationEngine(_rec(model), SQLiteStore(path, model.config.window))
            engines[g].restore()
        return engines[g]

    got = _serve_interleaved(engine_at, dialogues, max_batch=16)
    assert len(engines) == 2 and engines[1].live > 0
    assert_matches_offline(got, dialogues, expect)
