"""Ray Serve: two replicas over one Redis, conversation-affine routing, and a replica killed in
the middle of a run (its conversations continue elsewhere with identical predictions)."""
import asyncio
import os
import signal
import subprocess
import time

import httpx
import pytest

from aghmn_runtime.serving.app import ServeConfig

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


@pytest.mark.slow
def test_ray_replica_killed_mid_run_is_exact(tmp_path, redis_url):  # noqa: F811
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt", window=4)
    dialogues = synthetic_dialogues(30, seed=31, min_len=8)
    expect = offline_probabilities(recognizer_for(checkpoint), dialogues)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "ray.log", "w")
    proc = subprocess.Popen(serve_command(checkpoint, port, "--ray", "--replicas", "2", "--redis", redis_url),
                            env=dict(os.environ, PYTHONPATH=SOURCE_PATH), cwd=str(tmp_path), stdout=log, stderr=log)
    try:
        deadline = time.time() + 300
        pids = {}
        while len(pids) < 2:
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "ray.log").read_text()[-3000:]
            try:
                pids = _replica_pids(base)
            except httpx.HTTPError:
                time.sleep(1)
        total = sum(len(d.texts) for d in dialogues)
        answered = [0]
        killed = []
        # the replica /readyz names for the first dialogue (hashing on X-Session-Id); it is
        # killed halfway through that dialogue, before its next request, so that the conversation
        # has utterances left that another replica must answer from its Redis copy (killing at a
        # fraction of all answers raced: the dialogue could already be finished)
        victim_dialogue = dialogues[0]
        victim = httpx.get(base + "/readyz", headers={"X-Session-Id": victim_dialogue.id}).json()["pid"]

        def count(dialogue_id, index):
            answered[0] += 1
            if not killed and dialogue_id == victim_dialogue.id and index == len(victim_dialogue.texts) // 2:
                os.kill(victim, signal.SIGKILL)
                killed.append(answered[0])

        got = asyncio.run(stream_dialogues_http(
            base, dialogues, {d.id: 0 for d in dialogues}, {d.id: len(d.texts) for d in dialogues},
            seed=5, retry_until=time.time() + 240, affinity=True, on_answer=count))
        assert killed, "the replica was never killed"
        assert_matches_offline(got, dialogues, expect)
        flat = [r for d in dialogues for r in got[d.id][1:]]   # utterances of existing conversations
        hits = sum(not r["rebuilt"] for r in flat) / len(flat)
        # conversations of the killed replica moved and were rebuilt; counted over all of them:
        # in one CI run the victim's own conversation showed no rebuild (the replica that answered
        # /readyz for its session id need not be the one its stream requests went to), so it
        # alone is not a reliable witness
        rebuilt_after_kill = sum(r["rebuilt"] for r in flat)
        assert rebuilt_after_kill >= 1
        print(f"memory hit rate with a replica killed at {killed[0]}/{total}: {100 * hits:.1f}%")
        assert hits > 0.5
    finally:
        # SIGTERM: the CLI shuts Serve and Ray down; then make sure nothing is left
        stop_server(proc, signal.SIGTERM, timeout=120)
        log.close()
