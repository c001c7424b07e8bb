#!/usr/bin/env python
"""Load test of ``aghmn-fast serve`` over loopback HTTP, against in-process ``push_many``, on
each engine: torch (a checkpoint) and the native runtime (the same model exported to ``.aghmn``).

For each concurrency C (conversations, each a closed-loop client on its own keep-alive
connection): the conversations' windows are first filled (K utterances each, untimed, through the
batch route), then every client POSTs its next utterance as soon as the previous answer came back,
until ``--requests`` answers or ``--seconds`` passed. Reported: answers per second and the
client-side end-to-end latency p50/p99. The in-process baseline (``push_many`` of C conversations
per round, full windows, one torch thread) is measured in the same run, before the servers start.
Each level records the load average (1 min) when it ends: the machine may be shared.

Servers: ``single`` = one ``aghmn-fast serve`` process (SQLite state, the default);
``ray`` = ``aghmn-fast serve --ray --replicas 2`` with a redis-server started here; its clients
send ``X-Session-Id`` (conversation-affine routing) and the run reports the memory-hit rate (the
share of answers not rebuilt from Redis, each conversation's first timed answer excluded: the
untimed warm-up goes through the batch route, which has no affinity), also for one run without
the header. Both Ray ingresses are measured: HAProxy and Ray's Python proxy.

    python benchmarks/load_test.py [--data MELD_DIR] [--engines torch,runtime] [--modes single,ray]
        [--concurrency 1,64,1024] [--requests 20000] [--seconds 20] [--out results.json]

Only 127.0.0.1 is contacted. Every process started here is stopped before exit.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch

from aghmn_fast.data import MELD_LABELS, Vocabulary, load_meld
from aghmn_fast.streaming import StreamingRecognizer
from aghmn_fast.models.checkpoint import save_checkpoint
from aghmn_fast.training.trainer import build_vocabulary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_PATH = os.pathsep.join([REPO, os.path.join(REPO, "runtime")])   # aghmn_fast, aghmn_runtime

WORDS = ("okay so what do you mean by that i really do not know why you would say this to me "
         "oh my god that is amazing no way please stop it right now come on").split()


def _percentile(sorted_ms: List[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(round(q * (len(sorted_ms) - 1))))]


def corpus(data: Optional[str]):
    """(vocabulary, utterance texts): MELD test if available, else synthetic sentences."""
    if data and os.path.isfile(os.path.join(data, "test_sent_emo.csv")):
        test = load_meld(data, "test")
        return build_vocabulary([test]), [t for d in test for t in d.texts], "MELD test utterances"
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) for _ in range(3000)]
    vocab = Vocabulary.build([t.split() for t in texts], min_count=1)
    return vocab, texts, "synthetic sentences"


def make_checkpoint(path: str, vocab: Vocabulary, window: int) -> None:
    """The paper-size BiF-AGRU model (hidden 100, 50-d embeddings) with random weights."""
    from aghmn_fast.bench.stream import build_model
    model = build_model(window, vocab, None)
    save_checkpoint(path, model, vocab, MELD_LABELS)


def in_process(checkpoint: str, texts: List[str], conversations: int, seconds: float, threads: int = 1) -> Dict:
    """push_many of all conversations per round (push for one), full windows; ``checkpoint``: a
    .pt (torch) or a .aghmn file (the runtime)."""
    if checkpoint.endswith(".aghmn"):
        import aghmn_runtime
        rec = aghmn_runtime.StreamingRecognizer(checkpoint)
    else:
        torch.set_num_threads(threads)
        rec = StreamingRecognizer.from_checkpoint(checkpoint)
    K = rec.window
    for r in range(K):
        rec.push_many([(str(c), texts[(c * 7 + r) % len(texts)]) for c in range(conversations)])
    lat, done, r = [], 0, K
    start = time.perf_counter()
    while time.perf_counter() - start < seconds and done < 200_000:
        batch = [(str(c), texts[(c * 7 + r) % len(texts)]) for c in range(conversations)]
        t0 = time.perf_counter()
        if conversations == 1:
            rec.push(batch[0][0], batch[0][1])
        else:
            rec.push_many(batch)
        lat.append((time.perf_counter() - t0) * 1e3)
        done += conversations
        r += 1
    elapsed = time.perf_counter() - start
    lat.sort()
    return {"utterances_per_s": done / elapsed, "p50_ms": _percentile(lat, 0.5),
            "p99_ms": _percentile(lat, 0.99), "utterances": done, "mode": getattr(rec, "mode", "runtime")}


class _HTTPConnection(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive client connection (Content-Length bodies only): the load
    generator shares the machine with the server, so its cost per request must be small."""

    def __init__(self):
        self.transport = None
        self.buffer = b""
        self.waiter: Optional[asyncio.Future] = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0 or self.waiter is None:
            return
        head = self.buffer[:head_end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "transfer-encoding":
                self.waiter.set_exception(RuntimeError("chunked responses are not supported"))
                return
        if len(self.buffer) < head_end + 4 + length:
            return
        body = self.buffer[head_end + 4:head_end + 4 + length]
        self.buffer = self.buffer[head_end + 4 + length:]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((int(head[9:12]), body))

    def connection_lost(self, exc):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("server closed the connection"))

    async def post(self, path: str, body: bytes, headers: str = "") -> tuple:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(body)}\r\n{headers}\r\n".encode() + body)
        return await self.waiter


async def http_load(base: str, texts: List[str], conversations: int, window: int, max_requests: int,
                    seconds: float, affinity: bool, tag: str, client: str = "raw",
                    trace: Optional[List[tuple]] = None) -> Dict:
    """Closed-loop clients, one per conversation (see the module doc). ``client``: ``raw`` (the
    minimal HTTP/1.1 client above) or ``aiohttp``. ``trace``: a list that receives one
    ``(client, start s, latency ms, the server's latency_ms)`` per timed request (start from the run's
    start; the server's time from reading the request to its answer, None on an error)."""
    import aiohttp
    from urllib.parse import urlparse

    ids = [f"{tag}-{c}" for c in range(conversations)]
    u = urlparse(base)
    connector = aiohttp.TCPConnector(limit=conversations + 8, limit_per_host=conversations + 8)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:
        # fill the windows (untimed) through the batch route
        for r in range(window):
            for start in range(0, conversations, 128):   # 128 texts stay under the body limit
                chunk = ids[start:start + 128]
                body = {"utterances": [{"id": cid, "text": texts[(c * 7 + r) % len(texts)]}
                                       for c, cid in enumerate(chunk, start)]}
                async with session.post("/v1/utterances", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
        latencies: List[float] = []
        per_client: Dict[int, List[float]] = {}
        later: List[float] = []   # every client's requests but its first (a new connection's)
        rebuilt = errors = counted = 0
        deadline = time.perf_counter() + seconds
        issued = 0
        loop = asyncio.get_running_loop()

        async def one(c: int, cid: str):
            nonlocal rebuilt, errors, issued, counted
            url = f"/v1/conversations/{cid}/utterances"
            r = window
            mine = per_client[c] = []
            if client == "raw":
                _, conn = await loop.create_connection(_HTTPConnection, u.hostname, u.port)
                extra = f"X-Session-Id: {cid}\r\n" if affinity else ""
            try:
                while issued < max_requests and time.perf_counter() < deadline:
                    issued += 1
                    text = texts[(c * 7 + r) % len(texts)]
                    t0 = time.perf_counter()
                    if client == "raw":
                        body = json.dumps({"text": text, "index": r}).encode()
                        try:
                            status, payload = await conn.post(url, body, extra)
                        except ConnectionError:
                            # a proxy closed the keep-alive connection: reconnect and resend
                            # (the expected index makes the resend safe)
                            _, conn = await loop.create_connection(_HTTPConnection, u.hostname, u.port)
                            status, payload = await conn.post(url, body, extra)
                    else:
                        headers = {"X-Session-Id": cid} if affinity else None
                        async with session.post(url, json={"text": text, "index": r}, headers=headers) as resp:
                            payload, status = await resp.read(), resp.status
                    latencies.append((time.perf_counter() - t0) * 1e3)
                    mine.append(latencies[-1])
                    if trace is not None:
                        served = json.loads(payload).get("latency_ms") if status == 200 else None
                        trace.append((c, t0 - start, latencies[-1], served))
                    if r > window:
                        later.append(latencies[-1])
                    if status != 200:
                        errors += 1
                        continue
                    if r > window:   # the first answer may move the conversation off its warm-up replica
                        rebuilt += b'"rebuilt": true' in payload
                        counted += 1
                    r += 1
            finally:
                if client == "raw":
                    conn.transport.close()

        start = time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.gather(*[one(c, cid) for c, cid in enumerate(ids)])
        elapsed = time.perf_counter() - start
        client_cpu = time.process_time() - cpu0
    latencies.sort()
    later.sort()
    n = len(latencies)
    # fairness: the spread of the clients' own median latencies (a few slow clients, or slow
    # requests spread over all of them, give different tails at the same p99)
    medians = sorted(statistics.median(v) for v in per_client.values() if v)
    return {"client": client, "requests": n, "errors": errors, "seconds": elapsed,
            "utterances_per_s": (n - errors) / elapsed, "p50_ms": _percentile(latencies, 0.5),
            "p99_ms": _percentile(latencies, 0.99), "memory_hit_rate": 1 - rebuilt / max(1, counted),
            "p99_ms_without_first_requests": _percentile(later, 0.99) if later else None,
            "p999_ms": _percentile(latencies, 0.999), "max_ms": latencies[-1],
            "client_cpu_per_request_us": 1e6 * client_cpu / max(1, n),
            "client_median_ms_p10": _percentile(medians, 0.1) if medians else None,
            "client_median_ms_p90": _percentile(medians, 0.9) if medians else None}


def lone_http_client(base: str, texts: List[str], window: int, requests: int) -> Dict:
    """One conversation with the standard library's blocking client (the leanest client)."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    headers = {"Content-Type": "application/json", "X-Session-Id": "lone-stdlib"}
    lat = []
    for r in range(window + requests):
        body = json.dumps({"text": texts[r % len(texts)]})
        t0 = time.perf_counter()
        conn.request("POST", "/v1/conversations/lone-stdlib/utterances", body, headers)
        resp = conn.getresponse()
        resp.read()
        if r >= window:
            lat.append((time.perf_counter() - t0) * 1e3)
        assert resp.status == 200
    conn.close()
    lat.sort()
    return {"requests": len(lat), "p50_ms": _percentile(lat, 0.5), "p99_ms": _percentile(lat, 0.99)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> None:
    import urllib.request
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base} not ready after {timeout} s")


def stop(proc: Optional[subprocess.Popen], timeout: float = 60) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def machine() -> str:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("AGHMN_DATA"), help="MELD directory (texts, vocabulary)")
    p.add_argument("--window", type=int, default=40, help="K of the random paper-size model (default 40)")
    p.add_argument("--engines", default="torch,runtime",
                   help="torch (the checkpoint) and/or runtime (the same model as a .aghmn file); default both")
    p.add_argument("--modes", default="single,ray", help="single and/or ray (default both)")
    p.add_argument("--concurrency", default="1,64,1024", help="conversations per level")
    p.add_argument("--requests", type=int, default=20_000, help="most timed requests per level")
    p.add_argument("--seconds", type=float, default=20.0, help="most timed seconds per level")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--ray-proxies", default="haproxy,python", help="Ray ingresses to measure (default both)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--server-args", default="", help="extra aghmn-fast serve options (one string)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads, in-process and in the servers (default 1)")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = args.modes.split(",")
    engines = args.engines.split(",")
    for engine in engines:
        if engine not in ("torch", "runtime"):
            raise SystemExit(f"--engines: torch and/or runtime, got {engine!r}")
    tmp = tempfile.mkdtemp(prefix="aghmn-load-")
    procs: List[subprocess.Popen] = []
    vocab, texts, source = corpus(args.data)
    checkpoint = os.path.join(tmp, "model.pt")
    make_checkpoint(checkpoint, vocab, args.window)
    models = {"torch": checkpoint}
    if "runtime" in engines:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import runtime_common
        runtime_common.import_runtime()
        models["runtime"] = os.path.join(tmp, "model.aghmn")
        runtime_common.export(checkpoint, models["runtime"])
    results = {"machine": machine(), "texts": source, "window": args.window, "threads": args.threads,
               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                        capture_output=True, text=True).stdout.strip(),
               "load_average_start": os.getloadavg(), "engines": {}}
    env = dict(os.environ, PYTHONPATH=SOURCE_PATH + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        for engine in engines:
            out = results["engines"][engine] = {"in_process": {}}
            for c in levels:
                out["in_process"][c] = r = in_process(models[engine], texts, c, min(args.seconds, 10), args.threads)
                print(f"{engine} in-process C={c}: {r['utterances_per_s']:.0f} utt/s, p50 {r['p50_ms']:.3f} ms",
                      flush=True)
        runs = [m for m in modes if m != "ray"] + [f"ray-{p}" for p in args.ray_proxies.split(",") if "ray" in modes]
        for engine in engines:
            out = results["engines"][engine]
            for mode in runs:
                out.setdefault(mode, {})
                run_mode(engine, mode, models[engine], out, levels, texts, args, tmp, env, procs)
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def run_mode(engine: str, mode: str, model: str, out: Dict, levels: List[int], texts: List[str], args, tmp: str,
             env: Dict, procs: List[subprocess.Popen]) -> None:
    """One server (``single``, or Ray behind ``ray-haproxy`` / ``ray-python``) of ``model``, every
    concurrency level against it; results in ``out[mode]``."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "aghmn_fast.cli", "serve", "--checkpoint", model,
           "--port", str(port), "--max-conversations", "1000000", "--threads", str(args.threads),
           *args.server_args.split()]
    if mode == "single":
        cmd += ["--state", os.path.join(tmp, f"state-{engine}.db")]
    else:
        redis_port = free_port()
        redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
                                  "--bind", "127.0.0.1", "--dir", tmp, "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(redis)
        cmd += ["--ray", "--replicas", str(args.replicas), "--redis", f"redis://127.0.0.1:{redis_port}/0",
                "--ray-proxy", mode.split("-", 1)[1]]
    server = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(tmp, f"{engine}-{mode}.log"), "w"))
    procs.append(server)
    wait_ready(base, server, 300)
    for c in levels:
        r = asyncio.run(http_load(base, texts, c, args.window, args.requests, args.seconds,
                                  affinity=True, tag=f"c{c}"))
        if c == 1:
            r["stdlib_client"] = lone_http_client(base, texts, args.window, 2000)
        r["vs_in_process"] = r["utterances_per_s"] / out["in_process"][c]["utterances_per_s"]
        r["load_average"] = os.getloadavg()[0]
        out[mode][c] = r
        print(f"{engine} {mode} C={c}: {r['utterances_per_s']:.0f} utt/s ({100 * r['vs_in_process']:.0f}% of "
              f"in-process), p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms "
              f"(p99/p50 {r['p99_ms'] / r['p50_ms']:.1f}; without each client's first request "
              f"{r['p99_ms_without_first_requests']:.1f} ms; max {r['max_ms']:.0f} ms), errors {r['errors']}, "
              f"memory hits {100 * r['memory_hit_rate']:.1f}%, clients' medians {r['client_median_ms_p10']:.1f} "
              f"to {r['client_median_ms_p90']:.1f} ms (p10 to p90), load {r['load_average']:.1f}"
              + (f"; stdlib client p50 {r['stdlib_client']['p50_ms']:.3f} ms" if c == 1 else ""),
              flush=True)
    if mode.startswith("ray"):
        r = asyncio.run(http_load(base, texts, 64, args.window, min(args.requests, 5000), args.seconds,
                                  affinity=False, tag="noaff"))
        out[mode]["64_without_session_header"] = r
        print(f"{engine} {mode} C=64 without X-Session-Id: memory hits {100 * r['memory_hit_rate']:.1f}%, "
              f"{r['utterances_per_s']:.0f} utt/s", flush=True)
    stop(server, 120)


if __name__ == "__main__":
    sys.exit(main())
