"""Smoke test of the torch-free Ray install (``aghmn-fast-runtime[ray]`` in a fresh venv; run from
outside the repository by ``runtime_wheel_smoke.sh --ray``):

    python ray_smoke.py MODEL.aghmn

Starts a redis-server and ``aghmn-serve --ray --replicas 1`` on free loopback ports, posts an
utterance through the HAProxy ingress, checks that the replica process has no torch mapped and
that SIGTERM stops everything with exit 0.
"""
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

model = sys.argv[1]
assert importlib.util.find_spec("torch") is None, "torch is installed in the server's venv"
assert importlib.util.find_spec("ray") is not None, "ray is not installed by the [ray] extra"
serve = os.path.join(os.path.dirname(sys.executable), "aghmn-serve")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, method, path, body=None, session="smoke-ray"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, None if body is None else json.dumps(body),
                     {"Content-Type": "application/json", "X-Session-Id": session})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


work = tempfile.mkdtemp()
redis_port, port = free_port(), free_port()
redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1",
                          "--dir", work, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
log_path = os.path.join(work, "serve.log")
with open(log_path, "w") as log:
    proc = subprocess.Popen([serve, "--checkpoint", model, "--ray", "--replicas", "1", "--port", str(port),
                             "--redis", f"redis://127.0.0.1:{redis_port}/0"], stdout=log, stderr=log, cwd=work)
try:
    deadline = time.time() + 600
    while "Ray Serve on" not in open(log_path).read():
        assert proc.poll() is None and time.time() < deadline, open(log_path).read()[-3000:]
        time.sleep(0.2)
    status, answer = get(port, "POST", "/v1/conversations/smoke-ray/utterances", {"text": "Hi there!", "index": 0})
    assert status == 200 and answer["index"] == 0, answer
    status, ready = get(port, "GET", "/readyz")
    with open(f"/proc/{ready['pid']}/maps") as f:
        assert "libtorch" not in f.read(), "the replica mapped libtorch"
    with open(f"/proc/{ready['pid']}/status") as f:
        rss = next(line.split()[1] for line in f if line.startswith("VmRSS:"))
finally:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(180)
    redis.terminate()
    redis.wait(10)
out = open(log_path).read()
assert code == 0, (code, out[-3000:])
assert "Traceback" not in out and "SIGTERM received" not in out, out[-3000:]
shutil.rmtree(work, ignore_errors=True)
print(f"ray smoke ok: aghmn-serve --ray answered through HAProxy, replica without torch ({int(rss) // 1024} MB RSS), "
      "exit 0 on SIGTERM")
