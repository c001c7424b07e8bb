"""What the runtime accepts as a model or state file (only regular files, under a size cap: a FIFO,
a character device or a directory is one clear error at once, never a wait or a read without
end), and conversation ids (UTF-8 only: refused at push and in a state file), through the C API
and the Python module."""
import ctypes
import os
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from runtime_common import RUNTIME_DIR, import_runtime  # noqa: E402

from aghmn_fast.export import fnv1a64  # noqa: E402
from runtime_lib import FORMAT, INVALID, IO, RuntimeError_  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "runtime", "tests", "golden")
MODEL = os.path.join(GOLDEN, "bigru.aghmn")


class FifoRescuer:
    """Opens the FIFO's write end (and closes it) as soon as a reader waits on it, so a loader
    that blocked on the FIFO is released and the test fails instead of hanging."""

    def __init__(self, path):
        self.path, self.done, self.rescued = path, threading.Event(), False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done.wait(0.05):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:   # no reader: nobody is blocked
                continue
            time.sleep(0.5)   # a loader that correctly refused is long gone by now
            os.close(fd)
            self.rescued = True

    def stop(self):
        self.done.set()
        self.thread.join()


@pytest.fixture
def odd_paths(tmp_path):
    """(path, what the error names) of files that are not regular files."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    rescuer = FifoRescuer(str(fifo))
    yield [(str(fifo), "is a FIFO, not a regular file"),
           ("/dev/null", "is a character device, not a regular file"),
           (str(tmp_path), "is a directory, not a regular file")]
    rescuer.stop()
    assert not rescuer.rescued, "a loader blocked on the FIFO"


def test_c_api_refuses_what_is_not_a_regular_file(runtime, odd_paths):
    model = runtime.load(MODEL)
    session = model.session()
    for path, words in odd_paths:
        for load in (runtime.load, session.load):
            with pytest.raises(RuntimeError_) as err:
                load(path)
            assert err.value.status == IO and words in err.value.message, err.value.message
    model.free()


def test_python_module_refuses_what_is_not_a_regular_file(odd_paths):
    rt = import_runtime()
    rec = rt.StreamingRecognizer(MODEL)
    for path, words in odd_paths:
        with pytest.raises(OSError, match=words):
            rt.StreamingRecognizer(path)
        with pytest.raises(OSError, match=words):
            rec.load_state(path)


def test_dev_zero_is_refused_at_once():
    """/dev/zero, which a loader reading to the end would read until memory runs out (here under
    an address-space limit, in a process of its own)."""
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            f"sys.path.insert(0, {RUNTIME_DIR!r})\n"
            "import aghmn_runtime\n"
            "try:\n"
            "    aghmn_runtime.StreamingRecognizer('/dev/zero')\n"
            "except OSError as e:\n"
            "    print(e)\n")
    import_runtime()   # built in place before the child imports it
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "/dev/zero is a character device, not a regular file" in done.stdout


def test_files_over_the_cap_are_refused_before_reading(runtime, tmp_path):
    big_model, big_state = tmp_path / "big.aghmn", tmp_path / "big.state"
    with open(big_model, "wb") as f:   # sparse: no disk used
        f.truncate((4 << 30) + 1)
    with open(big_state, "wb") as f:
        f.truncate((64 << 30) + 1)
    with pytest.raises(RuntimeError_) as err:
        runtime.load(big_model)
    assert err.value.status == IO and "over the limit of 4294967296" in err.value.message
    model = runtime.load(MODEL)
    with pytest.raises(RuntimeError_) as err:
        model.session().load(big_state)
    assert err.value.status == IO and "over the limit" in err.value.message
    model.free()


def test_ids_must_be_utf8_at_push(runtime):
    model = runtime.load(MODEL)
    s = model.session()
    probs = np.zeros(len(model.labels), dtype=np.float32)
    status = runtime.lib.aghmn_push(s.handle, b"\xff", 1, b"hi", 2,
                                    probs.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), None)
    assert status == INVALID and "id of item 0 is not valid UTF-8" in runtime.error()
    assert runtime.lib.aghmn_num_conversations(s.handle) == 0
    s.push("caf\u00e9", "hi")   # UTF-8 beyond ASCII is fine
    model.free()


def test_state_with_a_non_utf8_id_is_refused(runtime, tmp_path):
    model = runtime.load(MODEL)
    s = model.session()
    s.push("a", "hi there")
    good = tmp_path / "good.state"
    s.save(good)
    data = good.read_bytes()
    at = 8 + 4 + 4 + 8 + 4 * 8   # magic, version, reserved, fingerprint, K, H, width, n
    assert struct.unpack_from("<I", data, at)[0] == 1 and data[at + 4:at + 5] == b"a"
    bad = data[:at + 4] + b"\xff" + data[at + 5:-8]
    (tmp_path / "bad.state").write_bytes(bad + struct.pack("<Q", fnv1a64(bad)))
    fresh = model.session()
    with pytest.raises(RuntimeError_) as err:
        fresh.load(tmp_path / "bad.state")
    assert err.value.status == FORMAT and "conversation id 0 is not valid UTF-8" in err.value.message
    fresh.load(good)   # the well-formed one loads
    model.free()
    rec = import_runtime().StreamingRecognizer(MODEL)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        rec.load_state(str(tmp_path / "bad.state"))
    rec.load_state(str(good))
    assert rec.conversations() == ["a"]
