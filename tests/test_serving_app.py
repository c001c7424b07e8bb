"""The HTTP/WebSocket app over real loopback HTTP (uvicorn in a thread): routes, exactness under
concurrency, bad input, the token, limits and metrics; on both recognizers (torch and the native
runtime, one set of weights)."""
import asyncio
import json

import httpx
import pytest

from aghmn_runtime.serving.memory import BOOKKEEPING_BYTES, default_budget, format_size, machine_memory, parse_size

from serving_fixtures import (FailingRecognizer, ManualClock, assert_matches_offline, checkpoint, recognizer_kind,  # noqa: F401
                              make_serving, meld_model, one_recognizer, meld_test_third, offline_probabilities, recognizer_for,
                              reference, running_app, stream_dialogues_http, synthetic_dialogues, wait_until)

TOKEN = "s3cret-token"


_serving = make_serving


def test_concurrent_clients_equal_offline(checkpoint, reference, tmp_path):
    serving = _serving(checkpoint, tmp_path)
    dialogues = synthetic_dialogues(48, seed=4)
    expect = offline_probabilities(reference, dialogues)
    with running_app(serving) as base:
        got = asyncio.run(stream_dialogues_http(base, dialogues, {d.id: 0 for d in dialogues},
                                                {d.id: len(d.texts) for d in dialogues}))
        metrics = httpx.get(base + "/metrics").text
    assert_matches_offline(got, dialogues, expect)
    sizes = [line for line in metrics.splitlines() if line.startswith("aghmn_batch_size_count")]
    batches = float(sizes[0].split()[-1])
    assert batches < sum(len(d.texts) for d in dialogues)  # concurrent requests were batched


def test_meld_third_over_http_equals_offline(tmp_path, recognizer_kind):
    from aghmn_fast.export import export_checkpoint
    from aghmn_fast.models.checkpoint import save_checkpoint

    dialogues = meld_test_third()
    model = meld_model(dialogues)
    save_checkpoint(str(tmp_path / "meld.pt"), model, model.vocab, model.label_names)
    export_checkpoint(str(tmp_path / "meld.pt"), str(tmp_path / "meld.aghmn"))
    serving = _serving(str(tmp_path / ("meld.pt" if recognizer_kind == "torch" else "meld.aghmn")), tmp_path)
    expect = offline_probabilities(recognizer_for(str(tmp_path / "meld.pt")), dialogues)
    with running_app(serving) as base:
        got = asyncio.run(stream_dialogues_http(base, dialogues, {d.id: 0 for d in dialogues},
                                                {d.id: len(d.texts) for d in dialogues}))
    assert_matches_offline(got, dialogues, expect)


def test_batch_route_websocket_and_delete(checkpoint, reference, tmp_path):
    from websockets.sync.client import connect

    serving = _serving(checkpoint, tmp_path)
    dialogues = synthetic_dialogues(6, seed=7, min_len=3)
    expect = offline_probabilities(reference, dialogues)
    got = {d.id: [] for d in dialogues}
    with running_app(serving) as base:
        # the first utterance of every dialogue in one batch request
        r = httpx.post(base + "/v1/utterances",
                       json={"utterances": [{"id": d.id, "text": d.texts[0]} for d in dialogues]})
        assert r.status_code == 200, r.text
        for p in r.json()["predictions"]:
            got[p["id"]].append(p)
        # the rest over one WebSocket, pipelined: all messages sent before any answer is read
        with connect(base.replace("http", "ws") + "/v1/stream") as ws:
            sent = [(d.id, t) for d in dialogues for t in d.texts[1:]]
            for cid, text in sent:
                ws.send(json.dumps({"id": cid, "text": text}))
            ws.send("{not json")
            answers = [json.loads(ws.recv(timeout=30)) for _ in range(len(sent) + 1)]
        assert [a["id"] for a in answers[:-1]] == [cid for cid, _ in sent]
        assert answers[-1]["status"] == 400 and "not valid JSON" in answers[-1]["error"]
        for a in answers[:-1]:
            got[a["id"]].append(a)
        assert_matches_offline(got, dialogues, expect)
        d0 = dialogues[0].id
        assert httpx.delete(f"{base}/v1/conversations/{d0}").json() == {"id": d0, "deleted": True}
        assert httpx.delete(f"{base}/v1/conversations/{d0}").status_code == 404
        again = httpx.post(f"{base}/v1/conversations/{d0}/utterances", json={"text": "hi"}).json()
        assert again["index"] == 0


def test_bad_input_gets_clear_errors_and_touches_nothing(checkpoint, reference, tmp_path):
    serving = _serving(checkpoint, tmp_path, token=TOKEN, max_text_chars=1000, max_batch_items=8)
    dialogue = synthetic_dialogues(1, seed=11, min_len=8, max_len=8)[0]
    expect = offline_probabilities(reference, [dialogue])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    got = []
    with running_app(serving) as base, httpx.Client(base_url=base, headers=auth) as c:
        url = f"/v1/conversations/{dialogue.id}/utterances"
        bad = [
            (lambda: c.post(url, content=b"{\"text\": "), 400, "not valid JSON"),
            (lambda: c.post(url, content=b"\xff\xfe"), 400, "not valid JSON"),
            (lambda: c.post(url, json={"txt": "hi"}), 422, "'text'"),
            (lambda: c.post(url, json=["hi"]), 422, "'text'"),
            (lambda: c.post(url, json={"text": 5}), 422, "must be a string"),
            (lambda: c.post(url, json={"text": "   "}), 422, "empty"),
            (lambda: c.post(url, json={"text": "x" * 1_000_000}), 413, "larger than 65536 bytes"),
            (lambda: c.post(url, json={"text": "x" * 2000}), 413, "longer than 1000"),
            (lambda: c.post("/v1/conversations/bad%20id/utterances", json={"text": "hi"}), 400, "conversation id"),
            (lambda: c.post("/v1/nothing", json={"text": "hi"}), 404, "no route"),
            (lambda: c.get(url), 405, "not allowed"),
            (lambda: c.post(url, json={"text": "hi"}, headers={"Authorization": "Bearer wrong"}), 401, "invalid"),
            (lambda: httpx.post(base + url, json={"text": "hi"}), 401, "missing bearer token"),
            (lambda: httpx.get(base + "/metrics"), 401, "missing"),
            (lambda: c.post("/v1/utterances", json={"utterances": [{"id": "a", "text": "hi"}] * 9}), 413, "more than 8"),
            (lambda: c.post("/v1/utterances", json={"utterances": [{"id": "a", "text": "hi"}, {"id": "b"}]}),
             422, "utterances[1]"),
            (lambda: c.post("/v1/utterances", json={"items": []}), 422, "utterances"),
        ]
        for n, text in enumerate(dialogue.texts):
            if n < len(bad):  # bad requests between the good ones of the conversation
                for send, status, message in bad[n::len(dialogue.texts)]:
                    r = send()
                    assert r.status_code == status, (r.status_code, r.text)
                    assert message in r.json()["error"]
            r = c.post(url, json={"text": text})
            assert r.status_code == 200, r.text
            got.append(r.json())
        assert httpx.get(base + "/healthz").json() == {"status": "ok"}      # no token needed
        assert httpx.get(base + "/readyz").json()["live_conversations"] == 1
        metrics = c.get("/metrics").text
    assert_matches_offline({dialogue.id: got}, [dialogue], expect)
    assert 'aghmn_rejections_total{reason="unauthorized"} 3.0' in metrics
    assert 'aghmn_rejections_total{reason="too_large"} 3.0' in metrics


@one_recognizer   # the token and the size are checked before the recognizer is consulted
def test_websocket_token(checkpoint, tmp_path):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    serving = _serving(checkpoint, tmp_path, token=TOKEN)
    with running_app(serving) as base:
        ws_url = base.replace("http", "ws") + "/v1/stream"
        with pytest.raises(InvalidStatus):
            connect(ws_url)
        with connect(ws_url + f"?token={TOKEN}") as ws:
            ws.send(json.dumps({"id": "w", "text": "hello"}))
            assert json.loads(ws.recv(timeout=10))["index"] == 0
        with connect(ws_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            ws.send(json.dumps({"id": "w", "text": "x" * 20_000}))
            assert json.loads(ws.recv(timeout=10))["status"] == 413


def test_flood_and_capacity_are_refused_cleanly(checkpoint, tmp_path):
    serving = _serving(checkpoint, tmp_path, max_queue=4, max_conversations=20, state="memory")

    async def flood(base):
        async with httpx.AsyncClient(base_url=base, timeout=30,
                                     limits=httpx.Limits(max_connections=300)) as client:
            rs = await asyncio.gather(*[client.post(f"/v1/conversations/f{i % 10}/utterances",
                                                    json={"text": "hello there " * 20}) for i in range(300)])
            live = (await client.get("/readyz")).json()["live_conversations"]
            new = [await client.post(f"/v1/conversations/n{i}/utterances", json={"text": "hi"})
                   for i in range(25)]
            return rs, live, new

    with running_app(serving) as base:
        rs, live, new = asyncio.run(flood(base))
        codes = [r.status_code for r in rs]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
        assert all("overloaded" in r.json()["error"] for r in rs if r.status_code == 503)
        assert all(r.headers["retry-after"] == "1" for r in rs if r.status_code == 503)
        # the conversations' indexes count only the accepted utterances
        accepted = sorted(r.json()["index"] for r in rs if r.status_code == 200 and r.json()["id"] == "f0")
        assert accepted == list(range(len(accepted)))
        new_codes = [r.status_code for r in new]
        assert live == len({r.json()["id"] for r in rs if r.status_code == 200})
        assert new_codes == [200] * (20 - live) + [429] * (5 + live)
        assert "too many live conversations" in next(r for r in new if r.status_code == 429).json()["error"]
        assert httpx.get(base + "/readyz").status_code == 200   # still serving
        # a live conversation still gets answers (which f-conversations were accepted depends on
        # the flood's timing: one of those)
        live_id = next(r.json()["id"] for r in rs if r.status_code == 200)
        assert httpx.post(base + f"/v1/conversations/{live_id}/utterances",
                          json={"text": "ok"}).status_code == 200


@one_recognizer   # the options are refused before a recognizer is loaded
def test_options_are_validated(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="--max-batch must be >= 1"):
        _serving(checkpoint, tmp_path, max_batch=0)
    with pytest.raises(ValueError, match="--ttl must be > 0"):
        _serving(checkpoint, tmp_path, ttl_seconds=-1)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        _serving(str(tmp_path / "missing.pt"), tmp_path)


def test_idle_conversations_expire(checkpoint, tmp_path):
    serving = _serving(checkpoint, tmp_path, ttl_seconds=0.2)   # the sweeper runs every ttl / 4
    clock = serving.engine.store.clock = serving.engine.clock = ManualClock()
    with running_app(serving) as base:
        url = base + "/v1/conversations/idle/utterances"
        assert httpx.post(url, json={"text": "hi"}).json()["index"] == 0
        assert httpx.post(url, json={"text": "again"}).json()["index"] == 1
        assert httpx.get(base + "/readyz").json()["live_conversations"] == 1
        clock.advance(0.3)
        wait_until(lambda: httpx.get(base + "/readyz").json()["live_conversations"] == 0, what="the sweep")
        assert httpx.post(url, json={"text": "hi"}).json()["index"] == 0   # a new conversation


def test_memory_budget_caps_live_conversations_and_evicts_to_the_store(checkpoint, reference, tmp_path):
    """--max-memory of ten conversations: never more than ten in memory; the least recently used
    are evicted to the store and rebuilt exactly when they come back."""
    probe = _serving(checkpoint, tmp_path, state="memory")
    per = probe.bytes_per_conversation
    assert per == probe.engine.recognizer.bytes_per_conversation + BOOKKEEPING_BYTES
    assert probe.memory_budget == default_budget() and probe.engine.memory_cap == 20_000
    probe.engine.close()
    serving = _serving(checkpoint, tmp_path, max_memory=10 * per + per // 2)
    assert serving.engine.memory_cap == 10
    dialogues = synthetic_dialogues(15, seed=12, min_len=4, max_len=4)
    expect = offline_probabilities(reference, dialogues)
    got = {d.id: [] for d in dialogues}
    with running_app(serving) as base, httpx.Client(base_url=base) as client:
        for n in range(4):
            for d in dialogues:
                r = client.post(f"/v1/conversations/{d.id}/utterances", json={"text": d.texts[n]})
                assert r.status_code == 200, r.text
                got[d.id].append(r.json())
                assert client.get("/readyz").json()["live_conversations"] <= 10
        ready = client.get("/readyz").json()
        metrics = client.get("/metrics").text
    assert_matches_offline(got, dialogues, expect)
    assert sum(r["rebuilt"] for rs in got.values() for r in rs) == 15 * 3   # each evicted by the next five
    assert ready["max_live_conversations"] == 10 and ready["stored_conversations"] == 15
    assert 'aghmn_limit{limit="max_live_conversations"} 10.0' in metrics
    assert f'aghmn_limit{{limit="max_memory"}} {float(10 * per + per // 2)}' in metrics
    state = serving.engine.recognizer.store_bytes
    assert f"aghmn_state_bytes {float(state)}" in metrics and state <= 16 * serving.engine.recognizer.bytes_per_conversation


def test_a_budget_below_one_conversation_refuses_to_start(checkpoint, tmp_path):
    per = _serving(checkpoint, tmp_path, state="memory").bytes_per_conversation
    with pytest.raises(ValueError, match=r"--max-memory .* cannot hold one conversation of .*: each needs "):
        _serving(checkpoint, tmp_path, max_memory=per - 1)
    assert not (tmp_path / "state.db").exists()   # refused before the store was opened
    with pytest.raises(ValueError, match="--max-memory must be >= 1"):
        _serving(checkpoint, tmp_path, max_memory=0)


def test_sizes_and_the_default_budget():
    assert [parse_size(s) for s in ("1000", "512M", "2G", "1.5GiB", "64k", "1MB", " 3 kib ")] == [
        1000, 512 << 20, 2 << 30, 3 << 29, 64 << 10, 10 ** 6, 3 << 10]
    for bad in ("", "lots", "-1G", "2X", "1e9", "0", "0.1"):
        with pytest.raises(ValueError, match="--max-memory must be"):
            parse_size(bad)
    assert format_size(26_880) == "26.2 KiB" and format_size(3 << 30) == "3.0 GiB"
    total = machine_memory()
    assert total is not None and default_budget() == total // 2


def test_a_recognizer_failure_answers_only_its_conversation(checkpoint, reference, tmp_path):
    """The recognizer raises on one conversation's utterance (injected): that request gets 500
    ``internal error: RuntimeError``, every other request of the same micro-batches is served,
    exactly; the failed utterance is not counted."""
    serving = _serving(checkpoint, tmp_path)
    serving.engine.recognizer = FailingRecognizer(serving.engine.recognizer)
    dialogues = synthetic_dialogues(30, seed=13, min_len=3, max_len=3)
    expect = offline_probabilities(reference, dialogues)

    async def scenario(base):
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=64)) as c:
            got = {d.id: [] for d in dialogues}
            victims = []
            for n in range(3):
                rs = await asyncio.gather(
                    c.post("/v1/conversations/victim/utterances", json={"text": "boom"}),
                    c.post("/v1/utterances", json={"utterances": [
                        {"id": d.id, "text": d.texts[n]} for d in dialogues[:10]] + [{"id": "victim2", "text": "boom"}]}),
                    *[c.post(f"/v1/conversations/{d.id}/utterances", json={"text": d.texts[n]}) for d in dialogues[10:]])
                victims.append(rs[0])
                batch = rs[1].json()["predictions"]
                assert rs[1].status_code == 200 and batch[-1] == {
                    "id": "victim2", "error": "internal error: RuntimeError", "status": 500}
                for d, p in zip(dialogues[:10], batch):
                    got[d.id].append(p)
                for d, r in zip(dialogues[10:], rs[2:]):
                    assert r.status_code == 200, r.text
                    got[d.id].append(r.json())
            after = await c.post("/v1/conversations/victim/utterances", json={"text": "fine"})
            return got, victims, after, (await c.get("/metrics")).text

    with running_app(serving) as base:
        got, victims, after, metrics = asyncio.run(scenario(base))
    assert [(r.status_code, r.json()) for r in victims] == [(500, {"error": "internal error: RuntimeError"})] * 3
    assert after.status_code == 200 and after.json()["index"] == 0
    assert_matches_offline(got, dialogues, expect)
    assert serving.engine.recognizer.failures >= 3
    assert 'aghmn_rejections_total{reason="internal"} 3.0' in metrics
