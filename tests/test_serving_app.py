"""The HTTP/WebSocket app over real loopback HTTP (uvicorn in a thread): routes, exactness under
concurrency, bad input, the token, limits and metrics."""
import asyncio
import json
import time

import httpx
import pytest

from serving_fixtures import (assert_matches_offline, make_serving, meld_model, meld_test_third, offline_probabilities,
                              running_app, save_tiny_checkpoint, stream_dialogues_http, synthetic_dialogues)

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", window=4)


_serving = make_serving


def test_concurrent_clients_equal_offline(checkpoint, tmp_path):
    serving = _serving(checkpoint, tmp_path)
    dialogues = synthetic_dialogues(48, seed=4)
    expect = offline_probabilities(serving.engine.recognizer, dialogues)
    with running_app(serving) as base:
        got = asyncio.run(stream_dialogues_http(base, dialogues, {d.id: 0 for d in dialogues},
                                                {d.id: len(d.texts) for d in dialogues}))
        metrics = httpx.get(base + "/metrics").text
    assert_matches_offline(got, dialogues, expect)
    sizes = [line for line in metrics.splitlines() if line.startswith("aghmn_batch_size_count")]
    batches = float(sizes[0].split()[-1])
    assert batches < sum(len(d.texts) for d in dialogues)  # concurrent requests were batched


def test_meld_third_over_http_equals_offline(tmp_path):
    from aghmn_fast.models.checkpoint import save_checkpoint

    dialogues = meld_test_third()
    model = meld_model(dialogues)
    save_checkpoint(str(tmp_path / "meld.pt"), model, model.vocab, model.label_names)
    serving = _serving(str(tmp_path / "meld.pt"), tmp_path)
    expect = offline_probabilities(serving.engine.recognizer, dialogues)
    with running_app(serving) as base:
        got = asyncio.run(stream_dialogues_http(base, dialogues, {d.id: 0 for d in dialogues},
                                                {d.id: len(d.texts) for d in dialogues}))
    assert_matches_offline(got, dialogues, expect)


def test_batch_route_websocket_and_delete(checkpoint, tmp_path):
    from websockets.sync.client import connect

    serving = _serving(checkpoint, tmp_path)
    dialogues = synthetic_dialogues(6, seed=7, min_len=3)
    expect = offline_probabilities(serving.engine.recognizer, dialogues)
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


def test_bad_input_gets_clear_errors_and_touches_nothing(checkpoint, tmp_path):
    serving = _serving(checkpoint, tmp_path, token=TOKEN, max_text_chars=1000, max_batch_items=8)
    dialogue = synthetic_dialogues(1, seed=11, min_len=8, max_len=8)[0]
    expect = offline_probabilities(serving.engine.recognizer, [dialogue])
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


def test_options_are_validated(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="--max-batch must be >= 1"):
        _serving(checkpoint, tmp_path, max_batch=0)
    with pytest.raises(ValueError, match="--ttl must be > 0"):
        _serving(checkpoint, tmp_path, ttl_seconds=-1)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        _serving(str(tmp_path / "missing.pt"), tmp_path)


def test_idle_conversations_expire(checkpoint, tmp_path):
    serving = _serving(checkpoint, tmp_path, ttl_seconds=0.3)
    with running_app(serving) as base:
        url = base + "/v1/conversations/idle/utterances"
        assert httpx.post(url, json={"text": "hi"}).json()["index"] == 0
        assert httpx.post(url, json={"text": "again"}).json()["index"] == 1
        time.sleep(1.0)   # the sweeper runs every ttl / 4
        assert httpx.get(base + "/readyz").json()["live_conversations"] == 0
        assert httpx.post(url, json={"text": "hi"}).json()["index"] == 0   # a new conversation
