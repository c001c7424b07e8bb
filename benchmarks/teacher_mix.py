#!/usr/bin/env python
"""The offline ensemble of teachers on MELD dev and test (the mean of their probabilities), with one
extra teacher (e.g. a contextual teacher from ``aghmn-fast train-teacher``) weighted w against
weight 1 for each of the others, over a grid of w; the w with the best DEV weighted F1 is
reported as chosen (test is never used to choose). Each member alone is scored too. Teachers are
read by :func:`aghmn_fast.training.trainer.teacher_log_probs` (any checkpoint that ``train --teacher``
accepts). Writes nothing but the JSON it is asked for.

    python benchmarks/teacher_mix.py --data DIR --teacher A.pt [--teacher B.pt ...]
        --extra CONTEXTUAL.pt [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import pathlib

import torch

from aghmn_fast.data import load_meld
from aghmn_fast.training.metrics import classification_metrics
from aghmn_fast.training.distillation import teacher_log_probs

GRID = (0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20)


def _scores(y, probs, labels):
    m = classification_metrics(y, probs.argmax(-1).tolist(), labels)
    return {k: round(m[k], 2) for k in ("weighted_f1", "macro_f1", "accuracy")}


def run(args) -> int:
    """Score the members, the equal-weight ensembles and the grid; print and write the JSON."""
    from aghmn_fast.data import MELD_LABELS
    labels = list(MELD_LABELS)
    splits = {s: load_meld(args.data, s) for s in ("dev", "test")}
    gold, members, extra = {}, {}, {}
    for split, dialogues in splits.items():
        gold[split] = [l for d in dialogues for l in d.labels]
        members[split] = [torch.softmax(teacher_log_probs(p, dialogues, labels).double(), -1)
                          for p in args.teacher]
        extra[split] = torch.softmax(teacher_log_probs(args.extra, dialogues, labels).double(), -1)
    n = len(args.teacher)
    out = {"extra alone": {s: _scores(gold[s], extra[s], labels) for s in splits},
           f"{n} teachers (equal)": {s: _scores(gold[s], sum(members[s]) / n, labels) for s in splits}}
    for i, path in enumerate(args.teacher):
        out[f"teacher {i + 1} ({pathlib.Path(path).parent.name})"] = {
            s: _scores(gold[s], members[s][i], labels) for s in splits}
    for w in GRID:
        out[f"{n} teachers + extra x{w:g}"] = {
            s: _scores(gold[s], (sum(members[s]) + w * extra[s]) / (n + w), labels) for s in splits}
    out["chosen on dev: extra weight"] = max(
        GRID, key=lambda w: out[f"{n} teachers + extra x{w:g}"]["dev"]["weighted_f1"])
    for name, value in out.items():
        print(name, value)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def main(argv=None) -> int:
    """Parse the arguments and run; errors are one line on stderr (exit 2 for bad input)."""
    from aghmn_fast.cli.options import DATA_HELP
    from aghmn_fast.cli.program import run_program
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--teacher", required=True, action="append", help="a teacher (repeat)")
    parser.add_argument("--extra", required=True, help="the teacher weighted over the grid")
    parser.add_argument("--json", default=None, help="write the scores here")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    return run_program("teacher_mix.py", lambda: run(args), args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
