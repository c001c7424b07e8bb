#!/usr/bin/env python
"""Cost per push of an ensemble (``EnsembleRecognizer``) against one model, one torch thread.

Members: random-weight models of the trained default's size (wordllama 256-d input, H = 100,
BiF-AGRU; latency does not need training), or the given checkpoints. One conversation (a MELD
test dialogue of 18 utterances at K = 10, 60 at K = 40) is streamed ``--repeats`` times after a
warm-up pass; reported per ensemble size: median and p99 wall ms per push, the same over pushes
with a full window, and the process's CPU ms per push (on a shared machine the better estimate
of the cost).

    python benchmarks/ensemble_cost.py --data DIR [--checkpoint A.pt --checkpoint B.pt ...]
        [--sizes 1 2 3 5] [--repeats 5] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from aghmn_fast.bench.stream import _dialogue_of_length, _percentiles, build_model
from aghmn_fast.data import MELD_LABELS, load_meld
from aghmn_fast.streaming import EnsembleRecognizer, StreamingRecognizer
from aghmn_fast.training.trainer import build_vocabulary


def time_conversation(rec, texts, repeats: int) -> dict:
    """Per-push wall and CPU time of one conversation streamed ``repeats`` times (after a warm-up
    pass), fresh conversation id each time."""
    wall, full, cpu = [], [], 0.0
    for r in range(repeats + 1):
        for i, text in enumerate(texts):
            c0, t0 = time.process_time(), time.perf_counter()
            rec.push(r, text)
            if r:
                wall.append((time.perf_counter() - t0) * 1e3)
                cpu += time.process_time() - c0
                if i >= rec.window:
                    full.append(wall[-1])
        rec.close(r)
    return {**_percentiles(wall), "full_window": _percentiles(full) if full else None,
            "cpu_ms_mean": 1e3 * cpu / len(wall), "mode": rec.mode}


def _ensemble(members):
    return members[0] if len(members) == 1 else EnsembleRecognizer(members)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="MELD directory (default: $AGHMN_DATA)")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="a trained member (repeat); default: random models at K = 10 and 40")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    test = load_meld(args.data, "test")
    rows = []
    if args.checkpoint:
        members = [StreamingRecognizer.from_checkpoint(p) for p in args.checkpoint]
        cases = [("checkpoints", members[0].window, members)]
    else:
        vocab = build_vocabulary([test])
        cases = [("random", k, [StreamingRecognizer(build_model(k, vocab, None, seed=s, embedding_dim=256),
                                                    vocab=vocab, label_names=MELD_LABELS)
                                for s in range(max(args.sizes))]) for k in (10, 40)]
    for kind, window, members in cases:
        texts = _dialogue_of_length(test, 18 if window == 10 else 60)
        for n in args.sizes:
            if n > len(members):
                continue
            result = time_conversation(_ensemble(members[:n]), texts, args.repeats)
            rows.append({"members": kind, "window": window, "size": n, **result})
            full = result["full_window"] or result
            print(f"{kind} K={window} x{n} ({result['mode']}): median {result['median_ms']:.3f} ms, "
                  f"full windows {full['median_ms']:.3f} / p99 {full['p99_ms']:.3f} ms, CPU "
                  f"{result['cpu_ms_mean']:.3f} ms per push", flush=True)
    out = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": 1, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
