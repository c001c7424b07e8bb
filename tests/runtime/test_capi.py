"""The runtime's C API (through ctypes) against the torch StreamingRecognizer ("push" path) on
exported random-initialised models: same probabilities (bitwise for the BiGRU reader, whose
kernel is the same; within 1e-6 for the CNN reader, whose convolution sums in another order),
push_many with repeated conversations, close, save/restore, and bad input as error codes."""
import ctypes
import random

import numpy as np
import pytest
import torch

from aghmn_fast.data import Vocabulary
from aghmn_fast.export import export_checkpoint
from aghmn_fast.models import AGHMN, AGHMNConfig
from aghmn_fast.streaming import StreamingRecognizer
from aghmn_fast.models.checkpoint import save_checkpoint
from runtime_lib import FORMAT, INVALID, NO_PROJECTION_CACHE, UNKNOWN, RuntimeError_

WORDS = ["<pad>", "<unk>", "", "hi", "there", "!", "?", "how", "are", "you", "i", "am", "fine",
         "oh", "my", "god", "what", "cafe", "no", "way", "okay", "really", "t", "don"]
LABELS = ["neutral", "joy", "sadness", "anger", "fear"]
TEXTS = ["Hi there!", "How are you?", "I am fine.", "Oh my God!!", "What?", "Café? No way...",
         "okay", "Really, really, REALLY?!", "don't", "unknown words only", "a " * 40, "?"]

CONFIGS = {
    "bigru-bif-agru": dict(reader="bigru"),
    "bigru-unif-biagru-2hops": dict(reader="bigru", fusion="unif", summary="biagru", hops=2),
    "bigru-att": dict(reader="bigru", summary="att"),
    "bigru-context-free": dict(reader="bigru", fusion="none", summary="none"),
    "cnn-bif-agru": dict(reader="cnn"),
}


def make_model(tmp_path, name, **overrides):
    """(exported .aghmn path, torch recognizer on the push path) of a random model."""
    torch.manual_seed(hash(name) % 1000)
    kw = dict(vocab_size=len(WORDS), embedding_dim=9, num_classes=len(LABELS), hidden_size=11,
              window=3, max_len=7, cnn_filters=5)
    kw.update(overrides)
    model = AGHMN(AGHMNConfig(**kw))
    ckpt, out = tmp_path / f"{name}.pt", tmp_path / f"{name}.aghmn"
    save_checkpoint(str(ckpt), model, Vocabulary(WORDS), LABELS)
    export_checkpoint(str(ckpt), str(out))
    rec = StreamingRecognizer.from_checkpoint(str(ckpt), backend="cpu")
    assert rec.mode == "push"
    return out, rec


def torch_probs(predictions):
    return np.array([[p.probabilities[label] for label in LABELS] for p in predictions],
                    dtype=np.float32)


@pytest.mark.parametrize("name", CONFIGS)
def test_probabilities_equal_torch_push_path(runtime, tmp_path, name):
    path, rec = make_model(tmp_path, name, **CONFIGS[name])
    model = runtime.load(path)
    assert model.labels == LABELS and model.window == 3
    s = model.session()
    rng = random.Random(1)
    exact = not name.startswith("cnn")
    for step in range(12):
        if step == 6:  # save/restore in the middle, then go on from the restored state
            s.save(tmp_path / "state.bin")
            s.free()
            s = model.session()
            s.load(tmp_path / "state.bin")
        items = [(f"c{rng.randrange(4)}", rng.choice(TEXTS)) for _ in range(rng.randint(1, 6))]
        if step % 3 == 0:
            got = [s.push(*items[0])]
            got_p, got_i = np.stack([g[0] for g in got]), [g[1] for g in got]
            want = [rec.push(*items[0])]
        else:
            got_p, got_i = s.push_many(items)
            want = rec.push_many(items)
        want_p = torch_probs(want)
        assert list(got_i) == [p.index for p in want]
        if exact:
            assert np.array_equal(got_p, want_p), np.abs(got_p - want_p).max()
        else:
            np.testing.assert_allclose(got_p, want_p, rtol=0, atol=1e-6)
            assert (got_p.argmax(1) == want_p.argmax(1)).all()
    assert sorted(s.conversations()) == sorted(rec.conversations)
    for cid in rec.conversations:
        assert s.seen(cid) == rec.utterances_seen(cid)


def test_close_and_unknown_conversations(runtime, tmp_path):
    path, _ = make_model(tmp_path, "close", reader="bigru")
    s = runtime.load(path).session()
    first, _ = s.push("a", "hi there")
    s.push("a", "how are you")
    assert s.seen("a") == 2 and s.seen("zzz") == 0
    s.close("a")
    assert s.seen("a") == 0 and s.conversations() == []
    again, index = s.push("a", "hi there")  # a new conversation: no history
    assert index == 0 and np.array_equal(first, again)
    with pytest.raises(RuntimeError_) as err:
        s.close("nope")
    assert err.value.status == UNKNOWN


def test_bad_input_is_an_error_code_and_changes_nothing(runtime, tmp_path):
    path, _ = make_model(tmp_path, "bad", reader="bigru")
    model = runtime.load(path)
    s = model.session()
    s.push("a", "hi")
    for text in ("", "   \t\n", "\x1c\x1f", "ok\udc80"):
        with pytest.raises(RuntimeError_) as err:
            s.push_many([("a", "fine"), ("b", text)])
        assert err.value.status == INVALID
        assert "item 1" in err.value.message
    assert s.seen("a") == 1 and s.seen("b") == 0  # all or nothing
    lib, null = runtime.lib, None
    probs = (np.zeros(5, dtype=np.float32)).ctypes.data_as(__import__("ctypes").POINTER(
        __import__("ctypes").c_float))
    assert lib.aghmn_push(null, b"a", 1, b"hi", 2, probs, null) == INVALID
    assert lib.aghmn_push(s.handle, b"a", 1, b"hi", 2, null, null) == INVALID
    assert lib.aghmn_push(s.handle, null, 3, b"hi", 2, probs, null) == INVALID
    assert lib.aghmn_push(s.handle, b"a", 1, null, 2, probs, null) == INVALID
    assert lib.aghmn_push_many(s.handle, 2, null, null, null, null, probs, null) == INVALID
    assert lib.aghmn_push_many(s.handle, 0, null, null, null, null, null, null) == 0
    assert lib.aghmn_session_create(null, null) == INVALID
    assert lib.aghmn_model_num_labels(null) == -1 and lib.aghmn_model_label(model.handle, 5) is None
    assert lib.aghmn_num_conversations(null) == 0
    lib.aghmn_model_free(null)
    lib.aghmn_session_free(null)
    # A freed handle is detected (the session keeps its model alive meanwhile).
    model.free()
    assert s.push("a", "still works")[1] == 1
    assert lib.aghmn_session_create(model.handle, __import__("ctypes").byref(
        __import__("ctypes").c_void_p())) == INVALID
    assert "freed" in runtime.error()
    s.free()
    assert lib.aghmn_push(s.handle, b"a", 1, b"hi", 2, probs, null) == INVALID
    s.free()  # a second free is ignored


def test_state_of_another_model_is_refused(runtime, tmp_path):
    p1, _ = make_model(tmp_path, "one", reader="bigru")
    p2, _ = make_model(tmp_path, "two", reader="bigru")
    s1, s2 = runtime.load(p1).session(), runtime.load(p2).session()
    s1.push("a", "hi")
    s1.save(tmp_path / "s1.state")
    s2.push("b", "hi")
    with pytest.raises(RuntimeError_) as err:
        s2.load(tmp_path / "s1.state")
    assert err.value.status == FORMAT and "another model" in err.value.message
    assert s2.conversations() == ["b"]  # untouched
    data = (tmp_path / "s1.state").read_bytes()
    for bad in (data[:-1], data[:20], b"x" * 64, data[:30] + bytes([data[30] ^ 1]) + data[31:]):
        (tmp_path / "bad.state").write_bytes(bad)
        with pytest.raises(RuntimeError_) as err:
            s1.load(tmp_path / "bad.state")
        assert err.value.status == FORMAT
    assert s1.conversations() == ["a"]
    with pytest.raises(RuntimeError_) as err:
        s1.save(tmp_path / "no-such-dir" / "s.state")
    assert err.value.status == 2  # IO


def test_state_buffers(runtime, tmp_path):
    """aghmn_session_save_buffer gives the state file's bytes; aghmn_session_load_buffer restores
    them (the session then goes on bit for bit), refuses garbage, truncation and flipped bytes
    with FORMAT and leaves the session untouched; NULLs are INVALID, a double free a no-op."""
    path, _ = make_model(tmp_path, "buffers", reader="bigru")
    model = runtime.load(path)
    ref, s = model.session(), model.session()
    for sess in (ref, s):
        sess.push_many([("a", "hi there"), ("b", "oh my god"), ("a", "how are you?")])
    s.save(tmp_path / "s.state")
    state = s.save_buffer()
    assert state == (tmp_path / "s.state").read_bytes()
    restored = model.session()
    restored.push("other", "okay")
    restored.load_buffer(state)
    assert sorted(restored.conversations()) == ["a", "b"] and restored.seen("a") == 2
    for text in ("really?", "no way", "fine"):
        assert np.array_equal(restored.push("a", text)[0], ref.push("a", text)[0])
    empty = model.session().save_buffer()
    assert len(empty) < len(state)
    model.session().load_buffer(empty)

    target = model.session()
    target.push("keep", "hi")
    flipped = bytearray(state)
    flipped[len(state) // 2] ^= 0x40
    for bad in (b"", b"junk" * 40, state[:-1], state[: len(state) // 2], state[:30],
                bytes(flipped), state + b"\0"):
        with pytest.raises(RuntimeError_) as err:
            target.load_buffer(bad)
        assert err.value.status == FORMAT and "state buffer" in err.value.message
    assert target.conversations() == ["keep"] and target.seen("keep") == 1

    ctypes = __import__("ctypes")
    lib, null = runtime.lib, None
    data, size = ctypes.c_void_p(), ctypes.c_size_t()
    assert lib.aghmn_session_save_buffer(null, ctypes.byref(data), ctypes.byref(size)) == INVALID
    assert lib.aghmn_session_save_buffer(s.handle, null, ctypes.byref(size)) == INVALID
    assert lib.aghmn_session_save_buffer(s.handle, ctypes.byref(data), null) == INVALID
    assert lib.aghmn_session_load_buffer(s.handle, null, 10) == INVALID
    assert lib.aghmn_session_load_buffer(null, state, len(state)) == INVALID
    assert lib.aghmn_session_save_buffer(s.handle, ctypes.byref(data), ctypes.byref(size)) == 0
    assert size.value == len(state)
    lib.aghmn_buffer_free(data)
    lib.aghmn_buffer_free(data)  # a second free is ignored
    lib.aghmn_buffer_free(null)


def test_large_rounds_equal_torch(runtime, tmp_path):
    """Rounds of many conversations (tiles spread over threads) give the torch path's bits."""
    path, rec = make_model(tmp_path, "large", reader="bigru")
    s = runtime.load(path).session()
    rng = random.Random(3)
    for _ in range(3):
        items = [(f"c{i}", rng.choice(TEXTS)) for i in range(150)] + [("c0", "again?")]
        got, _ = s.push_many(items)
        assert np.array_equal(got, torch_probs(rec.push_many(items)))


def test_conversation_bytes_and_a_store_that_gives_memory_back(runtime, tmp_path):
    """aghmn_model_conversation_bytes is the torch ring store's; the session's store doubles
    when full and halves once at most a quarter is open, the open conversations exact across it;
    NULL and freed handles give 0."""
    path, rec = make_model(tmp_path, "memory", reader="bigru")
    model = runtime.load(path)
    per = model.conversation_bytes
    assert per == rec.bytes_per_conversation == 3 * 11 * 4 * (1 + 3 * 2)
    s = model.session()
    assert s.store_bytes() == 4 * per
    s.push_many([(f"c{i}", "hi there") for i in range(100)] + [("keep", "how are you?")])
    assert s.store_bytes() == 128 * per
    for i in range(100):
        s.close(f"c{i}")
    assert s.store_bytes() == 4 * per and s.conversations() == ["keep"]
    probs, index = s.push("keep", "I am fine.")
    want = rec.push_many([("keep", "how are you?"), ("keep", "I am fine.")])[1]
    assert index == 1 and np.array_equal(probs, torch_probs([want])[0])
    lib = runtime.lib
    assert lib.aghmn_model_conversation_bytes(None) == 0 and lib.aghmn_session_store_bytes(None) == 0
    s.free()
    assert lib.aghmn_session_store_bytes(s.handle) == 0
    model.free()
    assert lib.aghmn_model_conversation_bytes(model.handle) == 0


def test_sessions_without_the_projection_cache(runtime, tmp_path):
    """aghmn_session_create_with(AGHMN_SESSION_NO_PROJECTION_CACHE): the probabilities and state
    buffers of aghmn_session_create's session, bit for bit, for K * H floats per conversation;
    unknown flag bits and NULL are refused."""
    path, _ = make_model(tmp_path, "compact", reader="bigru", window=4)
    model = runtime.load(path)
    cached, compact = model.session(), model.session(NO_PROJECTION_CACHE)
    assert cached.conversation_bytes() == model.conversation_bytes == 4 * 11 * 4 * 7
    assert compact.conversation_bytes() == 4 * 11 * 4
    items = [(f"c{i % 19}", TEXTS[i % len(TEXTS)]) for i in range(120)]
    for s in (cached, compact):
        s.push_many(items)
    assert compact.store_bytes() == 32 * compact.conversation_bytes()
    a, _ = cached.push_many([(f"c{i}", "what?") for i in range(19)])
    b, _ = compact.push_many([(f"c{i}", "what?") for i in range(19)])
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    assert cached.save_buffer() == compact.save_buffer()
    handle = ctypes.c_void_p()
    for flags in (2, 1 << 31):
        with pytest.raises(RuntimeError_, match="flags has unknown bits") as err:
            runtime.check(runtime.lib.aghmn_session_create_with(model.handle, flags, ctypes.byref(handle)))
        assert err.value.status == INVALID
    with pytest.raises(RuntimeError_, match="model is NULL"):
        runtime.check(runtime.lib.aghmn_session_create_with(None, 0, ctypes.byref(handle)))
    assert runtime.lib.aghmn_session_conversation_bytes(None) == 0
    compact.free()
    assert runtime.lib.aghmn_session_conversation_bytes(compact.handle) == 0
