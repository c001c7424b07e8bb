"""``aghmn-fast serve`` as a real process: SIGTERM drains in-flight requests and a restart
restores every conversation; kill -9 loses no acknowledged utterance and a retry after it is
replayed; user errors are one line. On both recognizers (torch and the native runtime)."""
import asyncio
import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from serving_fixtures import (REPO, assert_matches_offline, checkpoint, recognizer_kind, free_port,  # noqa: F401
                              offline_probabilities, one_recognizer, reference, serve_command, stop_server, stream_dialogues_http,
                              subprocess_env, synthetic_dialogues, wait_for_port)


def _env():
    return subprocess_env()


def _start(checkpoint, port, state, *extra):
    proc = subprocess.Popen(serve_command(checkpoint, port, "--state", state, *extra), env=_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_port(port, 60, proc)
    return proc


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "aghmn_fast.cli", "serve", *args], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=120)


async def _until(condition, what: str, timeout: float = 60.0) -> None:
    """Poll ``condition()`` (blocking, so on a worker thread) until true; fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while not await loop.run_in_executor(None, condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.01)


def _receiving_batches(base: str) -> float:
    """The server's count of POST /v1/utterances requests whose body is arriving."""
    text = httpx.get(base + "/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith('aghmn_receiving_requests{route="batch"}'))
    return float(line.split()[-1])


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def test_sigterm_drains_in_flight_and_restart_restores(checkpoint, reference, tmp_path):
    dialogues = synthetic_dialogues(32, seed=21, min_len=6)
    expect = offline_probabilities(reference, dialogues)
    port, state = free_port(), str(tmp_path / "state.db")
    base = f"http://127.0.0.1:{port}"
    procs = [_start(checkpoint, port, state, "--max-body-bytes", "2000000")]
    big = [{"id": f"big-{i}", "text": " ".join(["hello there my friend"] * 15)} for i in range(1000)]

    async def scenario():
        async def restart():
            await asyncio.sleep(0.4)   # the clients are mid-dialogue
            # A request caught in flight: its headers and half its body are sent before SIGTERM,
            # the rest after; graceful shutdown must still answer it in full.
            body = json.dumps({"utterances": big}).encode()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"POST /v1/utterances HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
            await writer.drain()
            # SIGTERM once the server is reading this body (a request it has not seen yet would
            # be closed unanswered, rightly), the rest of the body once shutdown has begun
            await _until(lambda: _receiving_batches(base) == 1, "the server reads the big request")
            procs[0].send_signal(signal.SIGTERM)
            await _until(lambda: _refused(port), "the server stops accepting connections")
            writer.write(body[len(body) // 2:])
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            response = (int(head[9:12]), json.loads(await reader.readexactly(length)))
            writer.close()
            code = await asyncio.get_running_loop().run_in_executor(None, procs[0].wait, 60)
            procs.append(_start(checkpoint, port, state, "--max-body-bytes", "2000000"))
            return response, code

        clients = stream_dialogues_http(base, dialogues, {d.id: 0 for d in dialogues},
                                        {d.id: len(d.texts) for d in dialogues}, seed=2,
                                        retry_until=time.time() + 120)
        return await asyncio.gather(clients, restart())

    try:
        got, (big_response, code) = asyncio.run(scenario())
        assert code == 0, procs[0].stderr.read()
        assert big_response[0] == 200
        assert [p["index"] for p in big_response[1]["predictions"]] == [0] * 1000
        assert_matches_offline(got, dialogues, expect)
        # the big request's conversations were saved before the first process exited
        r = httpx.post(f"{base}/v1/conversations/big-7/utterances", json={"text": "and again"})
        assert r.json()["index"] == 1
        assert httpx.get(base + "/readyz").json()["stored_conversations"] == len(dialogues) + 1000
    finally:
        for p in procs:
            stop_server(p)


def test_kill_9_loses_no_acknowledged_utterance(checkpoint, reference, tmp_path):
    dialogues = synthetic_dialogues(24, seed=22, min_len=4)
    expect = offline_probabilities(reference, dialogues)
    port, state = free_port(), str(tmp_path / "state.db")
    base = f"http://127.0.0.1:{port}"
    half = {d.id: len(d.texts) // 2 for d in dialogues}
    proc = _start(checkpoint, port, state)
    try:
        first = asyncio.run(stream_dialogues_http(base, dialogues, {d.id: 0 for d in dialogues}, half))
        assert stop_server(proc, signal.SIGKILL) == -signal.SIGKILL
        proc = _start(checkpoint, port, state)
        retried = asyncio.run(_retry_last_with_bystanders(base, dialogues, half))
        second = asyncio.run(stream_dialogues_http(base, dialogues, half, {d.id: len(d.texts) for d in dialogues}))
    finally:
        stop_server(proc)
    got = {d.id: first[d.id] + second[d.id] for d in dialogues}
    assert_matches_offline(got, dialogues, expect)
    # every retry was answered again, exactly, without counting the utterance twice
    assert set(retried) == {d.id for d in dialogues}
    for cid, answer in retried.items():
        assert answer["replayed"] and answer["index"] == half[cid] - 1
        assert answer["label"] == first[cid][-1]["label"]
        for label, p in first[cid][-1]["probabilities"].items():
            assert abs(answer["probabilities"][label] - p) <= 1e-6


async def _retry_last_with_bystanders(base, dialogues, half):
    """After a restart, every client retries its last answered utterance (as a client does whose
    answer was lost), half of them inside one batch request between 30 bystanders, half as lone
    requests concurrent with 30 more bystanders; returns {id: the retry's answer}. Every
    bystander must be answered 200."""
    def retry(d):
        return {"id": d.id, "text": d.texts[half[d.id] - 1], "index": half[d.id] - 1}
    batch_part, lone_part = dialogues[::2], dialogues[1::2]
    items = ([{"id": f"by-{i}", "text": "hello there", "index": 0} for i in range(15)]
             + [retry(d) for d in batch_part] + [{"id": f"by-{i}", "text": "hi", "index": 0} for i in range(15, 30)])
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=100)) as client:
        lone = [client.post(f"/v1/conversations/{d.id}/utterances", json=retry(d)) for d in lone_part]
        others = [client.post(f"/v1/conversations/lone-by-{i}/utterances", json={"text": "hello", "index": 0})
                  for i in range(30)]
        batch, *rest = await asyncio.gather(client.post("/v1/utterances", json={"utterances": items}), *lone, *others)
    assert batch.status_code == 200, batch.text
    predictions = batch.json()["predictions"]
    assert [p.get("status", 200) for p in predictions] == [200] * len(items), predictions
    assert all(r.status_code == 200 for r in rest), [r.text for r in rest if r.status_code != 200]
    answers = {p["id"]: p for p in predictions if not p["id"].startswith("by-")}
    answers.update((d.id, r.json()) for d, r in zip(lone_part, rest))
    return answers


# The CLI's refusals are decided before a recognizer answers anything; the one that reads the
# model's size (--max-memory 1K) is checked on both recognizers by test_serving_app.py's
# test_a_budget_below_one_conversation_refuses_to_start.
@one_recognizer
def test_user_errors_are_one_line_and_exit_2(checkpoint, tmp_path, capsys):
    from aghmn_fast.cli import main

    r = _run_cli("--checkpoint", str(tmp_path / "nope.pt"))   # a real process: no traceback
    assert r.returncode == 2 and r.stderr == f"aghmn-fast serve: error: checkpoint not found: {tmp_path / 'nope.pt'}\n"

    def error_of(*args):
        capsys.readouterr()
        assert main(["serve", *args]) == 2
        return capsys.readouterr().err

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert error_of("--checkpoint", checkpoint, "--port", str(port), "--state", "memory") == (
            f"aghmn-fast serve: error: port {port} on 127.0.0.1 is in use\n")
    assert error_of("--checkpoint", checkpoint, "--max-batch", "0") == (
        "aghmn-fast serve: error: --max-batch must be >= 1, got 0\n")
    assert error_of("--checkpoint", checkpoint, "--max-memory", "lots") == (
        "aghmn-fast serve: error: --max-memory must be a size such as 512M, 2G or 1500000000 (bytes), got 'lots'\n")
    err = error_of("--checkpoint", checkpoint, "--port", "0", "--state", "memory", "--max-memory", "1K")
    assert err.startswith(f"aghmn-fast serve: error: --max-memory 1.0 KiB cannot hold one conversation of {checkpoint}: "
                          "each needs ") and err.count("\n") == 1
    assert error_of("--checkpoint", checkpoint, "--port", "0", "--redis", "redis://x") == (
        "aghmn-fast serve: error: --redis is for --ray; for one server use --state redis://...\n")
    (tmp_path / "garbage.pt").write_bytes(b"nope")
    # (the loader's message is the checkpoint module's; it may quote torch over several lines)
    err = error_of("--checkpoint", str(tmp_path / "garbage.pt"), "--port", "0", "--state", "memory")
    assert err.startswith("aghmn-fast serve: error: ") and "garbage.pt" in err
    err = error_of("--checkpoint", checkpoint, "--port", "0", "--state", str(tmp_path / "no" / "dir.db"))
    assert err.startswith("aghmn-fast serve: error: state directory not found")
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--max-wait-ms", "--replicas", "--redis", "--token", "--ttl", "--max-conversations", "--max-memory"):
        assert option in help_text
