#!/usr/bin/env python
"""Memory of a real ``aghmn-fast serve`` process as conversations open and close, on both engines.

For each engine (the torch checkpoint and its ``.aghmn`` export, one set of random weights at
K = 40, H = 24, the model of issue 28), a server with SQLite state on 127.0.0.1; its resident
memory (VmRSS) is read at start, after opening N conversations (one utterance each, batch
requests of 512), after DELETE of all of them, after opening N new ones (reused memory) and
after deleting those; on a second server, after N conversations expire (``--ttl``). Then the
budget: a K = 4096, H = 256 model (28 MiB per conversation, bidirectional fusion) served with
``--max-memory 256M`` holds at most 9 conversations whatever is opened, and ``--max-memory 8M``
refuses to start with one line.

    python benchmarks/serve_memory.py [--conversations 20000] [--json out.json]

Only 127.0.0.1 is contacted; every server started here is stopped before exit.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests"), os.path.join(REPO, "benchmarks")]

import httpx  # noqa: E402

from runtime_common import import_runtime, tiny_checkpoint  # noqa: E402
from serving_fixtures import free_port, serve_command, subprocess_env, wait_for_port  # noqa: E402

ENGINES = ("torch", "runtime")


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Server:
    """``aghmn-fast serve`` in a subprocess on a free loopback port."""

    def __init__(self, model: str, state: str, *extra: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(serve_command(model, self.port, "--state", state, *extra),
                                     env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        wait_for_port(self.port, 120, self.proc)

    def rss(self) -> float:
        return rss_mb(self.proc.pid)

    def ready(self) -> dict:
        return httpx.get(self.base + "/readyz", timeout=30).json()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def open_conversations(base: str, prefix: str, n: int, per_request: int = 512) -> int:
    """Open n conversations (one utterance each) with batch requests; returns how many got 200."""
    ok = 0
    with httpx.Client(base_url=base, timeout=120) as client:
        for start in range(0, n, per_request):
            items = [{"id": f"{prefix}-{i}", "text": "hello there, how are you doing today?"}
                     for i in range(start, min(n, start + per_request))]
            r = client.post("/v1/utterances", json={"utterances": items})
            r.raise_for_status()
            ok += sum(1 for p in r.json()["predictions"] if "label" in p)
    return ok


def delete_conversations(base: str, prefix: str, n: int, concurrency: int = 32) -> int:
    """DELETE n conversations, ``concurrency`` requests at a time; returns how many existed."""
    async def run():
        async with httpx.AsyncClient(base_url=base, timeout=120,
                                     limits=httpx.Limits(max_connections=concurrency)) as client:
            gone = 0
            for start in range(0, n, concurrency):
                rs = await asyncio.gather(*[client.delete(f"/v1/conversations/{prefix}-{i}")
                                            for i in range(start, min(n, start + concurrency))])
                gone += sum(r.status_code == 200 for r in rs)
            return gone
    return asyncio.run(run())


def wait_live(server: Server, live: int, timeout: float) -> float:
    """Wait until /readyz reports ``live`` conversations in memory; returns the seconds waited."""
    start = time.time()
    while server.ready()["live_conversations"] != live:
        if time.time() - start > timeout:
            raise TimeoutError(f"still {server.ready()['live_conversations']} live after {timeout} s")
        time.sleep(0.2)
    return time.time() - start


def open_close_cycle(model: str, n: int, tmp: str) -> dict:
    """RSS (MiB) at each step of: start, open n, delete n, open n new, delete those."""
    server = Server(model, os.path.join(tmp, f"state-{os.path.basename(model)}.db"), "--ttl", "0")
    try:
        out = {"start": server.rss(), "max_live_conversations": server.ready().get("max_live_conversations")}
        assert open_conversations(server.base, "a", n) == n
        out["opened"] = server.rss()
        out["state_bytes_opened"] = _state_bytes(server)
        # what a conversation costs beyond its ring slots (the store's capacity beyond the open
        # conversations is never touched: not resident)
        per = _bytes_per_conversation(model)
        out["ring_bytes_per_conversation"] = per
        out["other_bytes_per_conversation"] = round(((out["opened"] - out["start"]) * 2**20 - n * per) / n)
        assert delete_conversations(server.base, "a", n) == n
        out["deleted"] = server.rss()
        out["state_bytes_deleted"] = _state_bytes(server)
        assert open_conversations(server.base, "b", n) == n
        out["reopened"] = server.rss()
        assert delete_conversations(server.base, "b", n) == n
        out["deleted_again"] = server.rss()
    finally:
        out["exit_code"] = server.stop()
    return out


def expiry_cycle(model: str, n: int, tmp: str, ttl: float) -> dict:
    """RSS (MiB) at start, after opening n, and once all n expired (``--ttl``)."""
    server = Server(model, os.path.join(tmp, f"expiry-{os.path.basename(model)}.db"), "--ttl", str(ttl))
    try:
        out = {"start": server.rss()}
        assert open_conversations(server.base, "a", n) == n
        out["opened"] = server.rss()
        out["expiry_seconds"] = round(wait_live(server, 0, 10 * ttl + 60), 1)
        out["expired"] = server.rss()
        out["state_bytes_expired"] = _state_bytes(server)
    finally:
        out["exit_code"] = server.stop()
    return out


def _bytes_per_conversation(model: str) -> int:
    """K * H * 4 * (1 + 3 D): the ring slots of one conversation (computed from the model's
    configuration, so that servers from before bytes_per_conversation can be measured too)."""
    from aghmn_fast.models.checkpoint import load_checkpoint
    cfg = load_checkpoint(model[:-len(".aghmn")] + ".pt" if model.endswith(".aghmn") else model)[0].config
    directions = {"bif": 2, "unif": 1}.get(cfg.fusion, 0)
    return cfg.window * cfg.hidden_size * 4 * (1 + 3 * max(directions, 1))


def _state_bytes(server: Server):
    """The ring store's bytes (``aghmn_state_bytes``; None from a server without it)."""
    for line in httpx.get(server.base + "/metrics", timeout=30).text.splitlines():
        if line.startswith("aghmn_state_bytes "):
            return int(float(line.split()[1]))
    return None


def budget_case(model: str, tmp: str, opened: int = 40) -> dict:
    """The K = 4096 model under --max-memory 256M: live conversations and RSS after opening
    ``opened`` of them (one utterance each)."""
    server = Server(model, os.path.join(tmp, f"budget-{os.path.basename(model)}.db"), "--max-memory", "256M")
    try:
        start = server.rss()
        ready = server.ready()
        served = sum(open_conversations(server.base, f"big{k}", 1) for k in range(opened))
        live = server.ready()["live_conversations"]
        return {"start": start, "max_live_conversations": ready["max_live_conversations"], "opened": opened,
                "served": served, "live": live, "rss": server.rss()}
    finally:
        server.stop()


def refused_start(model: str, tmp: str) -> dict:
    """``--max-memory 8M`` with a model whose conversation needs 16 MiB: exit code and stderr."""
    port = free_port()
    done = subprocess.run(serve_command(model, port, "--state", os.path.join(tmp, "refused.db"),
                                        "--max-memory", "8M"),
                          env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    return {"exit_code": done.returncode, "stderr": done.stderr.strip().replace(tmp, "$TMP")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=20_000, help="conversations per round (default 20000)")
    parser.add_argument("--ttl", type=float, default=60.0,
                        help="--ttl of the expiry case, seconds: longer than opening n takes (default 60)")
    parser.add_argument("--json", default=None, help="write the record here")
    parser.add_argument("--cycles-only", action="store_true",
                        help="only the open/close and expiry cycles (e.g. against a server from before --max-memory)")
    args = parser.parse_args(argv)
    from aghmn_fast.export import export_checkpoint

    import_runtime()
    record = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_before": os.getloadavg(), "conversations": args.conversations,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                       capture_output=True, text=True).stdout.strip(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="aghmn-memory-") as tmp:
        small = {"torch": tiny_checkpoint(os.path.join(tmp, "k40.pt"), window=40, hidden_size=24)}
        big = {"torch": tiny_checkpoint(os.path.join(tmp, "k4096.pt"), window=4096, hidden_size=256)}
        for models in (small, big):
            models["runtime"] = models["torch"][:-3] + ".aghmn"
            export_checkpoint(models["torch"], models["runtime"])
        for engine in ENGINES:
            cycle = open_close_cycle(small[engine], args.conversations, tmp)
            record[f"cycle_{engine}"] = cycle
            print(f"{engine:8s} K=40 H=24, {args.conversations:,} conversations: RSS start {cycle['start']:.0f} MiB, "
                  f"opened {cycle['opened']:.0f}, deleted {cycle['deleted']:.0f}, {args.conversations:,} new "
                  f"{cycle['reopened']:.0f}, deleted {cycle['deleted_again']:.0f} MiB; ring store "
                  f"{(cycle['state_bytes_opened'] or 0) / 2**20:.1f} -> {(cycle['state_bytes_deleted'] or 0) / 2**20:.2f} MiB; "
                  f"per conversation {cycle['ring_bytes_per_conversation']:,} B of ring slots + "
                  f"{cycle['other_bytes_per_conversation']:,} B else; exit {cycle['exit_code']}", flush=True)
            expiry = expiry_cycle(small[engine], args.conversations, tmp, args.ttl)
            record[f"expiry_{engine}"] = expiry
            print(f"{engine:8s} --ttl {args.ttl:g}: RSS start {expiry['start']:.0f} MiB, opened {expiry['opened']:.0f}, "
                  f"all expired ({expiry['expiry_seconds']} s later) {expiry['expired']:.0f} MiB; exit "
                  f"{expiry['exit_code']}", flush=True)
        for engine in () if args.cycles_only else ENGINES:
            budget = budget_case(big[engine], tmp)
            record[f"budget_{engine}"] = budget
            print(f"{engine:8s} K=4096 H=256 --max-memory 256M: max live {budget['max_live_conversations']}, "
                  f"{budget['opened']} opened, {budget['served']} served, {budget['live']} live, RSS "
                  f"{budget['start']:.0f} -> {budget['rss']:.0f} MB", flush=True)
            refused = refused_start(big[engine], tmp)
            record[f"refused_{engine}"] = refused
            print(f"{engine:8s} --max-memory 8M: exit {refused['exit_code']}: {refused['stderr']}", flush=True)
    record["load_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
