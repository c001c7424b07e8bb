"""Ctrl-C at any moment of a command, as a user's terminal sends it (SIGINT to a real process
started the way the console script starts it): one line on stderr and exit 130, whether it lands
while torch imports, while the command runs, or while the interpreter shuts down."""
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cli_helpers import tiny_checkpoint, tiny_json_dataset

# What the generated `aghmn-fast` console script runs.
CONSOLE_SCRIPT = "import sys; from aghmn_fast.cli import main; sys.exit(main())"
# After Python and the CLI module's standard-library imports have loaded: torch's import takes
# about 1.5 s on an idle 2-core machine, so the first two land in it (or the command's other
# imports), the last mostly in the command itself.
DELAYS_AFTER_LOAD = (0.1, 0.7, 2.0)
pytestmark = pytest.mark.slow  # a dozen processes that each import torch: about 30 s on 2 cores


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """Commands that run until interrupted: stream (stdin left open) and a long train."""
    root = tmp_path_factory.mktemp("signals")
    checkpoint = tiny_checkpoint(root / "tiny.pt")
    data = tiny_json_dataset(root / "data")
    return {
        "stream": ["stream", "--checkpoint", checkpoint],
        "train": ["train", "--dataset", "meld-json", "--data", data, "--embeddings", "random",
                  "--embedding-dim", "8", "--hidden", "6", "--epochs", "100000", "--out",
                  root / "run", "--no-progress"],
    }


def _interrupt(args, delay, end_input_first=False):
    """Start the command, SIGINT it ``delay`` s later (after its input ended, if asked);
    returns (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-c", CONSOLE_SCRIPT, *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if end_input_first:
            proc.stdin.write(b"a\tcalm and fine\n")
            proc.stdin.flush()
            assert b"latency_ms" in proc.stdout.readline()
            proc.stdin.close()
            proc.stdin = None  # communicate() must not touch it again
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(input=None if end_input_first else b"", timeout=120)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, err.decode()


def _check(code, err, where):
    lines = err.strip().splitlines()
    if code == -signal.SIGINT and not lines:
        # The signal came before Python set up its handler, or after its teardown restored the
        # default action (nothing of ours runs then): a silent death by SIGINT (130 in a shell).
        return
    assert "Traceback" not in err and "Exception ignored" not in err, (where, err)
    assert code == 130, (where, code, err)
    assert len(lines) == 1 and lines[0].endswith(": interrupted"), (where, err)
    assert lines[0].startswith("aghmn-fast"), (where, err)


def _python_start_seconds():
    """Wall time, as now (the machine may be loaded), to start Python and import what
    aghmn_fast.cli imports from the standard library: a SIGINT before that lands in Python's
    start-up, before any code of the package can run. (Not aghmn_fast.cli itself: that it
    loads in milliseconds, without torch, is part of what is tested.)"""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import argparse, json, re, signal, threading, typing"],
                   check=True, timeout=120)
    return time.perf_counter() - started


def test_ctrl_c_at_any_moment_is_one_line_and_130(commands):
    loaded = max(0.5, 3 * _python_start_seconds())  # margin: the load may change meanwhile
    cases = [(name, loaded + delay) for name in commands for delay in DELAYS_AFTER_LOAD]
    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: the delays stay meaningful
        results = list(pool.map(lambda case: _interrupt(commands[case[0]], case[1]), cases))
    for case, (code, err) in zip(cases, results):
        _check(code, err, case)
    assert sum(code == 130 for code, _ in results) >= len(cases) - 1, results


def test_ctrl_c_as_streams_input_ends_is_never_exit_0(commands):
    """SIGINT right after stdin closed lands while the command returns or the interpreter shuts
    down (threads joined, torch's atexit hooks): never `Exception ignored ...` and exit 0."""
    delays = (0.0, 0.01, 0.03)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda d: _interrupt(commands["stream"], d, end_input_first=True),
                                delays))
    for delay, (code, err) in zip(delays, results):
        _check(code, err, delay)


# A Ctrl-C that lands inside a weakref callback (as one did in importlib's module-lock cleanup
# while torch imported): Python swallows the KeyboardInterrupt and would print "Exception ignored
# in: ..." and let the command run on. The callback runs its loop with the signal pending, so the
# handler raises there on every run.
LOST_IN_CALLBACK = """
import os, signal, sys, time, weakref
from aghmn_fast.cli.program import run_program

class Thing:
    pass

def body():
    thing = Thing()
    def callback(_):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100_000):
            pass
    ref = weakref.ref(thing, callback)
    del thing
    for _ in range(1_000):
        time.sleep(0.01)
    print("ran to its end", flush=True)
    return 0

sys.exit(run_program("probe", body))
"""


def test_ctrl_c_swallowed_in_a_callback_still_stops_the_command():
    proc = subprocess.run([sys.executable, "-c", LOST_IN_CALLBACK], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout == "", proc.stdout  # stopped at the interrupt, not after its 10 s of work
    assert (proc.returncode, proc.stderr) == (130, "probe: interrupted\n")
