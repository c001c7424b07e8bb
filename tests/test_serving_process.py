"""``aghmn-fast serve`` as a real process: SIGTERM drains in-flight requests and a restart
restores every conversation; kill -9 loses no acknowledged utterance; user errors are one line."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from serving_fixtures import (REPO, SOURCE_PATH, assert_matches_offline, free_port, offline_probabilities, recognizer_for,
                              save_tiny_checkpoint, serve_command, stop_server, stream_dialogues_http,
                              synthetic_dialogues, wait_for_port)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", window=4)


def _env():
    return dict(os.environ, PYTHONPATH=SOURCE_PATH + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _start(checkpoint, port, state, *extra):
    proc = subprocess.Popen(serve_command(checkpoint, port, "--state", state, *extra), env=_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_port(port, 60, proc)
    return proc


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "aghmn_fast.cli", "serve", *args], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_sigterm_drains_in_flight_and_restart_restores(checkpoint, tmp_path):
    dialogues = synthetic_dialogues(32, seed=21, min_len=6)
    expect = offline_probabilities(recognizer_for(checkpoint), dialogues)
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
            await asyncio.sleep(0.3)
            procs[0].send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
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


def test_kill_9_loses_no_acknowledged_utterance(checkpoint, tmp_path):
    dialogues = synthetic_dialogues(24, seed=22, min_len=4)
    expect = offline_probabilities(recognizer_for(checkpoint), dialogues)
    port, state = free_port(), str(tmp_path / "state.db")
    base = f"http://127.0.0.1:{port}"
    half = {d.id: len(d.texts) // 2 for d in dialogues}
    proc = _start(checkpoint, port, state)
    try:
        first = asyncio.run(stream_dialogues_http(base, dialogues, {d.id: 0 for d in dialogues}, half))
        assert stop_server(proc, signal.SIGKILL) == -signal.SIGKILL
        proc = _start(checkpoint, port, state)
        second = asyncio.run(stream_dialogues_http(base, dialogues, half, {d.id: len(d.texts) for d in dialogues}))
    finally:
        stop_server(proc)
    got = {d.id: first[d.id] + second[d.id] for d in dialogues}
    assert_matches_offline(got, dialogues, expect)


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
    for option in ("--max-wait-ms", "--replicas", "--redis", "--token", "--ttl", "--max-conversations"):
        assert option in help_text
