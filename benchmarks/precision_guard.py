"""Accuracy guard of a reduced precision (issue 30): streams MELD test through the torch
StreamingRecognizer of each checkpoint at fp32 and at the reduced precision (the native runtime
gives the reduced precision's probabilities bit for bit: tests/runtime/test_exactness.py) and
checks, per checkpoint:

- labels equal to fp32's on at least 99.5% of the utterances;
- weighted F1 and macro F1 within 0.2 points of fp32's;
and reports the largest probability difference.

Every dialogue is one conversation, pushed in order (push_many rounds over all dialogues), as a
deployment sees them. Exit code 0 when every checkpoint passes, 1 otherwise; the JSON record on
stdout (and --out).

    python benchmarks/precision_guard.py --checkpoints a/best.pt b/best.pt --out r.json
"""
import argparse
import json
import os
import sys
import time
from typing import Dict, List, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aghmn_fast.data import load_meld  # noqa: E402
from aghmn_fast.training.metrics import classification_metrics  # noqa: E402
from aghmn_fast.streaming import StreamingRecognizer  # noqa: E402

MIN_LABEL_AGREEMENT = 0.995
MAX_F1_POINTS = 0.2


def stream_probabilities(rec: StreamingRecognizer, dialogues) -> np.ndarray:
    """[N, C] probabilities of every utterance of ``dialogues`` (dialogue order, then utterance
    order), each dialogue one conversation of ``rec``."""
    items = [(d.id, t) for d in dialogues for t in d.texts]
    out: Dict[str, List[List[float]]] = {}
    with torch.no_grad():
        for p in rec.push_many(items):
            out.setdefault(p.conversation_id, []).append(
                [p.probabilities[n] for n in rec.label_names])
    return np.array([row for d in dialogues for row in out[d.id]], dtype=np.float64)


def guard(checkpoint: str, dialogues, precision: str) -> dict:
    """The guard's figures for one checkpoint (see the module doc)."""
    gold = np.array([y for d in dialogues for y in d.labels])
    probs, seconds = {}, {}
    for p in ("fp32", precision):
        rec = StreamingRecognizer.from_checkpoint(checkpoint, precision=p)
        t0 = time.perf_counter()
        probs[p] = stream_probabilities(rec, dialogues)
        seconds[p] = round(time.perf_counter() - t0, 2)
        labels = rec.label_names
    ref, low = probs["fp32"], probs[precision]
    m_ref = classification_metrics(gold, ref.argmax(1), labels)
    m_low = classification_metrics(gold, low.argmax(1), labels)
    agree = float((ref.argmax(1) == low.argmax(1)).mean())
    d_w = m_low["weighted_f1"] - m_ref["weighted_f1"]
    d_m = m_low["macro_f1"] - m_ref["macro_f1"]
    cfg = rec.model.config
    return {
        # The last two path components (e.g. seed6/best.pt): no machine's paths in a record.
        "checkpoint": os.path.join(*os.path.abspath(checkpoint).split(os.sep)[-2:]),
        "model": {"reader": cfg.reader, "embedding_dim": cfg.embedding_dim,
                  "hidden_size": cfg.hidden_size, "window": cfg.window},
        "utterances": int(gold.size),
        "predicted_classes_fp32": int(np.unique(ref.argmax(1)).size),
        "label_agreement": round(agree, 6),
        "labels_differing": int((ref.argmax(1) != low.argmax(1)).sum()),
        "weighted_f1": {"fp32": round(m_ref["weighted_f1"], 3), precision: round(m_low["weighted_f1"], 3),
                        "difference_points": round(d_w, 3)},
        "macro_f1": {"fp32": round(m_ref["macro_f1"], 3), precision: round(m_low["macro_f1"], 3),
                     "difference_points": round(d_m, 3)},
        "max_abs_probability_difference": float(np.abs(ref - low).max()),
        "mean_abs_probability_difference": float(np.abs(ref - low).mean()),
        "stream_seconds": seconds,
        "ok": bool(agree >= MIN_LABEL_AGREEMENT and abs(d_w) <= MAX_F1_POINTS
                   and abs(d_m) <= MAX_F1_POINTS),
    }


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="checkpoints of aghmn-fast train")
    parser.add_argument("--precision", default="bf16", choices=("bf16",),
                        help="the reduced precision to guard (default bf16)")
    parser.add_argument("--data", default=None, help="MELD directory (default: $AGHMN_DATA)")
    parser.add_argument("--split", default="test", choices=("train", "dev", "test"))
    parser.add_argument("--every", type=int, default=1, help="every N-th dialogue (default all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default=None, help="also write the JSON record here")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be >= 1")
    torch.set_num_threads(args.threads)
    dialogues = load_meld(args.data, args.split)[::args.every]
    results = [guard(c, dialogues, args.precision) for c in args.checkpoints]
    record = {"precision": args.precision, "split": args.split, "every": args.every,
              "dialogues": len(dialogues),
              "criteria": {"min_label_agreement": MIN_LABEL_AGREEMENT,
                           "max_f1_difference_points": MAX_F1_POINTS},
              "checkpoints": results, "ok": all(r["ok"] for r in results)}
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
