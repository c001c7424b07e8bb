"""Ray Serve: two replicas over one Redis, conversation-affine routing, and a replica killed in
the middle of a run (its conversations continue elsewhere with identical predictions), on both
engines (a .aghmn file: replicas without torch); the start's failures and the stop by SIGTERM."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from aghmn_runtime.serving.app import ServeConfig
from aghmn_runtime.serving.memory import BOOKKEEPING_BYTES

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from runtime_common import export, import_runtime  # noqa: E402
from serving_fixtures import (SOURCE_PATH, assert_matches_offline, free_port, offline_probabilities, recognizer_for,
                              redis_url, save_tiny_checkpoint, serve_command, stop_server,  # noqa: F401
                              stream_dialogues_http, synthetic_dialogues)


def test_ray_app_needs_redis(tmp_path):
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    from aghmn_runtime.serving.ray_app import build_app

    config = ServeConfig(checkpoint=str(tmp_path / "x.pt"))
    with pytest.raises(ValueError, match="--ray needs --redis"):
        build_app(config, 2, None)
    with pytest.raises(ValueError, match="--ray needs --redis"):
        build_app(config, 2, str(tmp_path / "state.db"))
    with pytest.raises(ValueError, match="--replicas must be >= 1"):
        build_app(config, 0, "redis://127.0.0.1:1/0")


def _replica_pids(base: str, tries: int = 200) -> dict:
    """{pid: a session id routed to it}, probing /readyz with many X-Session-Id values."""
    pids = {}
    for i in range(tries):
        r = httpx.get(base + "/readyz", headers={"X-Session-Id": f"probe-{i}"}, timeout=10)
        if r.status_code == 200:
            pids.setdefault(r.json()["pid"], f"probe-{i}")
        if len(pids) == 2:
            break
    return pids


_NODELAY_PROBE = """
import asyncio, socket
from aghmn_runtime.serving.ray_app import _nodelay_on_default_protocol_sockets

async def accepted_nodelay():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)   # proto 0, as Serve makes it
    listener.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    got = loop.create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport):
            got.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    server = await loop.create_server(Probe, sock=listener)
    _, writer = await asyncio.open_connection(*listener.getsockname())
    value = await got
    writer.close()
    server.close()
    return value

_nodelay_on_default_protocol_sockets()
_nodelay_on_default_protocol_sockets()   # twice: wraps once
print(asyncio.run(accepted_nodelay()) != 0)
"""


def test_replica_ingress_connections_get_tcp_nodelay():
    """On asyncio's loop a replica's ingress connections must have TCP_NODELAY: Serve's listening
    socket has proto 0, for which asyncio leaves Nagle on, and a lone request then waited 44 ms
    for the proxy's delayed ACK (docs/results/serving-ray-tail.md)."""
    out = subprocess.run([sys.executable, "-c", _NODELAY_PROBE], env=dict(os.environ, PYTHONPATH=SOURCE_PATH),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True"]


def _maps_libtorch(pid: int) -> bool:
    """Whether the process has libtorch mapped (what importing torch does)."""
    with open(f"/proc/{pid}/maps") as f:
        return "libtorch" in f.read()


def _environ(pid: int) -> dict:
    """The environment the process was started with."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [item.decode(errors="replace").partition("=") for item in f.read().split(b"\0") if item]
    return {name: value for name, _, value in pairs}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _start_ray(tmp_path, model: str, port: int, *extra: str, env=None):
    """``aghmn-fast serve --ray`` of ``model`` in a subprocess, its output in ``tmp_path/ray.log``."""
    log = open(tmp_path / "ray.log", "w")
    proc = subprocess.Popen(serve_command(model, port, "--ray", *extra),
                            env=dict(os.environ, PYTHONPATH=SOURCE_PATH, **(env or {})), cwd=str(tmp_path),
                            stdout=log, stderr=log)
    log.close()
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["torch", "runtime"])
def test_ray_replica_killed_mid_run_is_exact(tmp_path, redis_url, engine):  # noqa: F811
    """Two replicas, one SIGKILLed mid-run: every prediction is exact. On a .aghmn file the
    replicas never load torch; SIGTERM then stops the whole deployment cleanly (exit 0)."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt", window=4)
    model = checkpoint
    # the replicas take the server's options: the runtime's run without the projection cache
    # (ServeConfig reaches them whole), and the budget's live-conversation cap shows which ring
    # store each engine's replicas hold
    options = ["--max-memory", "1M"]
    per_conversation = recognizer_for(checkpoint).bytes_per_conversation
    if engine == "runtime":
        rt = import_runtime()
        model = str(tmp_path / "tiny.aghmn")
        export(checkpoint, model)
        options += ["--projection-cache", "off"]
        per_conversation = rt.StreamingRecognizer(model, projection_cache=False).bytes_per_conversation
    dialogues = synthetic_dialogues(30, seed=31, min_len=8)
    # the runtime's probabilities equal torch's (bitwise for this reader): one offline reference
    expect = offline_probabilities(recognizer_for(checkpoint), dialogues)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start_ray(tmp_path, model, port, "--replicas", "2", "--redis", redis_url, *options)
    stopped = None
    try:
        deadline = time.time() + 300
        pids = {}
        while len(pids) < 2:
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "ray.log").read_text()[-3000:]
            try:
                pids = _replica_pids(base)
            except httpx.HTTPError:
                time.sleep(1)
        for session in pids.values():
            ready = httpx.get(base + "/readyz", headers={"X-Session-Id": session}, timeout=30).json()
            assert ready["max_live_conversations"] == (1 << 20) // (per_conversation + BOOKKEEPING_BYTES), ready
        total = sum(len(d.texts) for d in dialogues)
        answered = [0]
        killed = []
        # the replica that serves the first dialogue is killed halfway through that dialogue, before
        # its next request, so that the conversation has utterances left that another replica must
        # answer from its Redis copy (killing at a fraction of all answers raced: the dialogue could
        # already be finished). Which replica serves it is asked at that moment (/readyz, routed on
        # the same header), not before the run: on a loaded machine the ingress had marked the
        # replica named before the run down, all conversations went to the other, and the kill
        # moved none of them (CI, 0 rebuilt)
        victim_dialogue = dialogues[0]
        victims = []

        def count(dialogue_id, index):
            answered[0] += 1
            if not killed and dialogue_id == victim_dialogue.id and index == len(victim_dialogue.texts) // 2:
                victims.append(httpx.get(base + "/readyz", headers={"X-Session-Id": victim_dialogue.id},
                                         timeout=30).json()["pid"])
                os.kill(victims[0], signal.SIGKILL)
                killed.append(answered[0])

        got = asyncio.run(stream_dialogues_http(
            base, dialogues, {d.id: 0 for d in dialogues}, {d.id: len(d.texts) for d in dialogues},
            seed=5, retry_until=time.time() + 240, affinity=True, on_answer=count))
        assert killed, "the replica was never killed"
        survivor = next(pid for pid in pids if pid != victims[0])
        # in the replica processes: torch on a checkpoint, never on a .aghmn file
        assert _maps_libtorch(survivor) == (engine == "torch"), engine
        # the replicas run on asyncio's event loop, not uvloop's (ray_app.RAY_ENV_DEFAULTS: on
        # uvloop, new ingress connections waited about 1 s in a loaded replica's listen queue)
        assert _environ(survivor).get("RAY_USE_UVLOOP") == "0", engine
        print(f"{engine} replica RSS: {_rss_mb(survivor):.0f} MB")
        assert_matches_offline(got, dialogues, expect)
        flat = [r for d in dialogues for r in got[d.id][1:]]   # utterances of existing conversations
        hits = sum(not r["rebuilt"] for r in flat) / len(flat)
        # conversations of the killed replica moved and were rebuilt (counted over all of them: the
        # victim's own conversation may have moved to it after its last answer before the kill)
        rebuilt_after_kill = sum(r["rebuilt"] for r in flat)
        assert rebuilt_after_kill >= 1
        print(f"memory hit rate with a replica killed at {killed[0]}/{total}: {100 * hits:.1f}%")
        assert hits > 0.5
        # SIGTERM, as a process manager stops it: replicas drain, Serve and Ray stop, exit 0
        stopped = stop_server(proc, signal.SIGTERM, timeout=120)
    finally:
        stop_server(proc, signal.SIGKILL)
    out = (tmp_path / "ray.log").read_text()
    assert stopped == 0, out[-3000:]
    assert "Traceback" not in out and "SIGTERM received" not in out, out[-3000:]


@pytest.mark.slow
def test_ray_start_that_fails_is_one_line(tmp_path, redis_url):  # noqa: F811
    """A start that does not finish in time, or whose replicas fail (a store of another model):
    one line naming the cause, exit 1; a port in use: one line, exit 2, before Ray starts."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt", window=4)
    port = free_port()
    proc = _start_ray(tmp_path, checkpoint, port, "--replicas", "1", "--redis", redis_url,
                      env={"AGHMN_RAY_START_TIMEOUT": "0.5"})
    assert proc.wait(180) == 1
    out = (tmp_path / "ray.log").read_text()
    ours = [line for line in out.splitlines() if line.startswith("aghmn-fast serve:")]
    assert len(ours) == 1 and ours[0].startswith("aghmn-fast serve: error: Ray Serve did not start: "
                                                 "the application was not running within 0.5 s (load average"), out
    assert "Traceback" not in out and "ActorDiedError" not in out, out
    from aghmn_runtime.serving.redis_store import RedisStore
    RedisStore(redis_url, window=7)   # the store now belongs to a model with K = 7
    proc = _start_ray(tmp_path, checkpoint, free_port(), "--replicas", "1", "--redis", redis_url)
    assert proc.wait(300) == 1
    out = (tmp_path / "ray.log").read_text()
    ours = [line for line in out.splitlines() if line.startswith("aghmn-fast serve:")]
    assert len(ours) == 1 and ours[0].startswith(
        "aghmn-fast serve: error: Ray Serve did not start: a replica failed: ValueError: the Redis store at "
        f"{redis_url} (prefix 'aghmn:') holds conversations of a model with window K=7, this model has K=4"), out
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        proc = _start_ray(tmp_path, checkpoint, busy, "--redis", redis_url)
        assert proc.wait(60) == 2
    out = (tmp_path / "ray.log").read_text().strip()
    assert out == f"aghmn-fast serve: error: port {busy} on 127.0.0.1 is in use", out


@pytest.mark.slow
def test_ray_sigterm_while_starting_stops_cleanly(tmp_path, redis_url):  # noqa: F811
    """SIGTERM while Ray and Serve start (Ray's own handler would dump a native stack and abort
    with 134): the start stops, Ray shuts down, exit 0."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt", window=4)
    proc = _start_ray(tmp_path, checkpoint, free_port(), "--replicas", "1", "--redis", redis_url)
    deadline = time.time() + 120
    while "Started a local Ray instance" not in (tmp_path / "ray.log").read_text():
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "ray.log").read_text()[-3000:]
        time.sleep(0.05)
    code = stop_server(proc, signal.SIGTERM, timeout=120)
    out = (tmp_path / "ray.log").read_text()
    assert code == 0, out[-3000:]
    assert "SIGTERM received" not in out and "Traceback" not in out and "Ray Serve on" not in out, out[-3000:]
