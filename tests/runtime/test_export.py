"""aghmn-fast export and the model file format (version 2): layout, determinism, refusals, and
the runtime's checks of damaged or hostile files."""
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from aghmn_fast.cli import main
from aghmn_fast.data import Vocabulary
from aghmn_fast.export import (FLAG_REQUIRED, FORMAT_VERSION, MAGIC, fnv1a64, kv_section,
                               load_model_file, pack_file, read_model_file, tensor_sections, xxh64)
from aghmn_fast.models import AGHMN, AGHMNConfig
from aghmn_fast.models.checkpoint import save_checkpoint
from runtime_lib import FORMAT, INVALID, IO, VERSION, RuntimeError_

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from runtime_common import import_runtime  # noqa: E402

WORDS = ["<pad>", "<unk>", "", "hi", "there", "!"]
LABELS = ["neutral", "joy", "anger"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def checkpoint(tmp_path, labels=LABELS, **kw):
    cfg = dict(vocab_size=len(WORDS), embedding_dim=4, num_classes=3, hidden_size=5, window=2)
    cfg.update(kw)
    path = tmp_path / f"{cfg.get('reader', 'bigru')}.pt"
    torch.manual_seed(0)
    save_checkpoint(str(path), AGHMN(AGHMNConfig(**cfg)), Vocabulary(WORDS), labels)
    return path


def sections(data: bytes) -> dict:
    count = struct.unpack_from("<I", data, 12)[0]
    out = {}
    for i in range(count):
        tag, flags, reserved, off, size = struct.unpack_from("<8sIIQQ", data, 16 + 32 * i)
        out[tag.rstrip(b"\0").decode()] = (off, size, flags)
    return out


def reseal(data: bytes) -> bytes:
    return data[:-8] + struct.pack("<Q", xxh64(data[:-8]))


def export(tmp_path, ckpt, name="m.aghmn") -> bytes:
    out = tmp_path / name
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return out.read_bytes()


@pytest.mark.parametrize("reader", ["bigru", "cnn"])
def test_export_layout(tmp_path, capsys, reader):
    ckpt = checkpoint(tmp_path, reader=reader, cnn_filters=3)
    data = export(tmp_path, ckpt)
    assert '"reader": "%s"' % reader in capsys.readouterr().out
    assert data[:8] == MAGIC and struct.unpack_from("<I", data, 8)[0] == FORMAT_VERSION == 2
    assert struct.unpack("<Q", data[-8:])[0] == xxh64(data[:-8])
    table = sections(data)
    assert list(table) == ["kv", "tensors", "data"]
    assert all(off % 64 == 0 and flags == FLAG_REQUIRED for off, _, flags in table.values())
    kv, tensors, _ = read_model_file(data)
    assert kv["aghmn.reader"] == reader and kv["aghmn.hidden_size"] == 5
    assert kv["aghmn.window"] == 2 and kv["aghmn.labels"] == LABELS
    assert kv["tokenizer.tokens"] == WORDS and kv["tokenizer.kind"] == "aghmn-words-1"
    assert kv["general.producer"].startswith("aghmn_fast ")
    assert kv["general.source_digest"] == torch.load(ckpt, weights_only=True)["tensor_digest"]
    # The framework's own layout: the state dict's names, shapes and values, nothing packed.
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert list(tensors) == list(state)
    for name, t in state.items():
        assert torch.equal(tensors[name], t), name
    assert tensors["fusion.weight_hh_l0_reverse"].shape == (15, 5)


def test_export_is_deterministic_and_timeless(tmp_path):
    ckpt = checkpoint(tmp_path)
    first = export(tmp_path, ckpt, "a.aghmn")
    copy = tmp_path / "elsewhere.pt"
    shutil.copy(ckpt, copy)
    assert export(tmp_path, ckpt, "b.aghmn") == first
    assert export(tmp_path, copy, "c.aghmn") == first   # the checkpoint's name is not in it


def test_export_needs_no_compiled_extension(tmp_path):
    ckpt, out = checkpoint(tmp_path), tmp_path / "m.aghmn"
    code = ("import sys, torch\n"
            "import aghmn_fast._extension as ext\n"
            "def refuse(*a): raise ImportError('no compiled extension in this test')\n"
            "ext.load = refuse\n"
            "torch.ops.load_library = refuse\n"
            "from aghmn_fast.cli import main\n"
            f"rc = main(['export', '--checkpoint', {str(ckpt)!r}, '--out', {str(out)!r}])\n"
            "sys.exit(3 if hasattr(torch.ops.aghmn_fast, 'stream_pack') else rc)\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == export(tmp_path, ckpt, "with_ext.aghmn")


def test_load_model_file_round_trips_the_model(tmp_path):
    ckpt = checkpoint(tmp_path, reader="cnn", cnn_filters=3)
    model, vocab, labels = load_model_file(export(tmp_path, ckpt))
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert labels == LABELS and vocab.itos == WORDS
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def refuse(tmp_path, capsys, ckpt, words):
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o.aghmn")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and err.startswith("aghmn-fast export:"), err
    assert not (tmp_path / "o.aghmn").exists()


def test_export_refusals_are_one_line_and_exit_2(tmp_path, capsys):
    minilm = checkpoint(tmp_path, reader="minilm", embedding_dim=384)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    for ckpt, words in ((minilm, "minilm"), (tmp_path / "missing.pt", "not found"), (junk, "not readable")):
        refuse(tmp_path, capsys, ckpt, words)


def resave(ckpt, change):
    """The checkpoint with ``change(ckpt_dict)`` applied and its digest recomputed (a file a
    writer made this way, not a damaged one)."""
    from aghmn_fast.models.checkpoint import tensor_digest
    obj = torch.load(ckpt, weights_only=True)
    change(obj)
    obj["tensor_digest"] = tensor_digest(obj["state_dict"])
    torch.save(obj, ckpt)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_export_refuses_non_finite_weights(tmp_path, capsys, value):
    ckpt = checkpoint(tmp_path)
    resave(ckpt, lambda o: o["state_dict"]["classifier.bias"].__setitem__(1, value))
    # refused where every checkpoint is loaded (the model's load_state_dict), naming the tensor
    refuse(tmp_path, capsys, ckpt, "the weights hold NaN or Inf: classifier.bias")


@pytest.mark.parametrize("labels, words", [(["a", "b", "a"], "appears twice"),
                                           (["a", "b\0c", "d"], "NUL"),
                                           (["a", "\ud800", "d"], "not valid UTF-8")])
def test_export_refuses_bad_labels(tmp_path, capsys, labels, words):
    ckpt = checkpoint(tmp_path)
    resave(ckpt, lambda o: o.__setitem__("label_names", labels))
    refuse(tmp_path, capsys, ckpt, words)


# ---- the runtime's loader ----------------------------------------------------------------
@pytest.fixture
def parts(tmp_path):
    """(kv, tensors) of an exported model, to rebuild variants of it."""
    kv, tensors, _ = read_model_file(export(tmp_path, checkpoint(tmp_path)))
    return kv, tensors


def build(kv, tensors, extra=(), kv_bytes=None):
    directory, data = tensor_sections(list(tensors.items()))
    return pack_file([("kv", kv_bytes if kv_bytes is not None else kv_section(kv), True),
                      ("tensors", directory, True), ("data", data, True), *extra])


def error(runtime, data):
    with pytest.raises(RuntimeError_) as err:
        runtime.load_buffer(data)
    return err.value.status, err.value.message


def test_runtime_reads_what_it_needs_and_skips_unknown_optional_sections(runtime, parts):
    kv, tensors = parts
    plain = runtime.load_buffer(build(kv, tensors))
    extended = runtime.load_buffer(build(kv, tensors, [("future", b"\x01" * 100, False)]))
    kv2 = dict(kv, **{"general.comment": "a key this runtime does not know"})
    more_kv = runtime.load_buffer(build(kv2, tensors))
    probs = [m.session().push("c", "hi there !")[0] for m in (plain, extended, more_kv)]
    assert np.array_equal(probs[0], probs[1]) and np.array_equal(probs[0], probs[2])
    for m in (plain, extended, more_kv):
        m.free()
    status, message = error(runtime, build(kv, tensors, [("future", b"\x01" * 100, True)]))
    assert status == FORMAT and "section future is marked required" in message


def test_runtime_names_what_is_wrong(runtime, parts, tmp_path):
    kv, tensors = parts
    good = build(kv, tensors)
    assert error(runtime, b"PK\x03\x04" + good[4:]) == (FORMAT, "not an .aghmn model file (no AGHMNRT magic)")
    status, message = error(runtime, reseal(good[:8] + struct.pack("<I", 1) + good[12:]))
    assert status == VERSION and "format version 1" in message and "aghmn-fast export" in message
    assert error(runtime, reseal(good[:8] + struct.pack("<I", 3) + good[12:])) == (
        VERSION, "model file: format version 3, this runtime reads version 2")
    assert "checksum" in error(runtime, good[:-1])[1]
    assert "checksum" in error(runtime, good[:100] + bytes([good[100] ^ 4]) + good[101:])[1]

    def wrong(kv_change=None, tensor_change=None):
        k, t = dict(kv), dict(tensors)
        if kv_change:
            kv_change(k)
        if tensor_change:
            tensor_change(t)
        status, message = error(runtime, build(k, t))
        assert status == FORMAT
        return message

    assert "hidden_size" in wrong(lambda k: k.__setitem__("aghmn.hidden_size", 1 << 40))
    assert "aghmn.window is missing" in wrong(lambda k: k.pop("aghmn.window"))
    assert "wrong type" in wrong(lambda k: k.__setitem__("aghmn.window", "2"))
    assert "tokenizer.kind" in wrong(lambda k: k.__setitem__("tokenizer.kind", "bpe"))
    assert '"joy" appears twice' in wrong(lambda k: k.__setitem__("aghmn.labels", ["joy", "joy", "x"]))
    assert "label 1 holds a NUL" in wrong(lambda k: k.__setitem__("aghmn.labels", ["a", "b\0", "c"]))
    assert "tensor classifier.bias is missing" in wrong(tensor_change=lambda t: t.pop("classifier.bias"))
    assert "tensor extra.weight is not part" in wrong(
        tensor_change=lambda t: t.__setitem__("extra.weight", torch.zeros(2)))
    assert "has shape [3, 6]" in wrong(
        tensor_change=lambda t: t.__setitem__("classifier.weight", torch.zeros(3, 6)))
    for value in (float("nan"), float("inf"), float("-inf")):
        def poison(t, value=value):
            t["fusion.weight_hh_l0"] = t["fusion.weight_hh_l0"].clone()
            t["fusion.weight_hh_l0"][2, 3] = value
        assert "tensor fusion.weight_hh_l0 holds a non-finite value" in wrong(tensor_change=poison)
    # A label of invalid UTF-8 (same length as "joy", so the metadata stays well-formed).
    status, message = error(runtime, build(kv, tensors, kv_bytes=kv_section(kv).replace(b"joy", b"j\xffy")))
    assert status == FORMAT and "not valid UTF-8" in message
    table = sections(good)
    entry = 16 + 32 * list(table).index("data")
    past_end = good[:entry + 16] + struct.pack("<Q", 1 << 62) + good[entry + 24:]
    assert "outside the file" in error(runtime, reseal(past_end))[1]
    with pytest.raises(RuntimeError_) as err:
        runtime.load(tmp_path / "missing.aghmn")
    assert err.value.status == IO
    assert runtime.lib.aghmn_model_load(None, None) == INVALID


def test_pack_file_aligns_and_checksums():
    data = pack_file([("kv", b"x" * 3, True), ("note", b"{}", False)])
    assert sections(data) == {"kv": (128, 3, 1), "note": (192, 2, 0)}
    assert len(data) == 192 + 64 + 8


def test_xxh64_reference_values():
    """The model file's checksum is XXH64 (seed 0): its reference values, the last long enough
    for the 32-byte stripes and every tail step."""
    assert xxh64(b"") == 0xEF46DB3751D8E999
    assert xxh64(b"a") == 0xD24EC4F1A98C6E5B
    assert xxh64(b"abc") == 0x44BC2CF5AD770999
    assert xxh64(b"Nobody inspects the spammish repetition") == 0xFBCEA83C8A378BF1


def test_fnv1a64_known_values():
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C


def test_the_writer_and_the_runtime_agree_on_the_magic_and_version(tmp_path):
    """The writer (aghmn_fast.export, the format's Python side) and the runtime header's one
    definition (AGHMN_MODEL_MAGIC / AGHMN_MODEL_FORMAT_VERSION, which the C loader, the Python
    module and the torch-free server's file sniffing use) agree: a change to one fails here."""
    rt = import_runtime()
    from aghmn_runtime.serving.recognizers import is_runtime_model
    assert (rt.MODEL_MAGIC, rt.MODEL_FORMAT_VERSION) == (MAGIC, FORMAT_VERSION)
    golden = os.path.join(ROOT, "csrc", "runtime", "tests", "golden", "bigru.aghmn")
    with open(golden, "rb") as f:
        assert f.read(12) == MAGIC + struct.pack("<I", FORMAT_VERSION)
    assert is_runtime_model(golden) and not is_runtime_model(checkpoint(tmp_path))
