#!/usr/bin/env python
"""The native runtime (aghmn_runtime, an exported .aghmn file) against the torch
StreamingRecognizer of the same checkpoint: both engines get the same calls (conversations
interleaved at random through push and push_many, a conversation repeated within one push_many,
finished conversations closed, a save/restore into a new recognizer in the middle), and every
probability is compared: bitwise, else the largest difference, and the labels.

    python benchmarks/runtime_exactness.py --checkpoint best.pt [--data DIR] [--split test]
        [--every 1] [--seed 0]
    python benchmarks/runtime_exactness.py --synthetic 200 [--reader bigru|cnn] [--window 10]

``--every 3`` streams every third dialogue (the CI setting). ``--synthetic N`` needs no MELD
and no checkpoint: a random-initialised tiny model and N random dialogues. Prints one JSON
object; exits 0 when every label agrees and every probability is within ``--tolerance``
(1e-6), else 1. The module is built in place from this checkout (runtime/) first.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from runtime_common import export, import_runtime, synthetic_dialogues, tiny_checkpoint  # noqa: E402

from aghmn_fast.streaming import StreamingRecognizer  # noqa: E402


def schedule(dialogues: Dict[str, List[str]], seed: int) -> List[Tuple[str, List[Tuple[str, str]]]]:
    """The calls both engines get, in order: ("push", [item]), ("push_many", items),
    ("close", [(id, "")]) and one ("save_restore", []) when half the utterances are in. A
    push_many may hold up to three consecutive utterances of one conversation."""
    rng = random.Random(seed)
    pending = {cid: list(texts) for cid, texts in dialogues.items()}
    total = sum(map(len, pending.values()))
    calls, sent, restored = [], 0, False
    open_ids = list(pending)
    while open_ids:
        chosen = [cid for cid in open_ids if rng.random() < 0.3] or [rng.choice(open_ids)]
        if rng.random() < 0.25:   # one by one through push
            items = [(cid, pending[cid].pop(0)) for cid in chosen]
            calls.extend(("push", [item]) for item in items)
        else:
            items = []
            for cid in chosen:
                for _ in range(min(len(pending[cid]), rng.choice((1, 1, 1, 2, 3)))):
                    items.append((cid, pending[cid].pop(0)))
            rng.shuffle(items)   # a conversation's own utterances keep their order below
            order: Dict[str, List[str]] = {}
            for cid, text in items:
                order.setdefault(cid, []).append(text)
            items = [(cid, order[cid].pop(0)) for cid, _ in items]
            calls.append(("push_many", items))
        sent += len(items)
        for cid in [c for c in chosen if not pending[c]]:
            open_ids.remove(cid)
            if rng.random() < 0.5:
                calls.append(("close", [(cid, "")]))
        if not restored and sent >= total // 2:
            calls.append(("save_restore", []))
            restored = True
    return calls


def run_torch(checkpoint: str, calls, state_path: str,
              precision: str = "fp32") -> Dict[str, List[np.ndarray]]:
    """Probabilities per conversation from the torch StreamingRecognizer (its default path)."""
    rec = StreamingRecognizer.from_checkpoint(checkpoint, precision=precision)
    got: Dict[str, List[np.ndarray]] = {}
    with torch.no_grad():
        for kind, items in calls:
            if kind == "close":
                rec.close(items[0][0])
            elif kind == "save_restore":
                rec.save_state(state_path)
                rec = StreamingRecognizer.from_checkpoint(checkpoint, precision=precision)
                rec.load_state(state_path)
            else:
                preds = [rec.push(*items[0])] if kind == "push" else rec.push_many(items)
                for p in preds:
                    got.setdefault(p.conversation_id, []).append(
                        np.array([p.probabilities[n] for n in rec.label_names], dtype=np.float32))
    return got, rec.mode


def run_runtime(runtime, model_path: str, calls, state_path: str) -> Dict[str, List[np.ndarray]]:
    """The same calls on aghmn_runtime.StreamingRecognizer; push_many through push_many_arrays
    and push_many alternately, so both are compared."""
    rec = runtime.StreamingRecognizer(model_path)
    got: Dict[str, List[np.ndarray]] = {}
    arrays = False
    for kind, items in calls:
        if kind == "close":
            rec.close(items[0][0])
        elif kind == "save_restore":
            before = {c: rec.utterances_seen(c) for c in rec.conversations()}
            rec.save_state(state_path)
            rec.release()
            rec = runtime.StreamingRecognizer(model_path)
            rec.load_state(state_path)
            after = {c: rec.utterances_seen(c) for c in rec.conversations()}
            if after != before:
                raise AssertionError("the restored runtime state lost or changed conversations")
        elif kind == "push":
            p = rec.push(*items[0])
            got.setdefault(p.conversation_id, []).append(
                np.array([p.probabilities[n] for n in rec.labels], dtype=np.float32))
        else:
            arrays = not arrays
            if arrays:
                probs, _ = rec.push_many_arrays([c for c, _ in items], [t for _, t in items])
                for (cid, _), row in zip(items, probs):
                    got.setdefault(cid, []).append(row)
            else:
                for p in rec.push_many(items):
                    got.setdefault(p.conversation_id, []).append(
                        np.array([p.probabilities[n] for n in rec.labels], dtype=np.float32))
    return got


def compare(dialogues: Dict[str, List[str]], checkpoint: str, model_path: str, seed: int,
            runtime, precision: str = "fp32") -> dict:
    """Streams ``dialogues`` through both engines and compares their probabilities (the torch
    recognizer at ``precision``, the model file exported at it)."""
    calls = schedule(dialogues, seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ref, torch_path = run_torch(checkpoint, calls, os.path.join(tmp, "torch.state"), precision)
        t1 = time.perf_counter()
        got = run_runtime(runtime, model_path, calls, os.path.join(tmp, "runtime.state"))
        t2 = time.perf_counter()
    ids = list(dialogues)
    a = np.stack([p for cid in ids for p in ref[cid]])
    b = np.stack([p for cid in ids for p in got[cid]])
    return {
        "dialogues": len(ids), "utterances": int(a.shape[0]),
        "calls": {k: sum(1 for c, _ in calls if c == k)
                  for k in ("push", "push_many", "close", "save_restore")},
        "torch_path": torch_path,
        "bitwise_equal_utterances": int((a == b).all(axis=1).sum()),
        "max_abs_probability_difference": float(np.abs(a - b).max()),
        "labels_equal": int((a.argmax(1) == b.argmax(1)).sum()),
        "torch_seconds": round(t1 - t0, 3), "runtime_seconds": round(t2 - t1, 3),
    }


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint of aghmn-fast train (MELD dialogues)")
    source.add_argument("--synthetic", type=int, metavar="N",
                        help="N random dialogues through a random-initialised tiny model")
    parser.add_argument("--model", default=None,
                        help="the exported .aghmn of --checkpoint (default: export it now)")
    parser.add_argument("--data", default=None, help="MELD directory (default: $AGHMN_DATA)")
    parser.add_argument("--split", default="test", choices=("train", "dev", "test"))
    parser.add_argument("--every", type=int, default=1, help="stream every N-th dialogue")
    parser.add_argument("--reader", default="bigru", choices=("bigru", "cnn"),
                        help="--synthetic: the tiny model's word reader")
    parser.add_argument("--window", type=int, default=10, help="--synthetic: K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="both engines at this precision (the export too)")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be >= 1")
    torch.set_num_threads(1)
    runtime = import_runtime()
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic is not None:
            checkpoint = tiny_checkpoint(os.path.join(tmp, "tiny.pt"), reader=args.reader,
                                         window=args.window, seed=args.seed)
            dialogues = synthetic_dialogues(args.synthetic, seed=args.seed)
        else:
            from aghmn_fast.data import load_meld
            checkpoint = args.checkpoint
            dialogues = {d.id: list(d.texts)
                         for d in load_meld(args.data, args.split)[::args.every]}
        model_path = args.model
        if model_path is None:
            model_path = os.path.join(tmp, "model.aghmn")
            export(checkpoint, model_path, precision=args.precision)
        result = {"checkpoint": args.checkpoint or f"synthetic tiny {args.reader} K={args.window}",
                  "split": None if args.synthetic else args.split, "every": args.every,
                  "precision": args.precision,
                  **compare(dialogues, checkpoint, model_path, args.seed, runtime,
                            args.precision)}
    result["ok"] = (result["labels_equal"] == result["utterances"]
                    and result["max_abs_probability_difference"] <= args.tolerance)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
