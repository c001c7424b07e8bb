"""The server's start and memory on each engine: seconds from the process's start to its first
``/readyz`` 200, and its RSS idle and with N live conversations whose windows are full.

    python benchmarks/serve_footprint.py [--data MELD_DIR] [--conversations 1000] [--window 40]
        [--runtime-python VENV/bin/python] [--projection-caches on,off]
        [--out benchmarks/results/serve-footprint.json]

The model: a random-initialised BiF-AGRU of MELD's size (the vocabulary of MELD's three splits
with min count 2 when ``--data`` has MELD, else the synthetic words; 256-d word vectors, H = 100,
window ``--window``), saved as a checkpoint (the torch recognizer) and exported to a ``.aghmn`` file
(the runtime). Both servers are ``aghmn-serve`` (``python -m aghmn_runtime.serving.cli``) with
``--state memory``; ``--runtime-python`` serves the ``.aghmn`` file from another interpreter too,
e.g. a torch-free venv with ``aghmn-fast-runtime[serve]`` (its own installed aghmn-serve).
Conversations are filled with POST /v1/utterances, 500 items a request, ``window`` utterances each.
Each engine runs once per ``--projection-caches`` value (``serve --projection-cache``; default both:
the "off" runs are named "... no-cache").
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
import runtime_common  # noqa: E402

REPO = runtime_common.REPO
SOURCE_PATH = os.pathsep.join([REPO, runtime_common.RUNTIME_DIR])   # aghmn_fast, aghmn_runtime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, None if body is None else json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _rss_mb(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        fields = {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith(("VmRSS", "VmHWM"))}
    return {"rss_mb": round(fields["VmRSS"] / 1024, 1), "peak_rss_mb": round(fields["VmHWM"] / 1024, 1)}


def measure(argv, env, conversations: int, window: int) -> dict:
    """Start the server ``argv`` (+ --port), time its readiness, fill ``conversations``, stop it."""
    port = _free_port()
    start = time.perf_counter()
    proc = subprocess.Popen(argv + ["--port", str(port), "--state", "memory"], env=env, cwd=tempfile.gettempdir(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                if _request(port, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - start > 120:
                raise RuntimeError("the server was not ready within 120 s")
            time.sleep(0.005)
        ready_s = time.perf_counter() - start
        idle = _rss_mb(proc.pid)
        items = [{"id": f"conv-{c}", "text": f"utterance {u} of conversation {c}, okay so what?"}
                 for u in range(window) for c in range(conversations)]
        fill_start = time.perf_counter()
        for i in range(0, len(items), 500):
            status, body = _request(port, "POST", "/v1/utterances", {"utterances": items[i:i + 500]})
            if status != 200 or any("error" in p for p in json.loads(body)["predictions"]):
                raise RuntimeError(f"filling failed: {status} {body[:300]!r}")
        fill_s = time.perf_counter() - fill_start
        status, body = _request(port, "GET", "/readyz")
        live = json.loads(body)["live_conversations"]
        full = _rss_mb(proc.pid)
        with open(f"/proc/{proc.pid}/maps") as f:
            libtorch = "libtorch" in f.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"ready_s": round(ready_s, 3), "idle": idle, "live_conversations": live, "full": full,
            "per_conversation_kb": round((full["rss_mb"] - idle["rss_mb"]) * 1024 / max(live, 1), 1),
            "utterances_per_s_filling": round(len(items) / fill_s), "libtorch_mapped": libtorch,
            "exit_code": proc.returncode}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("AGHMN_DATA"))
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--window", type=int, default=40)
    parser.add_argument("--runtime-python", default=None)
    parser.add_argument("--projection-caches", default="on,off",
                        help="serve --projection-cache values to run, comma-separated (default on,off)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    caches = [v.strip() for v in args.projection_caches.split(",") if v.strip()]
    if not caches or any(v not in ("on", "off") for v in caches):
        parser.error(f"--projection-caches: a comma-separated list of on, off, got {args.projection_caches!r}")
    words, vocabulary = None, "synthetic"
    if args.data and os.path.isfile(os.path.join(args.data, "train_sent_emo.csv")):
        from aghmn_fast.data import load_meld
        from aghmn_fast.training.trainer import build_vocabulary
        vocab = build_vocabulary([load_meld(args.data, s) for s in ("train", "dev", "test")])
        words, vocabulary = vocab.itos[2:], f"MELD ({len(vocab)} tokens)"
    work = tempfile.mkdtemp()
    ckpt = runtime_common.tiny_checkpoint(os.path.join(work, "model.pt"), window=args.window, words=words,
                                          embedding_dim=256, hidden_size=100)
    model = os.path.join(work, "model.aghmn")
    runtime_common.import_runtime()
    runtime_common.export(ckpt, model)
    env = dict(os.environ, PYTHONPATH=SOURCE_PATH)
    serve = [sys.executable, "-m", "aghmn_runtime.serving.cli", "--checkpoint"]
    runs = {}
    for cache in caches:
        tag, option = ("" if cache == "on" else " no-cache"), ["--projection-cache", cache]
        runs["runtime" + tag] = measure(serve + [model] + option, env, args.conversations, args.window)
        runs["torch" + tag] = measure(serve + [ckpt] + option, env, args.conversations, args.window)
        if args.runtime_python:
            clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            aghmn_serve = os.path.join(os.path.dirname(args.runtime_python), "aghmn-serve")
            runs["runtime (torch-free venv)" + tag] = measure([aghmn_serve, "--checkpoint", model] + option,
                                                              clean, args.conversations, args.window)
    record = {"benchmark": "serve_footprint", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "load_average_start": os.getloadavg(), "commit": subprocess.run(
                  ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
              "model": {"vocabulary": vocabulary, "embedding_dim": 256, "hidden_size": 100, "window": args.window,
                        "aghmn_bytes": os.path.getsize(model), "checkpoint_bytes": os.path.getsize(ckpt)},
              "conversations": args.conversations, "runs": runs}
    record["load_average_end"] = os.getloadavg()
    print(json.dumps(record, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
