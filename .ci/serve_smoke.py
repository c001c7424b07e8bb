"""Smoke test of the torch-free server as a user installs it (``aghmn-fast-runtime[serve]`` in a
fresh venv; run from outside the repository by runtime_wheel_smoke.sh):

    python serve_smoke.py MODEL.aghmn CHECKPOINT.pt

``aghmn-serve`` serves the .aghmn file (readiness, one utterance, a replayed retry, metrics, a
clean SIGTERM drain with exit 0) and refuses the checkpoint with one line naming
``aghmn-fast export``; torch is neither installed nor imported.
"""
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time

model, checkpoint = sys.argv[1], sys.argv[2]
assert importlib.util.find_spec("torch") is None, "torch is installed in the server's venv"
assert importlib.util.find_spec("aghmn_fast") is None, "aghmn-fast is installed in the server's venv"
serve = os.path.join(os.path.dirname(sys.executable), "aghmn-serve")
assert os.path.isfile(serve), f"no aghmn-serve console script next to {sys.executable}"

# a checkpoint without aghmn-fast: one line, exit 2, naming both ways out
done = subprocess.run([serve, "--checkpoint", checkpoint, "--state", "memory"], capture_output=True, text=True,
                      timeout=60)
assert done.returncode == 2 and done.stderr.count("\n") == 1, (done.returncode, done.stderr)
assert done.stderr.startswith("aghmn-serve: error:") and "aghmn-fast export" in done.stderr, done.stderr

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]


def request(method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, None if body is None else json.dumps(body),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


start = time.perf_counter()
proc = subprocess.Popen([serve, "--checkpoint", model, "--host", "127.0.0.1", "--port", str(port),
                         "--state", "memory"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
try:
    while True:
        assert proc.poll() is None, f"aghmn-serve exited {proc.returncode}: {proc.stderr.read()}"
        assert time.perf_counter() - start < 60, "aghmn-serve was not ready within 60 s"
        try:
            if request("GET", "/readyz")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.01)
    ready_s = time.perf_counter() - start
    status, body = request("POST", "/v1/conversations/smoke-1/utterances", {"text": "Hi there!", "index": 0})
    first = json.loads(body)
    assert status == 200 and first["index"] == 0 and abs(sum(first["probabilities"].values()) - 1) < 1e-4, body
    status, body = request("POST", "/v1/conversations/smoke-1/utterances", {"text": "Hi there!", "index": 0})
    again = json.loads(body)
    assert status == 200 and again.get("replayed") is True and again["probabilities"] == first["probabilities"], body
    status, body = request("GET", "/metrics")
    assert status == 200 and b"aghmn_" in body, body[:200]
    with open(f"/proc/{proc.pid}/maps") as f:
        assert "libtorch" not in f.read(), "the server process mapped libtorch"
finally:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
assert proc.returncode == 0, (proc.returncode, err)
assert "Traceback" not in err, err
print(f"serve smoke ok: aghmn-serve answered /readyz {ready_s:.2f} s after start, one utterance, a "
      f"replay, metrics; exit 0 on SIGTERM")
