"""Serving engine and stores: exact rebuilds from the last K texts, restarts, capacity, expiry,
replays; every engine test runs on both recognizers (torch and the native runtime)."""
import random
import subprocess
import sys

import pytest
import torch

from aghmn_runtime.serving.engine import ConversationEngine, ServingError, check_conversation_id, check_text
from aghmn_runtime.serving.store import MemoryStore, SQLiteStore, StoreConflict
from aghmn_fast.streaming import StreamingRecognizer

from serving_fixtures import (REPO, FailingRecognizer, ManualClock, assert_matches_offline, recognizer_kind,  # noqa: F401
                              load_served_recognizer, meld_model, meld_test_third, offline_probabilities, recognizer_for,
                              redis_url, subprocess_env, synthetic_dialogues, tiny_model, wait_until)


@pytest.fixture(scope="module")
def files(model_files):
    """The window-4 model of both recognizers."""
    return model_files(window=4)


def _rec(files, engine):
    """A fresh recognizer of the given engine over the model files' weights."""
    return load_served_recognizer(files[engine])


def _expect(files, dialogues):
    """The offline model's probabilities (the torch checkpoint of the same weights)."""
    return offline_probabilities(recognizer_for(files["torch"]), dialogues)


@pytest.mark.parametrize("window", [1, 3, 6])
@pytest.mark.parametrize("path", ["push", "ops", "runtime"])
def test_rebuild_from_last_k_texts_equals_uninterrupted(window, path, model_files):
    """The claim everything rests on: pushing the last (up to) K texts recreates the state."""
    model = tiny_model(window=window, seed=window)
    if path == "ops":
        model.config.backend = "reference"

    def fresh():
        if path == "runtime":
            return load_served_recognizer(model_files(window=window, seed=window)["runtime"])
        return StreamingRecognizer(model, vocab=model.vocab, label_names=model.label_names, mode=path)
    texts = synthetic_dialogues(1, seed=3, min_len=20, max_len=20)[0].texts
    for cut in (1, window - 1, window, window + 1, 2 * window + 3, 19):
        if cut < 1:
            continue
        full = fresh()
        uninterrupted = [full.push("c", t) for t in texts]
        rebuilt = fresh()
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


def test_engine_equals_offline_with_restarts_on_sqlite(tmp_path, files, recognizer_kind):
    dialogues = synthetic_dialogues(40, seed=1)
    expect = _expect(files, dialogues)
    path = str(tmp_path / "state.db")
    engines = {}

    def engine_at(step):
        generation = step // 6  # a restart every 6 batches: a fresh process would do the same
        if generation not in engines:
            if engines:
                engines[generation - 1].close()
            engines[generation] = ConversationEngine(_rec(files, recognizer_kind), SQLiteStore(path, 4))
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
    subprocess.run([sys.executable, "-c", code, path], check=True, env=subprocess_env())
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


def test_capacity_delete_and_ttl(model_files, recognizer_kind):
    clock = ManualClock()
    engine = ConversationEngine(_rec(model_files(window=3), recognizer_kind), MemoryStore(3, clock=clock),
                                max_conversations=2, ttl_seconds=10)
    out = engine.process([("a", "hi"), ("b", "hello"), ("c", "no"), ("a", "yes")])
    assert [isinstance(r, ServingError) for r in out] == [False, False, True, False]
    assert out[2].status == 429 and "limit 2" in out[2].message
    assert out[3]["index"] == 1
    assert engine.delete("b") and not engine.delete("b")
    assert engine.process([("c", "no")])[0]["index"] == 0   # room again
    clock.advance(10)
    assert engine.expire() == 0                              # idle exactly the TTL: kept
    clock.advance(0.5)
    engine.process([("c", "fine")])                          # c stays fresh
    assert engine.expire() == 1                              # a expired
    assert engine.process([("a", "hi")])[0]["index"] == 0    # a starts over
    assert engine.process([("c", "ok")])[0]["index"] == 2


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_expected_index_makes_retries_exact(store_kind, tmp_path, model_files, recognizer_kind):
    """A retried last utterance is answered again exactly (not counted twice); out-of-sequence
    indexes are refused; windows full and not full."""
    files = model_files(window=3)
    texts = synthetic_dialogues(1, seed=8, min_len=9, max_len=9)[0].texts
    rec_ref = _rec(files, recognizer_kind)
    reference = [rec_ref.push("c", t) for t in texts]
    store = MemoryStore(3) if store_kind == "memory" else SQLiteStore(str(tmp_path / "s.db"), 3)
    engine = ConversationEngine(_rec(files, recognizer_kind), store)
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


def test_shared_redis_store_across_engines_is_exact(redis_url, files, recognizer_kind):
    """Two engines over one Redis (two replicas): a conversation moving between them, and back to
    a stale copy, still gives the offline predictions; a stale append is refused."""
    from aghmn_runtime.serving.redis_store import RedisStore

    dialogues = synthetic_dialogues(30, seed=2)
    expect = _expect(files, dialogues)
    engines = [ConversationEngine(_rec(files, recognizer_kind), RedisStore(redis_url, 4)) for _ in range(2)]
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

    store = RedisStore(redis_url, 2, ttl_seconds=2)   # 2 s: a loaded machine may stall for 1
    store.append([("a", 0, "w"), ("a", 1, "x"), ("a", 2, "y"), ("a", 3, "z")])
    assert store.load(["a"]) == {"a": (4, ["x", "y", "z"])}   # K + 1 texts
    assert store.ids() == ["a"]
    wait_until(lambda: store.load(["a"]) == {} and store.ids() == [], timeout=10, what="the TTL expiry")
    store.append([("b", 0, "x")])
    assert store.delete("b") and store.load(["b"]) == {}


def test_meld_third_through_the_engine_with_a_restart(tmp_path, recognizer_kind):
    from aghmn_fast.export import export_checkpoint
    from aghmn_fast.models.checkpoint import save_checkpoint

    dialogues = meld_test_third()
    model = meld_model(dialogues)
    files = {"torch": str(tmp_path / "meld.pt"), "runtime": str(tmp_path / "meld.aghmn")}
    save_checkpoint(files["torch"], model, model.vocab, model.label_names)
    export_checkpoint(files["torch"], files["runtime"])
    expect = _expect(files, dialogues)
    path = str(tmp_path / "state.db")
    engines = {}

    def engine_at(step):
        g = int(step >= 20)
        if g not in engines:
            if g:
                engines[0].close()
            engines[g] = ConversationEngine(_rec(files, recognizer_kind), SQLiteStore(path, model.config.window))
            engines[g].restore()
        return engines[g]

    got = _serve_interleaved(engine_at, dialogues, max_batch=16)
    assert len(engines) == 2 and engines[1].live > 0
    assert_matches_offline(got, dialogues, expect)


def _outcome(results):
    """Each result's index, or its error status."""
    return [r.status if isinstance(r, ServingError) else r["index"] for r in results]


def _close(a, b):
    torch.testing.assert_close(torch.tensor(list(a["probabilities"].values())),
                               torch.tensor(list(b["probabilities"].values())), rtol=0, atol=1e-6)


@pytest.mark.parametrize("lost_by", ["restart", "eviction"])
def test_retry_after_restart_or_eviction_is_replayed_with_its_batch_served(lost_by, tmp_path, files, recognizer_kind):
    """A client retries its last utterance once its server restarted (or evicted the
    conversation from memory): the answer is computed again from the stored texts, exactly,
    and the 30 other clients whose utterances share its batch are all served."""
    texts = synthetic_dialogues(2, seed=5, min_len=7, max_len=7)
    engine = ConversationEngine(_rec(files, recognizer_kind), SQLiteStore(str(tmp_path / "s.db"), 4), max_live=30)
    first = {d.id: [engine.process([(d.id, t, n)])[0] for n, t in enumerate(d.texts)] for d in texts}
    engine.process([(f"by{i}", "hello there", 0) for i in range(15)])
    if lost_by == "restart":
        engine.close()
        engine = ConversationEngine(_rec(files, recognizer_kind), SQLiteStore(str(tmp_path / "s.db"), 4))
        assert engine.restore() == 17
    else:   # 15 bystanders + 2 = 17 in memory; 15 more evict the least recently used: the two
        engine.process([(f"ev{i}", "hi", 0) for i in range(15)])
        assert engine.live == 30 and not {d.id for d in texts} & set(engine._count)
    retries = [(d.id, d.texts[-1], len(d.texts) - 1) for d in texts]
    batch = ([(f"by{i}", "and again", 1) for i in range(15)][:8] + [retries[0]]
             + [(f"new{i}", "hi there", 0) for i in range(14)] + [retries[1]]
             + [(f"by{i}", "and again", 1) for i in range(15)][8:])
    out = engine.process(batch)
    assert _outcome(out) == [1] * 8 + [6] + [0] * 14 + [6] + [1] * 7
    for n, d in zip((8, 23), texts):
        assert out[n]["replayed"] and out[n]["id"] == d.id and out[n]["label"] == first[d.id][-1]["label"]
        _close(out[n], first[d.id][-1])
    assert engine.replays == 2
    # nothing was stored by the replays, and no scratch conversation stayed open
    assert engine.store.load([d.id for d in texts]) == {d.id: (7, d.texts[-5:]) for d in texts}
    assert not [c for c in _conversations(engine.recognizer) if c.startswith("#")]
    nxt = engine.process([(texts[0].id, "and then", 7), (texts[0].id, "wrong", 5)])
    assert _outcome(nxt) == [7, 409]


def _conversations(recognizer):
    c = recognizer.conversations
    return c() if callable(c) else c


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_a_failing_conversation_fails_only_its_items(store_kind, tmp_path, files, recognizer_kind):
    """An exception of the recognizer on one conversation's item answers that conversation's
    items 500 and serves every other item of the batch, exactly (the conversations the failed
    call may have touched part-way are rebuilt from the store)."""
    dialogues = synthetic_dialogues(12, seed=9, min_len=6, max_len=6)
    expect = _expect(files, dialogues)
    store = MemoryStore(4) if store_kind == "memory" else SQLiteStore(str(tmp_path / "s.db"), 4)
    failing = FailingRecognizer(_rec(files, recognizer_kind))
    engine = ConversationEngine(failing, store)
    got = {d.id: [] for d in dialogues}
    for n in range(6):
        batch = [(d.id, d.texts[n]) for d in dialogues]
        # the victim: a conversation with history, a new one, and one of two items
        batch[3:3] = [("victim", "boom"), ("fresh", "boom")]
        batch.append(("victim", "after boom"))
        out = engine.process(batch)
        assert all(isinstance(r, ServingError) and r.status == 500 and r.message == "internal error: RuntimeError"
                   for r in out[3:5] + out[-1:])
        for (cid, _), r in zip(batch[:3] + batch[5:-1], out[:3] + out[5:-1]):
            assert not isinstance(r, ServingError), r.message
            got[cid].append(r)
        if n == 0:
            assert engine.process([("victim", "fine")])[0]["index"] == 0
    assert failing.failures > 6
    assert_matches_offline(got, dialogues, expect)
    assert engine.live == len(dialogues) and "fresh" not in store.load(["fresh"])   # victim forgotten
    # nothing of the failed items was stored or counted
    assert engine.process([("victim", "later")])[0]["index"] == 1
    # a failing replay answers only itself
    stored = engine.process([("r1", "one", 0), ("r2", "boom", 0)])
    assert _outcome(stored) == [0, 500]
    failing.culprit = "zzz"
    engine.process([("r2", "boom", 0)])
    engine.close() if store_kind == "sqlite" else None
    failing.culprit = "boom"
    again = ConversationEngine(failing, SQLiteStore(str(tmp_path / "s.db"), 4) if store_kind == "sqlite" else store)
    if store_kind == "memory":
        again._forget(["r1", "r2"])
    out = again.process([("r1", "one", 0), ("r2", "boom", 0), ("r3", "new", 0)])
    assert _outcome(out) == [0, 500, 0] and out[0]["replayed"]
