"""aghmn_runtime, the pybind11 module over the runtime's C API: the StreamingRecognizer API,
numpy arrays, errors as Python exceptions, no torch in the process."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from runtime_common import RUNTIME_DIR, export, import_runtime, tiny_checkpoint  # noqa: E402

from aghmn_fast.data import MELD_LABELS, normalize as py_normalize  # noqa: E402


@pytest.fixture(scope="module")
def rt():
    """The module, built in place from this checkout."""
    return import_runtime()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two exported tiny models (different weights) with their checkpoints."""
    tmp = tmp_path_factory.mktemp("models")
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        ckpt = tiny_checkpoint(str(tmp / f"{name}.pt"), window=4, seed=seed)
        export(ckpt, str(tmp / f"{name}.aghmn"))
        out[name] = str(tmp / f"{name}.aghmn")
        out[name + "_ckpt"] = ckpt
    return out


@pytest.fixture
def rec(rt, models):
    with rt.StreamingRecognizer(models["a"]) as r:
        yield r


TEXTS = ["Hi there!", "Oh my God, Ross...", "what?! café", "no", "I LOVE it", "sure sure",
         "why?", "Wow!!", "okay then", "Rachel!"]


def test_labels_window_and_a_push(rec):
    assert rec.labels == list(MELD_LABELS) and rec.label_names == rec.labels
    assert rec.window == 4
    p = rec.push("c1", "Hi there!")
    assert (p.conversation_id, p.index) == ("c1", 0)
    assert list(p.probabilities) == rec.labels
    assert abs(sum(p.probabilities.values()) - 1) < 1e-5
    assert p.label_id == int(np.argmax([p.probabilities[n] for n in rec.labels]))
    assert p.label == rec.labels[p.label_id] and p.latency_ms > 0
    assert p.to_dict()["id"] == "c1"
    assert rec.push("c1", "no").index == 1 and rec.utterances_seen("c1") == 2


def test_push_many_equals_pushes_in_order(rt, models):
    """A batch (a conversation repeated in it included) gives what the same pushes give."""
    items = [(f"c{i % 3}", TEXTS[i]) for i in range(len(TEXTS))]
    with rt.StreamingRecognizer(models["a"]) as one, rt.StreamingRecognizer(models["a"]) as many:
        singles = [one.push(c, t) for c, t in items]
        batch = many.push_many(items)
        assert [(p.conversation_id, p.index) for p in batch] == [
            (p.conversation_id, p.index) for p in singles]
        for a, b in zip(singles, batch):
            assert a.probabilities == b.probabilities
        probs, indices = one.push_many_arrays(np.array(["c0", "c9"]),
                                              np.array(["again", "new"], dtype=object))
        assert probs.dtype == np.float32 and probs.shape == (2, len(one.labels))
        assert indices.dtype == np.int64 and indices.tolist() == [4, 0]
        assert one.push_many([]) == [] and one.push_many_arrays([], [])[0].shape == (0, 7)


def test_bad_input_raises_and_touches_no_state(rec):
    rec.push("c1", "hello")
    before = (rec.conversations(), rec.utterances_seen("c1"))
    cases = [
        (lambda: rec.push("c1", "   \t"), ValueError, "empty"),
        (lambda: rec.push("c1", ""), ValueError, "empty"),
        (lambda: rec.push_many([("c1", "fine"), ("c2", " ")]), ValueError, "empty"),
        (lambda: rec.push("c1", "bad \ud800 text"), ValueError, "UTF-8"),
        (lambda: rec.push("c1", b"bad \xff bytes"), ValueError, "UTF-8"),
        (lambda: rec.push(7, "text"), TypeError, "conversation_id"),
        (lambda: rec.push(b"c1", "text"), TypeError, "conversation_id"),
        (lambda: rec.push("c1", None), TypeError, "^text must be a str, got NoneType"),
        (lambda: rec.push_many([("c1",)]), TypeError, r"^item 0 must be a \(conversation_id, text\) pair"),
        (lambda: rec.push_many([("c1", 5)]), TypeError, "^text of item 0 must be a str"),
        (lambda: rec.push_many_arrays(np.arange(2), ["a", "b"]), TypeError, "dtype int64"),
        (lambda: rec.push_many_arrays(["a", "b"], np.zeros(2, np.float32)), TypeError, "float32"),
        (lambda: rec.push_many_arrays(np.array([["a"]]), ["a"]), ValueError, "dimensions"),
        (lambda: rec.push_many_arrays(["a"], ["b", "c"]), ValueError, "one length"),
        (lambda: rec.push_many_arrays("ab", "cd"), TypeError, "sequence of str"),
        (lambda: rec.close("never-opened"), KeyError, "unknown conversation"),
    ]
    for call, exc, words in cases:
        with pytest.raises(exc, match=words):
            call()
        assert (rec.conversations(), rec.utterances_seen("c1")) == before


def test_conversations_close_and_unknown(rec):
    rec.push_many([("a", "hi"), ("b", "yo"), ("a", "again")])
    assert sorted(rec.conversations()) == ["a", "b"]
    assert rec.utterances_seen("a") == 2 and rec.utterances_seen("zzz") == 0
    rec.close("a")
    assert rec.conversations() == ["b"] and rec.utterances_seen("a") == 0
    assert rec.push("a", "fresh start").index == 0


def test_save_and_load_state_continue_bitwise(rt, models, tmp_path):
    with rt.StreamingRecognizer(models["a"]) as ref, rt.StreamingRecognizer(models["a"]) as r:
        for rr in (ref, r):
            rr.push_many([("x", t) for t in TEXTS[:6]] + [("y", "hello")])
        r.save_state(tmp_path / "s.state")
        with rt.StreamingRecognizer(models["a"]) as restored:
            restored.load_state(str(tmp_path / "s.state"))
            assert sorted(restored.conversations()) == ["x", "y"]
            assert restored.utterances_seen("x") == 6
            for t in TEXTS[6:]:
                assert restored.push("x", t).probabilities == ref.push("x", t).probabilities


def test_load_state_errors_leave_state_untouched(rt, models, tmp_path):
    with rt.StreamingRecognizer(models["b"]) as other:
        other.push("o", "hello")
        other.save_state(str(tmp_path / "other.state"))
    (tmp_path / "junk.state").write_bytes(b"not a state at all" * 10)
    with rt.StreamingRecognizer(models["a"]) as r:
        r.push("keep", "hello")
        with pytest.raises(FileNotFoundError):
            r.load_state(str(tmp_path / "missing.state"))
        with pytest.raises(ValueError):
            r.load_state(str(tmp_path / "junk.state"))
        with pytest.raises(ValueError):
            r.load_state(str(tmp_path / "other.state"))
        assert r.conversations() == ["keep"] and r.utterances_seen("keep") == 1
        with pytest.raises(OSError):
            r.save_state(str(tmp_path / "no-such-dir" / "s.state"))


def test_state_bytes_round_trip_and_refusals(rt, models, tmp_path):
    """save_state_bytes is the state file's content; load_state_bytes takes any bytes-like
    object, continues bit for bit, and refuses garbage, truncation, another model's state and
    non-bytes without touching the state."""
    with rt.StreamingRecognizer(models["a"]) as ref, rt.StreamingRecognizer(models["a"]) as r:
        for rr in (ref, r):
            rr.push_many([("x", t) for t in TEXTS[:5]] + [("y", "hello")])
        r.save_state(tmp_path / "s.state")
        state = r.save_state_bytes()
        assert isinstance(state, bytes) and state == (tmp_path / "s.state").read_bytes()
        expected = r.push("x", "why?").probabilities
        assert ref.push("x", "why?").probabilities == expected
        for form in (state, bytearray(state), memoryview(state)):
            with rt.StreamingRecognizer(models["a"]) as restored:
                restored.push("gone", "hi")
                restored.load_state_bytes(form)
                assert sorted(restored.conversations()) == ["x", "y"]
                assert restored.utterances_seen("x") == 5
                assert restored.push("x", "why?").probabilities == expected
        for t in TEXTS[5:]:
            assert r.push("x", t).probabilities == ref.push("x", t).probabilities
    with rt.StreamingRecognizer(models["b"]) as other:
        other.push("o", "hello")
        other_state = other.save_state_bytes()
    with rt.StreamingRecognizer(models["a"]) as r:
        r.push("keep", "hello")
        for bad, words in ((b"", "magic"), (b"garbage" * 20, "magic"), (state[:-3], "checksum"),
                           (state[: len(state) // 2], "checksum"), (other_state, "another model")):
            with pytest.raises(ValueError, match=words):
                r.load_state_bytes(bad)
        for wrong in ("a str", None, 42):
            with pytest.raises(TypeError, match="bytes-like"):
                r.load_state_bytes(wrong)
        assert r.conversations() == ["keep"] and r.utterances_seen("keep") == 1
        r.release()
        with pytest.raises(ValueError, match="released"):
            r.save_state_bytes()
        with pytest.raises(ValueError, match="released"):
            r.load_state_bytes(state)


def test_model_file_errors(rt, models, tmp_path):
    with pytest.raises(FileNotFoundError):
        rt.StreamingRecognizer(str(tmp_path / "missing.aghmn"))
    (tmp_path / "text.aghmn").write_text("hello")
    with pytest.raises(ValueError, match="not an .aghmn model file"):
        rt.StreamingRecognizer(str(tmp_path / "text.aghmn"))
    data = bytearray(open(models["a"], "rb").read())
    data[8] = 3   # format version 3
    (tmp_path / "v3.aghmn").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="version"):
        rt.StreamingRecognizer(str(tmp_path / "v3.aghmn"))
    (tmp_path / "cut.aghmn").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ValueError):
        rt.StreamingRecognizer(str(tmp_path / "cut.aghmn"))
    with pytest.raises(OSError, match="is a directory, not a regular file"):
        rt.StreamingRecognizer(str(tmp_path))
    with pytest.raises(TypeError):
        rt.StreamingRecognizer(3.5)


def test_released_recognizer_raises(rt, models):
    r = rt.StreamingRecognizer.from_file(models["a"])
    r.push("c", "hi")
    r.release()
    for call in (lambda: r.push("c", "hi"), lambda: r.push_many([("c", "hi")]),
                 lambda: r.close("c"), lambda: r.conversations(), lambda: r.save_state("x")):
        with pytest.raises(ValueError, match="released"):
            call()
    r.release()   # twice is fine


def test_normalize_matches_python(rt):
    for text in ["Hello, World!", "Café NAÏVE élève", "what?!  ok\t\n", "İstanbul ＦＵＬＬ",
                 "x\u0301y", "", "   ", "42 — don't"]:
        assert rt.normalize(text) == py_normalize(text), text
    with pytest.raises(ValueError, match="UTF-8"):
        rt.normalize(b"\xc3")
    with pytest.raises(TypeError):
        rt.normalize(None)


def test_threads_share_one_recognizer_safely(rt, models, rec):
    """Four threads push into one recognizer at once, each its own conversations with its own
    texts: every answer equals the same thread's work run alone on a fresh recognizer."""
    def work(recognizer, k, start=None):
        if start is not None:
            start.wait()  # all threads push at once
        answers = []
        for i in range(50):
            answers.append(recognizer.push(f"t{k}", TEXTS[(i + k) % len(TEXTS)]))
            answers.extend(recognizer.push_many([(f"t{k}", TEXTS[(3 * i + k) % len(TEXTS)]),
                                                 (f"u{k}", TEXTS[(i * k) % len(TEXTS)])]))
        return [(p.conversation_id, p.index, p.label, p.probabilities) for p in answers]

    threaded, start = {}, threading.Barrier(4)
    threads = [threading.Thread(target=lambda k=k: threaded.__setitem__(k, work(rec, k, start)))
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with rt.StreamingRecognizer(models["a"]) as alone:
        serial = {k: work(alone, k) for k in range(4)}
    assert sorted(threaded) == list(range(4))
    for k in range(4):
        assert threaded[k] == serial[k], f"thread {k}'s answers differ from its serial run"
    # the threads' answers differ from each other, so a mixed-up conversation would show
    assert len({str(serial[k]) for k in range(4)}) == 4
    assert all(rec.utterances_seen(f"t{k}") == 100 and rec.utterances_seen(f"u{k}") == 50
               for k in range(4))


def test_the_module_never_imports_torch(rt, models):
    code = ("import sys, aghmn_runtime as rt\n"
            "r = rt.StreamingRecognizer(sys.argv[1])\n"
            "r.push_many([('a', 'hi there'), ('b', 'no')])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=RUNTIME_DIR)
    done = subprocess.run([sys.executable, "-c", code, models["a"]], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
