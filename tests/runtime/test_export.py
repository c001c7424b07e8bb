"""aghmn-fast export and the model file format (version 1): layout, refusals, and the runtime's
checks of damaged or hostile files."""
import struct

import pytest

from aghmn_fast.cli import main
from aghmn_fast.data import Vocabulary
from aghmn_fast.export import FORMAT_VERSION, MAGIC, fnv1a64, pack_file
from aghmn_fast.models import AGHMN, AGHMNConfig
from aghmn_fast.models.checkpoint import save_checkpoint
from runtime_lib import FORMAT, INVALID, IO, VERSION, RuntimeError_

WORDS = ["<pad>", "<unk>", "", "hi", "there", "!"]
LABELS = ["neutral", "joy", "anger"]


def checkpoint(tmp_path, **kw):
    cfg = dict(vocab_size=len(WORDS), embedding_dim=4, num_classes=3, hidden_size=5, window=2)
    cfg.update(kw)
    path = tmp_path / f"{cfg.get('reader', 'bigru')}.pt"
    save_checkpoint(str(path), AGHMN(AGHMNConfig(**cfg)), Vocabulary(WORDS), LABELS)
    return path


def sections(data: bytes) -> dict:
    count = struct.unpack_from("<I", data, 12)[0]
    out = {}
    for i in range(count):
        tag, off, size = struct.unpack_from("<8sQQ", data, 16 + 24 * i)
        out[tag.rstrip(b"\0").decode()] = (off, size)
    return out


def reseal(data: bytes) -> bytes:
    return data[:-8] + struct.pack("<Q", fnv1a64(data[:-8]))


@pytest.mark.parametrize("reader", ["bigru", "cnn"])
def test_export_layout(tmp_path, capsys, reader):
    out = tmp_path / "m.aghmn"
    assert main(["export", "--checkpoint", str(checkpoint(tmp_path, reader=reader)), "--out", str(out)]) == 0
    assert '"reader": "%s"' % reader in capsys.readouterr().out
    data = out.read_bytes()
    assert data[:8] == MAGIC and struct.unpack_from("<I", data, 8)[0] == FORMAT_VERSION
    assert struct.unpack("<Q", data[-8:])[0] == fnv1a64(data[:-8])
    table = sections(data)
    expected = {"dims", "labels", "vocab", "embed", "packed", "meta"} | ({"cnn"} if reader == "cnn" else set())
    assert set(table) == expected
    assert all(off % 64 == 0 for off, _ in table.values())
    dims = struct.unpack_from("<14q", data, table["dims"][0])
    assert dims[:4] == (5, 4, 3, 2) and dims[8] == {"bigru": 1, "cnn": 2}[reader] and dims[9] == len(WORDS)
    assert dims[10] == (64 if reader == "cnn" else 0) and dims[11:13] == (0, 1)
    assert table["packed"][1] == 4 * dims[13]
    assert table["embed"][1] == 4 * len(WORDS) * 4
    assert b'"source_checkpoint": "%s.pt"' % reader.encode() in data


def test_export_refusals_are_one_line_and_exit_2(tmp_path, capsys):
    minilm = checkpoint(tmp_path, reader="minilm", embedding_dim=384)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    for ckpt, words in ((minilm, "minilm"), (tmp_path / "missing.pt", "not found"), (junk, "not readable")):
        assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o.aghmn")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and err.startswith("aghmn-fast export:")
    assert not (tmp_path / "o.aghmn").exists()


@pytest.fixture
def model_bytes(tmp_path):
    out = tmp_path / "m.aghmn"
    assert main(["export", "--checkpoint", str(checkpoint(tmp_path)), "--out", str(out)]) == 0
    return out.read_bytes()


def test_runtime_names_what_is_wrong(runtime, model_bytes, tmp_path):
    def error(data):
        with pytest.raises(RuntimeError_) as err:
            runtime.load_buffer(data)
        return err.value.status, err.value.message

    runtime.load_buffer(model_bytes).free()
    assert error(b"PK\x03\x04" + model_bytes[4:]) == (FORMAT, "not an .aghmn model file (no AGHMNRT magic)")
    v2 = model_bytes[:8] + struct.pack("<I", 2) + model_bytes[12:]
    assert error(reseal(v2)) == (VERSION, "model file: format version 2, this runtime reads version 1")
    assert "checksum" in error(model_bytes[:-1])[1]
    assert "checksum" in error(model_bytes[:100] + bytes([model_bytes[100] ^ 4]) + model_bytes[101:])[1]
    table = sections(model_bytes)
    # Hostile values behind a valid checksum: each check names its problem.
    off, _ = table["dims"]
    huge_h = model_bytes[:off] + struct.pack("<q", 1 << 40) + model_bytes[off + 8:]
    assert "dims" in error(reseal(huge_h))[1]
    off, size = table["labels"]
    long_label = model_bytes[:off + 4] + struct.pack("<I", 0xFFFFFFF0) + model_bytes[off + 8:]
    assert error(reseal(long_label))[0] == FORMAT
    entry = 16 + 24 * list(table).index("embed")
    past_end = model_bytes[:entry + 8] + struct.pack("<Q", 1 << 62) + model_bytes[entry + 16:]
    assert "outside the file" in error(reseal(past_end))[1]
    bad_tag = model_bytes[:16] + b"weights\0" + model_bytes[24:]
    assert "unknown tag" in error(reseal(bad_tag))[1]
    with pytest.raises(RuntimeError_) as err:
        runtime.load(tmp_path / "missing.aghmn")
    assert err.value.status == IO
    assert runtime.lib.aghmn_model_load(None, None) == INVALID


def test_pack_file_aligns_and_checksums():
    data = pack_file([("dims", b"x" * 3), ("meta", b"{}")])
    table = sections(data)
    assert table == {"dims": (64, 3), "meta": (128, 2)}
    assert len(data) == 128 + 64 + 8


def test_fnv1a64_known_values():
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
