"""The server as the torch-free distribution ships it (aghmn_runtime.serving, ``aghmn-serve``):
the package never imports torch or aghmn_fast; ``aghmn-serve`` serves a .aghmn file, and a
checkpoint through aghmn_fast's torch recognizer when that is installed (one line naming the ways
out when it is not); ``aghmn-fast serve`` delegates to it."""
import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from runtime_common import REPO, RUNTIME_DIR, export, import_runtime, tiny_checkpoint  # noqa: E402
from serving_fixtures import free_port, wait_for_port  # noqa: E402

from aghmn_runtime.serving import cli as serve_cli  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import_runtime()
    tmp = tmp_path_factory.mktemp("serve_install")
    ckpt = tiny_checkpoint(str(tmp / "m.pt"), window=4)
    export(ckpt, str(tmp / "m.aghmn"))
    return str(tmp / "m.aghmn"), ckpt


def test_the_serving_package_imports_neither_torch_nor_aghmn_fast():
    code = ("import sys, pkgutil, importlib, aghmn_runtime.serving as s\n"
            "for m in pkgutil.iter_modules(s.__path__):\n"
            "    if m.name != 'ray_app' or importlib.util.find_spec('ray'):\n"
            "        importlib.import_module('aghmn_runtime.serving.' + m.name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'aghmn_fast')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=RUNTIME_DIR), cwd=RUNTIME_DIR)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_aghmn_serve_bad_command_line_is_one_line(capsys, tmp_path):
    assert serve_cli.main(["--checkpoint", "m.aghmn", "--port", "eighty"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("aghmn-serve: error: argument --port"), err
    assert serve_cli.main(["--checkpoint", str(tmp_path / "missing.aghmn"), "--state", "memory"]) == 2
    err = capsys.readouterr().err
    assert err == f"aghmn-serve: error: checkpoint not found: {tmp_path / 'missing.aghmn'}\n", err


def test_aghmn_serve_of_a_checkpoint_without_aghmn_fast_names_the_ways_out(model, monkeypatch, capsys):
    _, ckpt = model
    monkeypatch.setitem(sys.modules, "aghmn_fast.serving_plugin", None)   # aghmn-fast not installed
    assert serve_cli.main(["--checkpoint", ckpt, "--state", "memory", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"aghmn-serve: error: {ckpt} is not a .aghmn model file"), err
    assert "needs aghmn-fast (with torch) installed" in err and "aghmn-fast export --checkpoint" in err


def test_aghmn_fast_serve_without_the_runtime_distribution_is_one_line(monkeypatch, capsys):
    from aghmn_fast.cli import program as cli
    monkeypatch.setitem(sys.modules, "aghmn_runtime.serving.cli", None)   # aghmn-fast-runtime absent
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    assert cli.main(["serve", "--checkpoint", "m.aghmn", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("aghmn-fast serve: error: aghmn-fast serve needs the server"), err
    assert 'pip install --no-build-isolation "./runtime[serve]"' in err


@pytest.mark.parametrize("kind", ["aghmn", "pt"])
def test_aghmn_serve_serves_both_file_kinds(model, kind):
    """`aghmn-serve` (python -m aghmn_runtime.serving.cli, as the console script runs it) on a
    .aghmn file, and on a checkpoint with aghmn-fast installed: the same answer; SIGTERM exit 0."""
    path = model[0] if kind == "aghmn" else model[1]
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, RUNTIME_DIR]))
    proc = subprocess.Popen([sys.executable, "-m", "aghmn_runtime.serving.cli", "--checkpoint", path,
                             "--port", str(port), "--state", "memory"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, 60, proc)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/conversations/c1/utterances",
                                         json.dumps({"text": "Hi there!"}).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err.startswith(f"aghmn-serve: http://127.0.0.1:{port} "), err
    expected = import_runtime(build=False).StreamingRecognizer(model[0]).push("c1", "Hi there!")
    assert answer["label"] == expected.label
    assert answer["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
