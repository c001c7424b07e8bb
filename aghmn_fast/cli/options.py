"""What the commands of ``aghmn-fast`` share: exit codes, help texts, argument types and the
calibration options. Imports nothing heavy: the parser must build without torch."""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Sequence

from ..training.calibration import DEFAULT_MAX_DROP, DEFAULT_RESAMPLES, FIT_ON

# The exit codes of every command (the module doc of aghmn_fast.cli.program explains them).
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141
DATA_HELP = ("MELD directory holding {train,dev,test}_sent_emo.csv (default: $AGHMN_DATA, else "
             "../shared/data/meld relative to the current directory if it exists)")
CHECKPOINT_HELP = "a best.pt written by `aghmn-fast train`"
BACKEND_HELP = "op backend: reference, cpu, triton, cuda (default: fastest)"
DATASETS = ("meld", "meld-json", "iemocap")


def plain_text(doc: str) -> str:
    """A module docstring as ``--help`` text: reStructuredText's double backticks and roles
    (``:func:`main```) become plain words."""
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc).replace("``", "")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a clear usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_calibration_options(parser, prefix: str = "") -> None:
    """The calibration options (``--{prefix}max-drop``, ``--{prefix}resamples``,
    ``--{prefix}fit-on``) with the defaults of :mod:`aghmn_fast.training.calibration`."""
    parser.add_argument(f"--{prefix}max-drop", type=float, default=DEFAULT_MAX_DROP,
                        help="weighted-F1 points calibration may give up (default: %(default)s)")
    parser.add_argument(f"--{prefix}resamples", type=int, default=DEFAULT_RESAMPLES,
                        help="bootstrap resamples of the calibration data whose fitted biases are "
                             "averaged; 0: one fit on all of it (default: %(default)s)")
    parser.add_argument(f"--{prefix}fit-on", default=FIT_ON[0], choices=FIT_ON,
                        help="data the biases are fitted on: the training dialogues pooled with "
                             "dev, or dev alone (default: %(default)s)")


def show_encoding_progress(model, wanted: bool = True) -> None:
    """A progress bar (on a terminal) while ``model``'s sentence reader encodes texts it has not
    cached yet: a first MiniLM run over MELD encodes for minutes."""
    if model.sentence_encoder is not None:
        model.sentence_encoder.progress = wanted and sys.stderr.isatty()


def check_out_dir(path: str, written: Sequence[str], overwrite: bool) -> None:
    """``ValueError`` naming ``--out`` when ``path`` is a file, or a folder that already holds one
    of the files a run writes (``written``) and ``overwrite`` is false: a second run must not
    silently replace an earlier model."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {path} is a file; give a folder (the run writes "
                         f"{', '.join(written)} into it)")
    found = [name for name in written if os.path.exists(os.path.join(path, name))]
    if found and not overwrite:
        raise ValueError(f"--out {path} already holds {', '.join(found)} of an earlier run: give "
                         "another folder, or --overwrite to replace them")


def add_out_dir_options(parser, default=None, written: Sequence[str] = ("best.pt", "metrics.json")) -> None:
    """``--out`` (a folder for the run's files) and ``--overwrite``."""
    if default is None:
        parser.add_argument("--out", required=True,
                            help=f"output folder ({', '.join(written)})")
    else:
        parser.add_argument("--out", default=default,
                            help=f"output folder for {', '.join(written)} (default: %(default)s); "
                                 "a folder holding them already is refused unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an earlier run in --out")
