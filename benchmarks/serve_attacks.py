#!/usr/bin/env python
"""Adversarial clients against a real ``aghmn-fast serve`` on 127.0.0.1: one line per case.

Each case starts from a server this script starts itself (a small random model, SQLite state in a
temporary directory) and tries what a hostile or broken client would: texts and ids that are not
valid Unicode, ids with a trailing newline, deeply nested JSON, huge headers and URLs, idle and
half-sent connections, a connection flood, bad WebSocket messages and binary frames, SIGTERM with
pipelined WebSocket messages, replays, retries after a kill -9 beside bystanders, unknown
methods, duplicate ids, an empty token. Every case runs on both engines (the checkpoint, and its
``.aghmn`` export on the native runtime) unless ``--engine`` picks one. Every case is bounded in
requests and seconds; the verdict ``ok`` means the server behaved as docs/SERVING.md promises,
``FAIL`` says what went wrong.

    python benchmarks/serve_attacks.py [--checkpoint CKPT] [--engine torch|runtime|both] [--cases a,b,...]

Only 127.0.0.1 is contacted. Every process started here is stopped before exit.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "runtime"), os.path.join(REPO, "tests")]

import httpx  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from serving_fixtures import (build_runtime, free_port, save_tiny_checkpoint, serve_command,  # noqa: E402
                              subprocess_env, wait_for_port)

# Options of the hardened server; the script passes only those the server under test knows.
LIMITS = {"--idle-timeout": "2", "--request-timeout": "3", "--max-connections": "200"}


class Server:
    """``aghmn-fast serve`` in a subprocess on a free loopback port."""

    def __init__(self, checkpoint: str, state: str, *extra: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = subprocess_env()
        env.pop("AGHMN_SERVE_TOKEN", None)
        self.proc = subprocess.Popen(serve_command(checkpoint, self.port, "--state", state, *extra),
                                     env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        wait_for_port(self.port, 60, self.proc)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self) -> str:
        return self.proc.stderr.read() if self.proc.poll() is not None else ""


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> Tuple[int, float]:
    """Send raw bytes, return (HTTP status or 0 if closed without an answer, seconds)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        try:
            head = s.recv(64)
        except OSError:
            head = b""
    status = int(head[9:12]) if head.startswith(b"HTTP/1.") else 0
    return status, time.perf_counter() - start


def post(base: str, path: str, body: bytes, timeout: float = 10.0) -> httpx.Response:
    return httpx.post(base + path, content=body, headers={"Content-Type": "application/json"}, timeout=timeout)


def normal_latency_ms(base: str) -> float:
    start = time.perf_counter()
    r = httpx.post(base + "/v1/conversations/probe/utterances", json={"text": "hello"}, timeout=30)
    assert r.status_code in (200, 409), r.text
    return (time.perf_counter() - start) * 1e3


# ---- cases: each returns (observation, ok) -------------------------------------------------------
def case_lone_surrogate(s: Server, ctx) -> Tuple[str, bool]:
    """One client sends texts with a lone surrogate while 20 clients send 600 ordinary ones."""
    bad_body = b'{"text": "\\ud800 hi"}'

    async def run():
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as c:
            async def bad():
                statuses = []
                for i in range(60):
                    r = await c.post(f"/v1/conversations/evil-{i % 5}/utterances", content=bad_body,
                                     headers={"Content-Type": "application/json"})
                    statuses.append(r.status_code)
                return statuses

            async def good(k):
                failed = 0
                for i in range(30):
                    r = await c.post(f"/v1/conversations/good-{k}/utterances", json={"text": f"hi {i}"})
                    failed += r.status_code != 200
                return failed
            return await asyncio.gather(bad(), *[good(k) for k in range(20)])
    bad_statuses, *good_failed = asyncio.run(run())
    failed = sum(good_failed)
    return (f"bad texts -> {sorted(set(bad_statuses))}; ordinary requests failed: {failed}/600",
            failed == 0 and set(bad_statuses) == {422})


def case_surrogate_in_batch(s: Server, ctx) -> Tuple[str, bool]:
    body = b'{"utterances": [{"id": "b1", "text": "fine"}, {"id": "b2", "text": "\\udfff"}]}'
    r = post(s.base, "/v1/utterances", body)
    return f"batch with one bad text -> {r.status_code}", r.status_code == 422


def case_id_newline(s: Server, ctx) -> Tuple[str, bool]:
    a = post(s.base, "/v1/conversations/abc%0A/utterances", b'{"text": "hi"}').status_code
    b = post(s.base, "/v1/utterances", b'{"utterances": [{"id": "abc\\n", "text": "hi"}]}').status_code
    d = httpx.delete(s.base + "/v1/conversations/abc%0A").status_code
    with connect(f"ws://127.0.0.1:{s.port}/v1/stream", open_timeout=5) as ws:
        ws.send(json.dumps({"id": "abc\n", "text": "hi"}))
        w = json.loads(ws.recv(timeout=5)).get("status")
    return f"path {a}, batch {b}, delete {d}, websocket {w}", (a, b, d, w) == (400, 400, 400, 400)


def case_deep_json(s: Server, ctx) -> Tuple[str, bool]:
    deep = b'{"text": ' + b"[" * 10000 + b"]" * 10000 + b"}"
    a = post(s.base, "/v1/conversations/deep/utterances", deep).status_code
    b = post(s.base, "/v1/utterances", b'{"utterances": ' + b"[" * 10000 + b"]" * 10000 + b"}").status_code
    return f"utterance {a}, batch {b}", (a, b) == (400, 400)


def _bloat_while_serving(s: Server, request: bytes) -> Tuple[int, float, float]:
    """Send ``request`` on one connection while timing an ordinary request on another."""
    result = {}

    def attacker():
        result["status"], result["seconds"] = raw_exchange(s.port, request, timeout=30)
    import threading
    t = threading.Thread(target=attacker)
    t.start()
    time.sleep(0.05)
    latency = normal_latency_ms(s.base)
    t.join(40)
    return result.get("status", 0), result.get("seconds", 0.0), latency


def case_huge_header(s: Server, ctx) -> Tuple[str, bool]:
    big = b"x" * (16 << 20)
    status, seconds, latency = _bloat_while_serving(
        s, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + big + b"\r\n\r\n")
    return (f"16 MB header -> {status} in {seconds:.2f} s; an ordinary request meanwhile {latency:.1f} ms",
            status == 431)


def case_huge_url(s: Server, ctx) -> Tuple[str, bool]:
    big = b"a" * (16 << 20)
    status, seconds, latency = _bloat_while_serving(s, b"GET /healthz?" + big + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    return (f"16 MB URL -> {status} in {seconds:.2f} s; an ordinary request meanwhile {latency:.1f} ms",
            status == 414)


def _closed_within(port: int, send: bytes, seconds: float) -> Tuple[bool, float]:
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(send) if send else None
        c.settimeout(seconds)
        try:
            while c.recv(4096):
                pass
            return True, time.perf_counter() - start
        except (socket.timeout, TimeoutError):
            return False, time.perf_counter() - start
        except OSError:
            return True, time.perf_counter() - start


def case_idle_connection(s: Server, ctx) -> Tuple[str, bool]:
    closed, t = _closed_within(s.port, b"", 6)
    return (f"a connection that sends nothing: {'closed after %.1f s' % t if closed else 'still open after 6 s'}",
            closed)


def case_half_request(s: Server, ctx) -> Tuple[str, bool]:
    closed, t = _closed_within(s.port, b"POST /v1/utterances HTTP/1.1\r\nHost: x\r\nContent-Le", 6)
    closed2, t2 = _closed_within(
        s.port, b"POST /v1/utterances HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", 6)
    word = lambda c, t: f"closed after {t:.1f} s" if c else "still open after 6 s"  # noqa: E731
    return f"half-sent head: {word(closed, t)}; half-sent body: {word(closed2, t2)}", closed and closed2


def case_connection_flood(s: Server, ctx) -> Tuple[str, bool]:
    socks, refused = [], 0
    try:
        for _ in range(1200):
            try:
                socks.append(socket.create_connection(("127.0.0.1", s.port), timeout=2))
            except OSError:
                refused += 1
        time.sleep(0.3)
        try:
            r = httpx.get(s.base + "/healthz", timeout=3)
            served = r.status_code
        except httpx.HTTPError as exc:
            served = type(exc).__name__
    finally:
        for c in socks:
            c.close()
    time.sleep(0.5)
    after = httpx.get(s.base + "/healthz", timeout=5).status_code
    return (f"1,200 idle connections: a new client got {served} during, {after} after; server alive",
            after == 200 and s.proc.poll() is None)


def _ws_answers(port: int, frames: List, expect: int, timeout: float = 5.0):
    got, close = [], None
    with connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=5, max_size=None) as ws:
        for f in frames:
            ws.send(f)
        try:
            for _ in range(expect):
                got.append(json.loads(ws.recv(timeout=timeout)))
        except Exception as exc:   # closed or timed out
            close = getattr(exc, "rcvd", None) or type(exc).__name__
    return got, close


def case_ws_bad_id(s: Server, ctx) -> Tuple[str, bool]:
    frames = ['{"id": "\\ud800", "text": "hi"}'] + [json.dumps({"id": "wsb", "text": f"m{i}"}) for i in range(3)]
    got, close = _ws_answers(s.port, frames, 4)
    statuses = [g.get("status", 200) for g in got]
    return f"unencodable id then 3 good messages -> answers {statuses} close {close}", statuses == [400, 200, 200, 200]


def case_ws_binary(s: Server, ctx) -> Tuple[str, bool]:
    frames = [b"\x00\xff binary", json.dumps({"id": "wsbin", "text": "hi"}).encode(),
              json.dumps({"id": "wsbin", "text": "again"})]
    got, close = _ws_answers(s.port, frames, 3)
    statuses = [g.get("status", 200) for g in got]
    return f"binary garbage, binary JSON, text JSON -> answers {statuses} close {close}", statuses == [400, 200, 200]


def case_ws_tiny_flood(s: Server, ctx) -> Tuple[str, bool]:
    n = 20000
    start = time.perf_counter()
    got, close = _ws_answers(s.port, [json.dumps({"id": f"t{i % 64}", "text": "x"}) for i in range(n)], n, 30)
    ok = sum(1 for g in got if "label" in g)
    over = sum(1 for g in got if g.get("status") == 503)
    return (f"{n:,} tiny pipelined messages: {len(got):,} answers ({ok:,} predictions, {over:,} overloaded) "
            f"in {time.perf_counter() - start:.1f} s", len(got) == n)


def case_replay_cost(s: Server, ctx) -> Tuple[str, bool]:
    """512 new utterances vs the same 512 sent again (replays), 5 rounds, the fastest of each."""
    n, new_times, replay_times, replayed = 512, [], [], 0
    for round_ in range(5):
        ids = [f"rp{round_}-{i}" for i in range(n)]
        post(s.base, "/v1/utterances", json.dumps({"utterances": [
            {"id": c, "text": "one two", "index": 0} for c in ids]}).encode())
        second = json.dumps({"utterances": [{"id": c, "text": "three", "index": 1} for c in ids]}).encode()
        start = time.perf_counter()
        post(s.base, "/v1/utterances", second)
        new_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        r = post(s.base, "/v1/utterances", second)
        replay_times.append(time.perf_counter() - start)
        replayed += sum(1 for p in r.json()["predictions"] if p.get("replayed"))
    new, replay = min(new_times), min(replay_times)
    return (f"{n} new utterances {new * 1e3:.0f} ms, the same {n} again (replays) {replay * 1e3:.0f} ms "
            f"({replay / new:.1f}x; best of 5; {replayed} of {5 * n} replayed)",
            replay <= 1.2 * new and replayed == 5 * n)


def case_misc(s: Server, ctx) -> Tuple[str, bool]:
    method = httpx.request("PATCH", s.base + "/v1/utterances", timeout=5).status_code
    weird = raw_exchange(s.port, b"BREW /v1/utterances HTTP/1.1\r\nHost: x\r\n\r\n")[0]
    dup = post(s.base, "/v1/utterances", json.dumps({"utterances": [
        {"id": "dup", "text": "a", "index": 0}, {"id": "dup", "text": "b", "index": 0}]}).encode())
    dup_status = [p.get("status", 200) for p in dup.json().get("predictions", [])]
    nul = post(s.base, "/v1/conversations/nul/utterances", b'{"text": "a\\u0000b"}').status_code
    ok = method == 405 and weird in (400, 405, 501) and dup_status == [200, 409]
    return f"PATCH {method}, BREW {weird}, same id+index twice in a batch {dup_status}, NUL in text {nul}", ok


def case_ws_sigterm(ckpt: str, tmp: str) -> Tuple[str, bool]:
    """2,000 pipelined WebSocket messages, SIGTERM after the first answer: the restarted server's
    count must equal the predictions answered (nothing stored that was not answered), then a
    1012 close."""
    state = os.path.join(tmp, f"sigterm-{os.path.basename(ckpt)}.db")
    s = Server(ckpt, state)
    n = 2000
    got, close = [], None
    try:
        with connect(f"ws://127.0.0.1:{s.port}/v1/stream", open_timeout=5) as ws:
            for i in range(n):
                ws.send(json.dumps({"id": "drain", "text": f"message {i}"}))
            got.append(json.loads(ws.recv(timeout=30)))   # processing has begun
            s.proc.send_signal(signal.SIGTERM)
            try:
                while True:
                    got.append(json.loads(ws.recv(timeout=30)))
            except Exception as exc:
                close = getattr(exc, "rcvd", None)
    finally:
        code = s.stop()
    answered = sum(1 for g in got if "label" in g)
    refused = sum(1 for g in got if g.get("status") == 503)
    s2 = Server(ckpt, state)
    try:
        r = httpx.post(s2.base + "/v1/conversations/drain/utterances", json={"text": "after"}, timeout=10)
        stored = r.json().get("index")
    finally:
        s2.stop()
    # answers come in order: after the close, every message without one was not processed
    return (f"{n} pipelined then SIGTERM (exit {code}): {answered} answered, {refused} refused, "
            f"{n - answered - refused} never read, close {close}; stored after restart {stored}",
            stored == answered and code == 0 and getattr(close, "code", None) == 1012)


def case_replay_after_kill(ckpt: str, tmp: str) -> Tuple[str, bool]:
    """40 conversations of 3 utterances, kill -9, restart; then each client retries its last
    utterance (its answer lost), 20 of them in one batch request between 30 bystanders and 20 as
    lone requests beside 30 more: every retry must be replayed exactly, every bystander 200."""
    state = os.path.join(tmp, f"kill-{os.path.basename(ckpt)}.db")
    s = Server(ckpt, state)
    ids = [f"k{i}" for i in range(40)]
    first = {}
    try:
        for n in range(3):
            r = post(s.base, "/v1/utterances", json.dumps({"utterances": [
                {"id": c, "text": f"utterance {n} of {c}", "index": n} for c in ids]}).encode())
            first.update((p["id"], p) for p in r.json()["predictions"])
    finally:
        s.stop(signal.SIGKILL)
    s = Server(ckpt, state)
    try:
        async def run():
            async with httpx.AsyncClient(base_url=s.base, timeout=30, limits=httpx.Limits(max_connections=100)) as c:
                retry = [{"id": c, "text": f"utterance 2 of {c}", "index": 2} for c in ids]
                items = ([{"id": f"by-{i}", "text": "hello", "index": 0} for i in range(15)] + retry[:20]
                         + [{"id": f"by-{i}", "text": "hello", "index": 0} for i in range(15, 30)])
                return await asyncio.gather(
                    c.post("/v1/utterances", json={"utterances": items}),
                    *[c.post(f"/v1/conversations/{r['id']}/utterances", json=r) for r in retry[20:]],
                    *[c.post(f"/v1/conversations/lone-{i}/utterances", json={"text": "hi"}) for i in range(30)])
        batch, *lone = asyncio.run(run())
    finally:
        s.stop()
    answers = [p for p in batch.json().get("predictions", []) if p.get("id") in first]
    answers += [r.json() for r in lone[:20] if r.status_code == 200]
    replayed = sum(1 for a in answers if a.get("replayed") and a["probabilities"] == first[a["id"]]["probabilities"])
    bystanders = [p for p in batch.json().get("predictions", []) if p.get("id", "").startswith("by-")]
    bystanders_ok = sum(1 for p in bystanders if "label" in p) + sum(1 for r in lone[20:] if r.status_code == 200)
    statuses = sorted({batch.status_code} | {r.status_code for r in lone})
    return (f"after kill -9: {replayed}/40 retries replayed exactly, {bystanders_ok}/60 bystanders answered "
            f"(HTTP statuses {statuses})", replayed == 40 and bystanders_ok == 60 and statuses == [200])


def case_empty_token(ckpt: str, tmp: str) -> Tuple[str, bool]:
    env = subprocess_env()
    env.pop("AGHMN_SERVE_TOKEN", None)
    port = free_port()
    p = subprocess.Popen(serve_command(ckpt, port, "--state", "memory", "--token", ""), env=env, cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        code = p.wait(30)
        line = p.stderr.read().strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        code, line = "still serving (open)", []
    return f"--token '' -> exit {code} {line}", code == 2


SHARED = [case_lone_surrogate, case_surrogate_in_batch, case_id_newline, case_deep_json, case_huge_header,
          case_huge_url, case_idle_connection, case_half_request, case_connection_flood, case_ws_bad_id,
          case_ws_binary, case_ws_tiny_flood, case_replay_cost, case_misc]
OWN = [case_ws_sigterm, case_replay_after_kill, case_empty_token]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint to serve (default: a small random model); the runtime "
                                             "engine serves its export")
    parser.add_argument("--engine", default="both", choices=["torch", "runtime", "both"],
                        help="which engine's server to attack (default: both, one after the other)")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    args = parser.parse_args(argv)
    names = set(args.cases.split(",")) if args.cases else None
    engines = ["torch", "runtime"] if args.engine == "both" else [args.engine]
    with tempfile.TemporaryDirectory(prefix="aghmn-attacks-") as tmp:
        ckpt = args.checkpoint or save_tiny_checkpoint(os.path.join(tmp, "tiny.pt"), window=4)
        models = {"torch": ckpt}
        if "runtime" in engines:
            from aghmn_fast.export import export_checkpoint

            build_runtime()
            models["runtime"] = os.path.join(tmp, "tiny.aghmn")
            export_checkpoint(ckpt, models["runtime"])
        help_text = subprocess.run(serve_command(ckpt, 0, "--help"), capture_output=True, text=True,
                                   env=subprocess_env(), cwd=REPO).stdout
        extra = [x for k, v in LIMITS.items() if k in help_text for x in (k, v)]
        print(f"# server options: {' '.join(extra) or '(defaults)'}", flush=True)
        failures = 0

        def report(name: str, fn: Callable[[], Tuple[str, bool]]) -> None:
            nonlocal failures
            start = time.perf_counter()
            try:
                text, ok = fn()
            except Exception as exc:
                text, ok = f"case raised {type(exc).__name__}: {exc}", False
            failures += not ok
            print(f"{name:26s} {'ok  ' if ok else 'FAIL'} {text} [{time.perf_counter() - start:.1f} s]", flush=True)

        for engine in engines:
            model = models[engine]
            state = os.path.join(tmp, f"state-{engine}.db")
            server = Server(model, state, *extra)
            try:
                for case in SHARED:
                    name = case.__name__[5:]
                    if names is None or name in names:
                        report(f"{engine}:{name}", lambda: case(server, None))
                    if server.proc.poll() is not None:
                        print(f"# the server died: {server.log()[-2000:]}")
                        server = Server(model, state, *extra)
            finally:
                server.stop()
            for case in OWN:
                name = case.__name__[5:]
                if names is None or name in names:
                    report(f"{engine}:{name}", lambda: case(model, tmp))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
