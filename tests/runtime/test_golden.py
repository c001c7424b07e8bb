"""The committed golden model files (csrc/runtime/tests/golden/, written by make_golden.py): the C
API, the Python module and the torch side (the file's tensors in an AGHMN model, run by the
torch StreamingRecognizer) all give the committed probabilities for the fixed dialogue, and
the exporter still writes the committed bytes. A change of the format, the loader, the packing
or the tokenizer that breaks files already written fails here."""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from runtime_common import import_runtime  # noqa: E402

from aghmn_fast.export import load_model_file, model_sections, pack_file, read_model_file  # noqa: E402
from aghmn_fast.streaming import StreamingRecognizer  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "runtime", "tests", "golden")
READERS = ("bigru", "cnn")
TOLERANCE = 1e-5   # fp32 rounding of another machine's kernels; a broken file is far off


def dialogue():
    with open(os.path.join(GOLDEN, "dialogue.tsv"), encoding="utf-8") as f:
        return [tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip()]


def expected(reader):
    with open(os.path.join(GOLDEN, f"{reader}.expected"), encoding="utf-8") as f:
        labels = f.readline().rstrip("\n").split("\t")
        return labels, np.array([[float(v) for v in line.split("\t")] for line in f], dtype=np.float64)


def model_path(reader):
    return os.path.join(GOLDEN, f"{reader}.aghmn")


def check(labels, got, reader):
    want_labels, want = expected(reader)
    assert labels == want_labels
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_golden_files_are_tiny():
    for reader in READERS:
        assert os.path.getsize(model_path(reader)) < 16 * 1024


@pytest.mark.parametrize("reader", READERS)
def test_golden_c_api(runtime, reader):
    model = runtime.load(model_path(reader))
    s = model.session()
    one_by_one = [s.push(cid, text)[0] for cid, text in dialogue()]
    many, _ = model.session().push_many(dialogue())
    check(model.labels, one_by_one, reader)
    check(model.labels, many, reader)
    model.free()


@pytest.mark.parametrize("reader", READERS)
def test_golden_python_module(reader):
    rt = import_runtime()
    rec = rt.StreamingRecognizer(model_path(reader))
    ids, texts = zip(*dialogue())
    probs, indices = rec.push_many_arrays(list(ids), list(texts))
    check(list(rec.labels), probs, reader)


@pytest.mark.parametrize("reader", READERS)
def test_golden_torch_side(reader):
    model, vocab, labels = load_model_file(model_path(reader))
    rec = StreamingRecognizer(model, torch.device("cpu"), vocab=vocab, label_names=labels)
    with torch.no_grad():
        preds = [rec.push(cid, text) for cid, text in dialogue()]
    got = [[p.probabilities[n] for n in labels] for p in preds]
    check(labels, got, reader)


@pytest.mark.parametrize("reader", READERS)
def test_exporter_writes_the_committed_bytes(reader):
    with open(model_path(reader), "rb") as f:
        committed = f.read()
    kv, tensors, tags = read_model_file(committed)
    assert tags == ["kv", "tensors", "data"]
    config = {k.split(".", 1)[1]: v for k, v in kv.items() if k.startswith("aghmn.")}
    sections = model_sections(tensors, config, kv["tokenizer.tokens"], kv["aghmn.labels"],
                              kv["general.producer"], kv["general.source_digest"])
    assert pack_file(sections) == committed
