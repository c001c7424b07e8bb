#!/usr/bin/env python
"""Streams every dialogue of a MELD split through a trained checkpoint and compares with the
offline model (the whole dialogue at once): largest probability difference, label agreement,
and the metrics both give. Conversations are interleaved at random (``push_many`` rounds).
Several ``--checkpoint``s: their ensemble (``EnsembleRecognizer``) against the offline ensemble
(the mean of the members' offline probabilities).

    python benchmarks/stream_exactness.py --checkpoint runs/demo/best.pt [--checkpoint B.pt ...]
        [--data DIR] [--split test] [--mode push|step|ops] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import random
import time

from aghmn_fast.cli.options import DATA_HELP, show_encoding_progress
from aghmn_fast.cli.program import debug_requested, run_program


def main(argv=None) -> int:
    """Parse the arguments and run; errors are one line on stderr (exit 2 for bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, action="append",
                        help="a best.pt written by `aghmn-fast train`; repeat for an ensemble")
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--split", default="test", choices=("train", "dev", "test"))
    parser.add_argument("--mode", "--path", dest="mode", default=None,
                        choices=("push", "step", "ops"),
                        help="the streaming mode (default: the recognizer's; --path: its old name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    return run_program("stream_exactness.py", lambda: _run(args), debug_requested(args.debug),
                       own_signals=argv is None)



def _run(args) -> int:
    # Imported here, under run_program: Ctrl-C during torch's import is one line too.
    import torch

    from aghmn_fast.data import load_meld
    from aghmn_fast.training.metrics import classification_metrics
    from aghmn_fast.streaming import EnsembleRecognizer, StreamingRecognizer
    from aghmn_fast.training.trainer import encode_dialogues, predict

    torch.set_num_threads(args.threads)
    dialogues = load_meld(args.data, args.split)  # first: a missing MELD fails in a second
    members = [StreamingRecognizer.from_checkpoint(path) for path in args.checkpoint]
    for m in members:
        show_encoding_progress(m.model)  # a sentence reader encodes the whole split first
    if args.mode is not None:
        members = [StreamingRecognizer(m.model, vocab=m.vocab, label_names=m.label_names,
                                       mode=args.mode) for m in members]
    rec = members[0] if len(members) == 1 else EnsembleRecognizer(members)
    with torch.no_grad():
        offline = torch.stack([torch.softmax(predict(m.model, encode_dialogues(
            dialogues, m.vocab, m.model.config.max_len, m.model)), -1) for m in members]).mean(0)
    rng = random.Random(args.seed)
    pending = {d.id: list(d.texts) for d in dialogues}
    got = {d.id: [] for d in dialogues}
    t0 = time.perf_counter()
    while any(pending.values()):
        batch = [cid for cid, texts in pending.items() if texts and rng.random() < 0.3]
        for p in rec.push_many([(cid, pending[cid].pop(0)) for cid in batch]):
            got[p.conversation_id].append(p)
    seconds = time.perf_counter() - t0
    flat = [p for d in dialogues for p in got[d.id]]
    streamed = torch.tensor([[p.probabilities[name] for name in rec.label_names] for p in flat],
                            dtype=offline.dtype)
    gold = [label for d in dialogues for label in d.labels]
    result = {
        "checkpoint": args.checkpoint[0] if len(members) == 1 else args.checkpoint, "split": args.split,
        "mode": rec.mode,
        "dialogues": len(dialogues), "utterances": len(flat),
        "max_abs_probability_difference": float((streamed - offline).abs().max()),
        "labels_equal": int((streamed.argmax(-1) == offline.argmax(-1)).sum()),
        "streamed": classification_metrics(gold, streamed.argmax(-1).tolist(), rec.label_names),
        "offline": classification_metrics(gold, offline.argmax(-1).tolist(), rec.label_names),
        "stream_seconds": seconds,
    }
    for key in ("streamed", "offline"):
        result[key] = {k: v for k, v in result[key].items() if not isinstance(v, (dict, list))}
    print(json.dumps(result, indent=2))
    return 0 if result["labels_equal"] == len(flat) else 1


if __name__ == "__main__":
    raise SystemExit(main())
