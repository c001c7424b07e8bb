"""Shared helpers of the serving tests: a small random model saved as a checkpoint (and exported
for the native runtime: both recognizers from the same weights), synthetic (or MELD) dialogues, the
offline reference, a real redis-server and a real server subprocess."""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

import pytest
import torch

from aghmn_fast.data import MELD_LABELS, Dialogue, Vocabulary, load_meld
from aghmn_fast.models import AGHMN, AGHMNConfig
from aghmn_fast.streaming import StreamingRecognizer
from aghmn_fast.models.checkpoint import save_checkpoint
from aghmn_fast.training.trainer import build_vocabulary, encode_dialogues, predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME_DIR = os.path.join(REPO, "runtime")   # the aghmn_runtime package, built in place
# what a subprocess of the tests imports from: this checkout's aghmn_fast and aghmn_runtime (the
# server's package, in runtime/), ahead of anything installed
SOURCE_PATH = os.pathsep.join([REPO, RUNTIME_DIR])
# The two recognizers every serving test runs on: aghmn_fast.streaming (a .pt checkpoint, PyTorch)
# and aghmn_runtime (the .aghmn file of `aghmn-fast export`, the native runtime).
RECOGNIZERS = ("torch", "runtime")
WORDS = ("hi hello yes no okay what why really great terrible sorry thanks love hate you me we "
         "they it this that is was not very so the a ! ? . , oh wow fine bad good happy sad").split()


def synthetic_dialogues(n: int, seed: int = 0, min_len: int = 1, max_len: int = 14) -> List[Dialogue]:
    """Random dialogues over a tiny vocabulary (ids ``syn-<i>``), lengths min_len..max_len."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(min_len, max_len)
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))) for _ in range(length)]
        out.append(Dialogue(id=f"syn-{i}", speakers=["A"] * length, texts=texts, labels=[0] * length))
    return out


def tiny_model(window: int = 4, seed: int = 0, vocab: Optional[Vocabulary] = None, hidden: int = 24,
               embedding_dim: int = 16) -> AGHMN:
    """A randomly initialised BiF-AGRU model over the synthetic words (or ``vocab``)."""
    if vocab is None:
        vocab = build_vocabulary([synthetic_dialogues(50, seed=99)], min_count=1)
    torch.manual_seed(seed)
    cfg = AGHMNConfig(vocab_size=len(vocab), embedding_dim=embedding_dim, num_classes=len(MELD_LABELS),
                      hidden_size=hidden, window=window)
    model = AGHMN(cfg, torch.randn(len(vocab), embedding_dim)).eval()
    model.vocab, model.label_names = vocab, list(MELD_LABELS)
    return model


def save_tiny_checkpoint(path: str, **kwargs) -> str:
    """Save :func:`tiny_model` as a checkpoint ``aghmn-fast serve`` can load; returns the path."""
    model = tiny_model(**kwargs)
    save_checkpoint(str(path), model, model.vocab, model.label_names)
    return str(path)


def recognizer_for(checkpoint: str) -> StreamingRecognizer:
    """A fresh torch recognizer of the checkpoint (the offline reference's model)."""
    return StreamingRecognizer.from_checkpoint(checkpoint)


_runtime = []


def build_runtime():
    """The ``aghmn_runtime`` module of this checkout, built in place once per process
    (importable from :data:`RUNTIME_DIR`; a build failure is an error, never a skip)."""
    if not _runtime:
        sys.path.insert(0, os.path.join(REPO, "benchmarks"))
        try:
            from runtime_common import import_runtime
        finally:
            sys.path.pop(0)
        _runtime.append(import_runtime())
    return _runtime[0]


class ModelFiles:
    """Model files of both recognizers from the same weights: ``files(window=4, **tiny_model
    options)`` -> ``{"torch": checkpoint.pt, "runtime": model.aghmn}``, each set written (and
    exported) once into ``root``."""

    def __init__(self, root):
        self.root = str(root)
        self._made: Dict[tuple, Dict[str, str]] = {}

    def __call__(self, **options) -> Dict[str, str]:
        key = tuple(sorted(options.items()))
        if key not in self._made:
            from aghmn_fast.export import export_checkpoint

            build_runtime()
            stem = os.path.join(self.root, f"model{len(self._made)}")
            checkpoint = save_tiny_checkpoint(stem + ".pt", **options)
            export_checkpoint(checkpoint, stem + ".aghmn")
            self._made[key] = {"torch": checkpoint, "runtime": stem + ".aghmn"}
        return self._made[key]


@pytest.fixture(scope="module", params=RECOGNIZERS)
def recognizer_kind(request) -> str:
    """Each recognizer in turn ("torch", "runtime"): the tests of a module run once per recognizer."""
    return request.param


# A test whose behaviour is decided before any recognizer is consulted (option and CLI validation,
# HTTP/WebSocket protocol limits, header/URL/body sizes, token checks, JSON that does not parse,
# route errors) runs on one recognizer only: the other would repeat the same code path. Whatever
# involves a recognizer's answers, state, memory, rebuild, replay, eviction, restart or Ray keeps
# both (issue 28: any difference between them is a failing test). The native runtime (a `.aghmn`
# file) is the one kept: the server's own engine, which needs no torch (docs/SERVING.md).
one_recognizer = pytest.mark.parametrize("recognizer_kind", ["runtime"], indirect=True)


@pytest.fixture(scope="module")
def checkpoint(model_files, recognizer_kind) -> str:
    """The window-4 model file of each recognizer in turn (both hold the same weights)."""
    return model_files(window=4)[recognizer_kind]


@pytest.fixture(scope="module")
def reference(model_files) -> StreamingRecognizer:
    """The torch recognizer of the window-4 weights, whose offline model is the reference."""
    return recognizer_for(model_files(window=4)["torch"])


def load_served_recognizer(path: str):
    """The recognizer the server builds for a model file of either recognizer."""
    from aghmn_runtime.serving.recognizers import load_recognizer

    if path.endswith(".aghmn"):
        build_runtime()
    return load_recognizer(path)


class FailingRecognizer:
    """A recognizer whose ``push_many`` fails (part-way: the items before the culprit are
    pushed first) while its items include the text ``culprit``."""

    def __init__(self, inner, culprit="boom"):
        self.inner, self.culprit = inner, culprit
        self.failures = 0

    def push_many(self, items):
        items = list(items)
        if any(text == self.culprit for _, text in items):
            self.failures += 1
            before = items[:[text for _, text in items].index(self.culprit)]
            if before:
                self.inner.push_many(before)
            raise RuntimeError("injected failure")
        return self.inner.push_many(items)

    def push(self, cid, text):
        return self.push_many([(cid, text)])[0]

    def __getattr__(self, name):
        return getattr(self.inner, name)


def subprocess_env(**extra) -> dict:
    """The environment of a server subprocess: this checkout and its runtime module importable."""
    path = os.pathsep.join([REPO, RUNTIME_DIR] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return dict(os.environ, PYTHONPATH=path, **extra)


def offline_probabilities(recognizer: StreamingRecognizer, dialogues: Sequence[Dialogue]) -> torch.Tensor:
    """The offline model's class probabilities for every utterance, dialogues in order."""
    enc = encode_dialogues(dialogues, recognizer.vocab, recognizer.model.config.max_len)
    return torch.softmax(predict(recognizer.model, enc), -1)


def assert_matches_offline(results: Dict[str, List[dict]], dialogues: Sequence[Dialogue],
                           expect: torch.Tensor, labels: Sequence[str] = MELD_LABELS) -> None:
    """Per dialogue, the served predictions (dicts in utterance order) equal the offline ones."""
    flat = []
    for d in dialogues:
        got = results[d.id]
        assert [r["index"] for r in got] == list(range(len(d.texts))), d.id
        flat.extend(got)
    probs = torch.tensor([[r["probabilities"][l] for l in labels] for r in flat], dtype=expect.dtype)
    torch.testing.assert_close(probs, expect, rtol=0, atol=1e-5)
    assert [labels.index(r["label"]) for r in flat] == expect.argmax(-1).tolist()


def meld_test_third() -> List[Dialogue]:
    """A third of the MELD test dialogues (every third), or skip if $AGHMN_DATA is unset/absent."""
    root = os.environ.get("AGHMN_DATA")
    if not root or not os.path.isfile(os.path.join(root, "test_sent_emo.csv")):
        pytest.skip("MELD data not found: set AGHMN_DATA to the MELD directory to run this test")
    return load_meld(root, "test")[::3]


def meld_model(dialogues, window: int = 5) -> AGHMN:
    """A random model over the vocabulary of the given MELD dialogues."""
    return tiny_model(window=window, vocab=build_vocabulary([dialogues]), hidden=32)


class ManualClock:
    """A clock for TTL tests: it reads ``now`` and moves only when :meth:`advance` is called, so
    expiry is decided by the test, never by how fast the machine runs."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


def wait_until(condition, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition()`` until it is true; fail naming ``what`` after ``timeout`` seconds (a
    deadline for a background task to act, never a measurement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: Optional[subprocess.Popen] = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture
def redis_url(tmp_path):
    """A real redis-server on a free loopback port in a temporary directory (stopped after)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 10, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def serve_command(checkpoint: str, port: int, *extra: str) -> List[str]:
    """The argv of ``aghmn-fast serve`` run with this interpreter."""
    return [sys.executable, "-m", "aghmn_fast.cli", "serve", "--checkpoint", checkpoint,
            "--host", "127.0.0.1", "--port", str(port), *extra]


def start_server(checkpoint: str, *extra: str, env: Optional[dict] = None):
    """Start ``aghmn-fast serve`` in a subprocess; returns (process, base URL) once it listens."""
    port = free_port()
    full_env = subprocess_env(**(env or {}))
    proc = subprocess.Popen(serve_command(checkpoint, port, *extra), env=full_env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, 60, proc)
    except Exception:
        stop_server(proc, signal.SIGKILL)
        raise
    return proc, f"http://127.0.0.1:{port}"


def stop_server(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
    """Signal the server and wait for it; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def make_serving(checkpoint: str, tmp_path, **options):
    """A ServingApp of the checkpoint (SQLite state in ``tmp_path`` unless ``state`` is given)."""
    from aghmn_runtime.serving.app import ServeConfig, ServingApp

    options.setdefault("state", str(tmp_path / "state.db"))
    return ServingApp(ServeConfig(checkpoint=checkpoint, **options))


@contextlib.contextmanager
def running_app(serving, handle: Optional[dict] = None):
    """Serve a ServingApp with uvicorn on a free loopback port in a thread; yields the base URL
    (``handle["server"]``, when given, is the uvicorn server: set its ``should_exit`` to drain)."""
    from aghmn_runtime.serving.cli import build_server
    from aghmn_runtime.serving.sockets import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    server = build_server(serving)
    if handle is not None:
        handle["server"] = server
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the in-thread server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


async def stream_dialogues_http(base: str, dialogues, start: Dict[str, int], stop: Dict[str, int],
                                headers=None, seed: int = 0, retry_until: float = 0.0,
                                affinity: bool = False, on_answer=None) -> Dict[str, List[dict]]:
    """One concurrent client per dialogue, each POSTing utterances start[id]..stop[id]-1 in order
    (with random tiny pauses, so that the server interleaves them). Each request carries its
    expected index, so a connection error or a 5xx is retried (until ``retry_until``, a
    time.time()) without ever counting an utterance twice. ``affinity``: send the conversation id
    as ``X-Session-Id`` (Ray routing). ``on_answer(dialogue_id, index)`` is called after every
    answer, before that dialogue's next request."""
    import asyncio

    import httpx

    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=len(dialogues) + 1, max_keepalive_connections=len(dialogues) + 1)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client:
        async def one(d, pauses):
            out = []
            extra = {"X-Session-Id": d.id} if affinity else None
            for i in range(start[d.id], stop[d.id]):
                await asyncio.sleep(pauses[i])
                while True:
                    try:
                        r = await client.post(f"/v1/conversations/{d.id}/utterances",
                                              json={"text": d.texts[i], "index": i}, headers=extra)
                        if r.status_code < 500 or time.time() > retry_until:
                            break
                    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                        if time.time() > retry_until:
                            raise
                    await asyncio.sleep(0.05)
                assert r.status_code == 200, r.text
                out.append(r.json())
                if on_answer is not None:
                    on_answer(d.id, i)
            return d.id, out
        tasks = [one(d, [rng.random() * 0.004 for _ in d.texts]) for d in dialogues]
        return dict(await asyncio.gather(*tasks))
