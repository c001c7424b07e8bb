"""``aghmn-fast serve`` of a .aghmn model: served by the native runtime, and the server process
never imports torch; both recognizers implement the one Recognizer interface serving uses."""
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from runtime_common import REPO, RUNTIME_DIR, export, import_runtime, tiny_checkpoint  # noqa: E402
from serving_fixtures import free_port  # noqa: E402

from aghmn_runtime.serving.recognizers import load_recognizer  # noqa: E402
from aghmn_fast.streaming import StreamingRecognizer  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import_runtime()   # built in place, importable from RUNTIME_DIR
    tmp = tmp_path_factory.mktemp("serve_runtime")
    ckpt = tiny_checkpoint(str(tmp / "m.pt"), window=4)
    export(ckpt, str(tmp / "m.aghmn"))
    return str(tmp / "m.aghmn"), ckpt


# The server runs in the main thread of this process (as `aghmn-fast serve` does); a client
# thread posts utterances, reports what the process has imported, then stops it with SIGTERM.
SERVE_AND_REPORT = r"""
import http.client, json, os, signal, sys, threading, time
from aghmn_fast.cli import main
port = int(sys.argv[2])

def post(path, payload):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())

def client():
    deadline = time.time() + 60
    while True:
        try:
            first = post("/v1/conversations/c1/utterances", {"text": "Hi there!"})
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    many = post("/v1/utterances", {"utterances": [{"id": "c1", "text": "Oh no."},
                                                  {"id": "c2", "text": "What?!"}]})
    torch_modules = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    print(json.dumps({"first": first, "many": many, "torch": torch_modules}), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=client, daemon=True).start()
sys.exit(main(["serve", "--checkpoint", sys.argv[1], "--port", sys.argv[2], "--state", "memory"]))
"""


def test_serving_a_model_file_never_imports_torch(model):
    path, _ = model
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, RUNTIME_DIR]))
    done = subprocess.run([sys.executable, "-c", SERVE_AND_REPORT, path, str(free_port())],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch"] == []
    rt = import_runtime(build=False)
    direct = rt.StreamingRecognizer(path)
    expected = [direct.push(c, t) for c, t in
                [("c1", "Hi there!"), ("c1", "Oh no."), ("c2", "What?!")]]
    status, first = report["first"]
    status_many, many = report["many"]
    assert status == 200 and status_many == 200
    served = [first] + many["predictions"]
    assert [(p["id"], p["index"], p["label"]) for p in served] == [
        (p.conversation_id, p.index, p.label) for p in expected]
    assert [p["probabilities"] for p in served] == [p.probabilities for p in expected]


def test_load_recognizer_picks_the_recognizer_by_the_file(model):
    """A .aghmn file gets the native runtime, its checkpoint torch: the same answers (the
    contract both keep is tests/test_recognizer_contract.py)."""
    path, ckpt = model
    native = load_recognizer(path)
    torch_rec = load_recognizer(ckpt)
    assert isinstance(torch_rec, StreamingRecognizer) and type(native).__module__ == "aghmn_runtime"
    assert native.window == torch_rec.window and native.label_names == torch_rec.label_names
    a = native.push_many([("c", "Hi there!"), ("c", "no")])
    b = torch_rec.push_many([("c", "Hi there!"), ("c", "no")])
    assert [(p.index, p.label) for p in a] == [(p.index, p.label) for p in b]
    for x, y in zip(a, b):
        assert x.probabilities == pytest.approx(y.probabilities, abs=1e-6)


def test_recognizer_choice_errors(model, monkeypatch):
    path, _ = model
    with pytest.raises(ValueError, match="native runtime"):
        load_recognizer(path, backend="cpu")
    _, ckpt = model
    # the torch-free install: a checkpoint is one clear error naming both ways out
    monkeypatch.setitem(sys.modules, "aghmn_fast.serving_plugin", None)
    with pytest.raises(ImportError, match="needs aghmn-fast .* installed; or export it with `aghmn-fast export") as caught:
        load_recognizer(ckpt)
    assert ckpt in str(caught.value) and "\n" not in str(caught.value)
    assert type(load_recognizer(path)).__module__ == "aghmn_runtime"   # .aghmn files need no plug-in
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_recognizer(path + ".missing")
