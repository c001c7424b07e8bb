"""Run the CLI (or a script) as a user does, in a subprocess, and check its failure is one
clean line on stderr with the documented exit code."""
import os
import subprocess
import sys


def run_cli(*args, stdin=None, timeout=120, env=None, cwd=None, script=None):
    """``python -m aghmn_fast.cli ARGS`` (or ``python SCRIPT ARGS``), output captured as text."""
    head = [script] if script else ["-m", "aghmn_fast.cli"]
    return subprocess.run([sys.executable, *head, *map(str, args)], input=stdin, text=True,
                          capture_output=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def assert_one_clean_line(proc, code, *fragments):
    """Exit ``code``, stderr exactly one line holding every fragment, no traceback."""
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err
