"""Hostile and broken clients (issue 19): one test per class of fault. Each failed on the server
before the fix; ``benchmarks/serve_attacks.py`` runs the same attacks against a real process."""
import argparse
import asyncio
import json
import socket
import sqlite3
import time

import httpx
import pytest

from aghmn_runtime.serving.app import ServingApp
from aghmn_runtime.serving.batcher import MicroBatcher, Overloaded
from aghmn_runtime.serving.cli import add_parser, config_from_args
from aghmn_runtime.serving.engine import ConversationEngine, ServingError, check_conversation_id
from aghmn_runtime.serving.store import MemoryStore, SQLiteStore

from serving_fixtures import (ManualClock, recognizer_kind, load_served_recognizer, make_serving,  # noqa: F401 (fixture)
                              one_recognizer, running_app, wait_until)


@pytest.fixture(scope="module")
def checkpoint(model_files, recognizer_kind):
    """The window-3 model file of each recognizer in turn (one set of weights)."""
    return model_files(window=3)[recognizer_kind]


_serving = make_serving


@pytest.fixture
def make_engine(checkpoint):
    """``make_engine(store=None, **engine options)``: an engine over a fresh recognizer of the
    module's recognizer kind."""
    def make(store=None, **kwargs):
        return ConversationEngine(load_served_recognizer(checkpoint), store if store is not None else MemoryStore(3), **kwargs)
    return make


def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        try:
            return s.recv(4096)
        except OSError:
            return b""


# ---- 1: invalid Unicode, store failures, the live bound, starting on a full store -------------
class FailingFor(MemoryStore):
    """A store whose appends fail while they include conversation ``bad``."""

    def append(self, items):
        if any(cid == "bad" for cid, _, _ in items):
            raise OSError("simulated I/O error")
        super().append(items)


def test_invalid_unicode_and_one_store_failure_fail_only_their_items(checkpoint, make_engine, tmp_path):
    engine = make_engine(FailingFor(3), max_conversations=3)
    out = engine.process([("a", "hi"), ("bad", "x"), ("b", "yes"), ("a", "again")])
    assert [r.status if isinstance(r, ServingError) else r["index"] for r in out] == [0, 503, 0, 1]
    assert engine.live == 2   # a and b kept, bad forgotten
    # the bound holds when the failed one comes back: stored 2 (+ bad never stored) -> room for 1
    out = engine.process([("bad2", "x"), ("c", "no")])
    assert [r.status if isinstance(r, ServingError) else r["index"] for r in out] == [0, 429]
    assert engine.live <= 3

    serving = _serving(checkpoint, tmp_path)
    with running_app(serving) as base:
        lone = httpx.post(base + "/v1/conversations/u/utterances", content=b'{"text": "\\ud800 hi"}')
        batch = httpx.post(base + "/v1/utterances", content=b'{"utterances": [{"id": "v", "text": "fine"}, '
                                                            b'{"id": "w", "text": "\\udfff"}]}')
        ok = httpx.post(base + "/v1/conversations/u/utterances", json={"text": "fine"})
    assert lone.status_code == 422 and "surrogate" in lone.json()["error"]
    assert batch.status_code == 422 and "utterances[1]" in batch.json()["error"]
    assert ok.status_code == 200 and ok.json()["index"] == 0


def test_start_never_refuses_its_store_and_rebuilds_lazily(make_engine, tmp_path):
    path = str(tmp_path / "s.db")
    first = make_engine(SQLiteStore(path, 3), max_conversations=10)
    first.process([(f"c{i}", "hello there") for i in range(10)])
    first.close()
    engine = make_engine(SQLiteStore(path, 3), max_conversations=4)   # the limit was lowered
    calls = []
    push_many = engine.recognizer.push_many
    engine.recognizer.push_many = lambda items: calls.append(len(items)) or push_many(items)
    assert engine.restore() == 10 and engine.live == 0 and not calls   # nothing rebuilt yet
    out = engine.process([(f"c{i}", "and more") for i in range(6)] + [("new", "hi")])
    assert [r["index"] for r in out[:4]] == [1] * 4 and all(r["rebuilt"] for r in out[:4])
    assert all(isinstance(r, ServingError) and r.status == 429 for r in out[4:])   # no room in this batch
    assert engine.live <= 4
    assert engine.process([("c5", "later")])[0]["index"] == 1   # evicts a copy, stays exact
    assert engine.live <= 4
    assert engine.process([("new", "hi")])[0].status == 429     # the store holds 10 > 4


# ---- 7: ids are matched in full everywhere ------------------------------------------------------
@one_recognizer   # the id is refused before the recognizer is consulted
def test_ids_with_a_trailing_newline_are_refused_everywhere(checkpoint, tmp_path):
    from websockets.sync.client import connect

    with pytest.raises(ServingError):
        check_conversation_id("abc\n")
    with running_app(_serving(checkpoint, tmp_path)) as base:
        path = httpx.post(base + "/v1/conversations/abc%0A/utterances", json={"text": "hi"}).status_code
        batch = httpx.post(base + "/v1/utterances", json={"utterances": [{"id": "abc\n", "text": "hi"}]}).status_code
        delete = httpx.delete(base + "/v1/conversations/abc%0A").status_code
        with connect(base.replace("http", "ws") + "/v1/stream") as ws:
            ws.send(json.dumps({"id": "abc\n", "text": "hi"}))
            answer = json.loads(ws.recv(timeout=10))
    assert (path, batch, delete, answer["status"]) == (400, 400, 400, 400) and answer["id"] is None


# ---- 8: deeply nested JSON -----------------------------------------------------------------------
@one_recognizer   # the body is refused while it is parsed, before the recognizer is consulted
def test_deeply_nested_json_is_400_not_500(checkpoint, tmp_path):
    from websockets.sync.client import connect

    deep = b"[" * 10000 + b"]" * 10000
    with running_app(_serving(checkpoint, tmp_path)) as base:
        one = httpx.post(base + "/v1/conversations/d/utterances", content=b'{"text": ' + deep + b"}")
        many = httpx.post(base + "/v1/utterances", content=deep)
        with connect(base.replace("http", "ws") + "/v1/stream") as ws:
            ws.send(deep.decode())
            answer = json.loads(ws.recv(timeout=10))
    assert (one.status_code, many.status_code, answer["status"]) == (400, 400, 400)
    assert "nested too deeply" in one.json()["error"]


# ---- 5: every WebSocket message gets exactly one answer, in order --------------------------------
def test_websocket_answers_every_message_in_order_binary_and_bad_ids(checkpoint, tmp_path):
    from websockets.sync.client import connect

    with running_app(_serving(checkpoint, tmp_path)) as base:
        with connect(base.replace("http", "ws") + "/v1/stream") as ws:
            ws.send('{"id": "\\ud800", "text": "hi"}')            # an id that cannot be encoded
            ws.send(b"\xff\xfe not json")                           # binary garbage
            ws.send(json.dumps({"id": "ws", "text": "hello"}).encode())   # binary JSON
            ws.send(json.dumps({"id": "ws", "text": "\ud800"}, ensure_ascii=True))   # bad text
            ws.send(json.dumps({"id": "ws", "text": "again"}))
            answers = [json.loads(ws.recv(timeout=10)) for _ in range(5)]
    assert [a.get("status", 200) for a in answers] == [400, 400, 200, 422, 200]
    assert [a["index"] for a in answers if "index" in a] == [0, 1]


# ---- 4: drain: never store what is not answered ---------------------------------------------------
def test_batcher_withdraws_queued_work_only():
    async def scenario():
        batcher = MicroBatcher(lambda items: [x * 2 for x in items])
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([1], tag="a"))
        rest = [asyncio.ensure_future(batcher.submit([n], tag=t)) for n, t in ((2, "a"), (3, None), (4, "b"))]
        await asyncio.sleep(0)   # the submissions are queued, nothing processed yet
        assert batcher.withdraw(lambda tag: tag == "a", "gone") == 2
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        await batcher.stop()
        return results
    results = asyncio.run(scenario())
    assert isinstance(results[0], Overloaded) and isinstance(results[1], Overloaded)
    assert results[2:] == [[6], [8]]


def test_websocket_drain_stores_only_what_it_answers(checkpoint, tmp_path):
    from websockets.sync.client import connect

    state = str(tmp_path / "drain.db")
    handle, answers, close = {}, [], None
    with running_app(_serving(checkpoint, tmp_path, state=state), handle) as base:
        with connect(base.replace("http", "ws") + "/v1/stream") as ws:
            for i in range(1500):
                ws.send(json.dumps({"id": "drain", "text": f"message {i}"}))
            while not answers:
                answers.append(json.loads(ws.recv(timeout=10)))
            handle["server"].should_exit = True   # what SIGTERM does
            try:
                while True:
                    answers.append(json.loads(ws.recv(timeout=30)))
            except Exception as exc:
                close = getattr(exc, "rcvd", None)
    predictions = [a for a in answers if "label" in a]
    refused = [a for a in answers if "label" not in a]
    assert close is not None and close.code == 1012
    assert [p["index"] for p in predictions] == list(range(len(predictions)))
    assert all(a["status"] == 503 and "not processed" in a["error"] for a in refused)
    # answers come in order: every prediction before every refusal
    assert answers[:len(predictions)] == predictions
    store = SQLiteStore(state, 3)
    assert store.load(["drain"])["drain"][0] == len(predictions)   # stored == answered
    store.close()


# ---- 9: a replay costs no more than a new utterance ------------------------------------------------
def test_replay_of_a_live_conversation_is_a_lookup(make_engine):
    engine = make_engine()
    first = engine.process([(f"r{i}", "one two", 0) for i in range(64)])
    calls = []
    push_many = engine.recognizer.push_many
    engine.recognizer.push_many = lambda items: calls.append(len(items)) or push_many(items)
    again = engine.process([(f"r{i}", "one two", 0) for i in range(64)])
    assert not calls   # no model work at all
    assert all(a["replayed"] and a["probabilities"] == f["probabilities"] for a, f in zip(again, first))


# ---- 10: one clock for memory and store --------------------------------------------------------------
def test_memory_and_store_expire_on_one_clock(make_engine, tmp_path):
    path, clock = str(tmp_path / "s.db"), ManualClock()
    first = make_engine(SQLiteStore(path, 3, clock=clock), ttl_seconds=1.0, clock=clock)
    first.process([("idle", "hello")])
    first.close()
    clock.advance(0.6)
    engine = make_engine(SQLiteStore(path, 3, clock=clock), ttl_seconds=1.0, clock=clock)   # a restart
    assert engine.restore() == 1   # idle 0.6 s of 1.0: still stored
    assert engine.process([("idle", "there")])[0]["index"] == 1   # rebuilt from the store
    clock.advance(1.2)
    assert engine.process([("other", "hi")])[0]["index"] == 0
    assert engine.expire() == 1
    # idle last used 1.2 s ago: memory and store both forgot it; it starts over, never
    # "updated elsewhere meanwhile"
    out = engine.process([("idle", "back")])[0]
    assert not isinstance(out, ServingError), out.message
    assert out["index"] == 0


# ---- 11: disk full -----------------------------------------------------------------------------------
def test_disk_full_says_so_and_loses_nothing_acknowledged(make_engine, tmp_path):
    path = str(tmp_path / "s.db")
    store = SQLiteStore(path, 3)
    engine = make_engine(store)
    acknowledged = engine.process([("a", "one"), ("b", "two")])
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")   # the disk is full now
    big = " ".join(["word"] * 2000)
    out = engine.process([(f"n{i}", big) for i in range(20)])
    assert all(isinstance(r, ServingError) and r.status == 503 and "full" in r.message for r in out)
    store._db.execute("PRAGMA max_page_count = 1073741823")
    assert engine.process([("a", "three")])[0]["index"] == 1
    engine.close()
    reopened = SQLiteStore(path, 3)
    assert reopened.load(["a", "b"]) == {"a": (2, ["one", "three"]), "b": (1, ["two"])}
    assert [r["index"] for r in acknowledged] == [0, 0]
    reopened.close()
    with pytest.raises(sqlite3.Error):   # the simulation really fills the file
        conn = sqlite3.connect(str(tmp_path / "t.db"))
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.execute("PRAGMA max_page_count = 2")
        conn.executemany("INSERT INTO t VALUES (?)", [(big,)] * 10)


# ---- 6: the token ----------------------------------------------------------------------------------
def _args(*argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


@one_recognizer   # the token is read and checked before the recognizer is consulted
def test_token_empty_file_env_and_non_ascii(checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("AGHMN_SERVE_TOKEN", raising=False)
    with pytest.raises(ValueError, match="token is empty"):
        config_from_args(_args("--checkpoint", checkpoint, "--token", ""))
    monkeypatch.setenv("AGHMN_SERVE_TOKEN", "")
    with pytest.raises(ValueError, match="token is empty"):
        config_from_args(_args("--checkpoint", checkpoint))
    monkeypatch.setenv("AGHMN_SERVE_TOKEN", "from-env")
    assert config_from_args(_args("--checkpoint", checkpoint)).token == "from-env"
    token_file = tmp_path / "token"
    token_file.write_text("pässwörd-€\n", encoding="utf-8")
    config = config_from_args(_args("--checkpoint", checkpoint, "--token-file", str(token_file)))
    assert config.token == "pässwörd-€"
    config.state = str(tmp_path / "state.db")
    with running_app(ServingApp(config)) as base:
        header = ("Bearer " + config.token).encode("utf-8")
        ok = httpx.post(base + "/v1/conversations/t/utterances", json={"text": "hi"},
                        headers=[(b"Authorization", header)])
        bad = httpx.post(base + "/v1/conversations/t/utterances", json={"text": "hi"},
                         headers={"Authorization": "Bearer p"})
    assert ok.status_code == 200 and bad.status_code == 401


# ---- 2, 3: head and URL limits, timeouts, the connection limit ---------------------------------------
@one_recognizer   # the protocol layer closes these connections before the app sees a request
def test_header_url_timeouts_and_connection_limits(checkpoint, tmp_path):
    from websockets.sync.client import connect

    serving = _serving(checkpoint, tmp_path, state="memory", max_header_bytes=4096, max_url_bytes=1024,
                       idle_timeout=0.5, request_timeout=0.5, max_connections=6)
    with running_app(serving) as base:
        port = int(base.rsplit(":", 1)[1])
        assert _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * 1_000_000 + b"\r\n\r\n")[9:12] == b"431"
        assert _raw(port, b"GET /healthz?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")[9:12] == b"414"
        assert _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[9:12] == b"200"
        start = time.perf_counter()
        assert _raw(port, b"POST /v1/utterances HTTP/1.1\r\nHost: x\r\nContent-Le")[9:12] == b"408"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
            assert idle.recv(10) == b""   # closed by the server, not by our timeout
        assert time.perf_counter() - start < 4
        with connect(base.replace("http", "ws") + "/v1/stream") as ws:   # a WebSocket outlives both
            time.sleep(1.2)
            ws.send(json.dumps({"id": "late", "text": "still here"}))
            assert json.loads(ws.recv(timeout=10))["index"] == 0
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        try:
            time.sleep(0.1)
            assert _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[9:12] == b"503"
        finally:
            for s in held:
                s.close()
        # The server sees the six closes in its own time (a loaded machine): poll, do not sleep;
        # each poll answered 503 is one more refusal for the count below.
        answers = []
        wait_until(lambda: answers.append(httpx.get(base + "/metrics")) or answers[-1].status_code == 200,
                   what="a connection slot after the six closed")
        metrics = answers[-1].text
    for line in ('aghmn_limit{limit="max_connections"} 6.0', 'aghmn_limit{limit="idle_timeout"} 0.5',
                 'aghmn_connections_closed_total{reason="header_too_large"} 1.0',
                 'aghmn_connections_closed_total{reason="url_too_long"} 1.0',
                 'aghmn_connections_closed_total{reason="request_timeout"} 1.0',
                 f'aghmn_connections_closed_total{{reason="max_connections"}} {len(answers):.1f}'):
        assert line in metrics, line


# ---- uvicorn's private protocol classes ---------------------------------------------------------------
def test_uvicorn_has_the_private_names_the_protocols_rely_on():
    """protocols.py subclasses uvicorn's private protocol classes: each name they override, call
    or read must exist on the installed uvicorn (an upgrade that drops one fails here by name)."""
    import uvicorn
    from uvicorn.server import ServerState

    from aghmn_runtime.serving import protocols

    async def app(scope, receive, send):
        raise AssertionError("never called")

    config = uvicorn.Config(app, http="httptools", ws="websockets-sansio", log_level="error")
    config.load()
    loop = asyncio.new_event_loop()
    try:
        missing = []
        for cls, names in protocols.PRIVATE_METHODS.items():
            missing += [f"{cls.__qualname__}.{n}()" for n in names if not callable(getattr(cls, n, None))]
        for cls, names in protocols.PRIVATE_ATTRIBUTES.items():
            instance = cls(config=config, server_state=ServerState(), app_state={}, _loop=loop)
            missing += [f"{cls.__qualname__}().{n}" for n in names if not hasattr(instance, n)]
        missing += [f"STATUS_LINE[{s}]" for s in protocols.ANSWERED_STATUSES if s not in protocols.STATUS_LINE]
    finally:
        loop.close()
    assert not missing, (f"uvicorn {uvicorn.__version__} lacks what aghmn_runtime/serving/protocols.py "
                         f"relies on: {', '.join(missing)}; adapt protocols.py before raising the "
                         "uvicorn cap in runtime/pyproject.toml")


# ---- a WebSocket message over --max-body-bytes ---------------------------------------------------------
@one_recognizer   # the size is checked before the message is parsed or reaches the recognizer
def test_websocket_message_over_the_limit_closes_with_1009(checkpoint, tmp_path):
    """The single server: a message of exactly --max-body-bytes is answered; one byte more closes
    the connection with 1009 ("message too big", RFC 6455), before the message is buffered. Behind
    a WebSocket layer that allows more (Ray Serve's proxy), the app answers it 413 instead and the
    connection stays open."""
    from websockets.exceptions import ConnectionClosedError
    from websockets.sync.client import connect

    limit = 1024
    message = json.dumps({"id": "big", "text": "hello"})

    def sized(n):   # JSON allows trailing whitespace: the same message, n bytes long
        return message + " " * (n - len(message))

    handle = {}
    with running_app(_serving(checkpoint, tmp_path, state="memory", max_body_bytes=limit), handle) as base:
        url = base.replace("http", "ws") + "/v1/stream"
        with connect(url, max_size=None) as ws:
            ws.send(sized(limit))
            assert json.loads(ws.recv(timeout=10))["index"] == 0
            ws.send(sized(limit).encode())   # a binary frame: the same limit
            assert json.loads(ws.recv(timeout=10))["index"] == 1
            ws.send(sized(limit + 1))
            with pytest.raises(ConnectionClosedError) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        handle["server"].config.ws_max_size = 16 << 20   # read per connection: Ray's proxy's size
        with connect(url, max_size=None) as ws:
            ws.send(sized(limit + 1))
            answer = json.loads(ws.recv(timeout=10))
            assert answer["status"] == 413 and f"larger than {limit} bytes" in answer["error"]
            ws.send(json.dumps({"id": "big", "text": "é" * 510}, ensure_ascii=False))   # 1,049 bytes
            assert json.loads(ws.recv(timeout=10))["status"] == 413
            ws.send(message)
            assert json.loads(ws.recv(timeout=10))["index"] == 2
