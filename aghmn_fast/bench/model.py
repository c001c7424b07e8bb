"""Seconds per MELD training step and epoch: the reference path against the default fused path.

Both run :func:`aghmn_fast.training.trainer.train` itself (the authors' recipe: one dialogue per Adam step,
gradient clipping, class-weighted loss) for the timed epochs on real MELD training dialogues, with
a BiF-AGRU model of the paper's size (random 50-d word vectors: the vectors do not change the
time). The time of an epoch is the one ``train`` reports (its training loop, without the dev
evaluation); a step is an epoch's time over its dialogues. ``dialogues=None`` times whole epochs
of the training split; a subset is timed and scaled up to the split by utterance count, and
labelled as extrapolated.
"""
from __future__ import annotations

import random
import statistics
from typing import Callable, Dict, Optional, Sequence

import torch

from .. import ops
from ..data import MELD_LABELS, load_meld
from ..training.trainer import TrainConfig, build_vocabulary, train
from .stream import build_model
from .timing import num_threads

__all__ = ["run_model"]


def _subset(dialogues: Sequence, count: Optional[int], seed: int = 0) -> list:
    """``count`` dialogues: first a few that together hold every label (the recipe's class
    weights need every class present), then a seeded random sample of the rest."""
    if count is None or count >= len(dialogues):
        return list(dialogues)
    if count < 1:
        raise ValueError(f"dialogues must be >= 1, got {count}")
    order = list(dialogues)
    random.Random(seed).shuffle(order)
    missing = {label for d in order for label in d.labels}
    chosen = []
    while missing and len(chosen) < count:
        best = max(order, key=lambda d: len(missing & set(d.labels)))
        chosen.append(best)
        order.remove(best)
        missing -= set(best.labels)
    if missing:
        raise ValueError(f"{count} dialogues cannot hold every label; time more dialogues")
    return chosen + order[:count - len(chosen)]


def _time_path(backend: Optional[str], vocab, train_set, held_out, epochs: int) -> Dict:
    model = build_model(10, vocab, backend)
    model.train()
    config = TrainConfig(epochs=epochs, progress=False)
    result = train(model, train_set, held_out, held_out, vocab, MELD_LABELS, config,
                   log=lambda *_: None)
    seconds = [h["seconds"] for h in result["history"]]
    return {"epoch_seconds": seconds, "seconds": statistics.median(seconds)}


def run_model(data: Optional[str] = None, dialogues: Optional[int] = None, epochs: int = 1,
              threads: Sequence[int] = (1,), device: str = "cpu",
              log: Callable[[str], None] = print) -> Dict:
    """Time training epochs on MELD train for the reference and the default backend.

    Args:
        data: the MELD directory (None: the default location).
        dialogues: how many training dialogues to time (None: all of them).
        epochs: timed epochs per path and thread count (the median is reported).
        threads: torch thread counts to run at.
        device: only "cpu": the training loop keeps its batches on the CPU.

    Returns a JSON-ready dict with one row per (mode, threads): seconds per step and per
    (possibly extrapolated) epoch.
    """
    if torch.device(device).type != "cpu":
        return {"skipped": "the training loop (aghmn_fast.training.trainer.train) runs on the CPU only"}
    full = load_meld(data, "train")
    chosen = _subset(full, dialogues)
    held_out = chosen[:1]  # train() evaluates after every epoch; that time is not counted
    vocab = build_vocabulary([full])
    total_utts = sum(len(d) for d in full)
    chosen_utts = sum(len(d) for d in chosen)
    scale = total_utts / chosen_utts
    default = ops.resolve_backend(None, torch.device(device)).name
    out = {"dataset": "MELD train", "dialogues_timed": len(chosen), "dialogues_total": len(full),
           "utterances_timed": chosen_utts, "utterances_total": total_utts,
           "extrapolated": len(chosen) < len(full), "epochs": epochs, "default_backend": default,
           "model": "BiF-AGRU, H = 100, K = 10, 50-d word vectors, one dialogue per step",
           "rows": []}
    for n in threads:
        with num_threads(n):
            for label, backend in (("reference", "reference"), (f"fused ({default})", None)):
                timed = _time_path(backend, vocab, chosen, held_out, epochs)
                row = {"mode": label, "backend": backend or default, "threads": n,
                       "step_ms": 1e3 * timed["seconds"] / len(chosen),
                       "epoch_s": timed["seconds"] * scale,
                       "timed_epoch_s": timed["epoch_seconds"]}
                out["rows"].append(row)
                log(f"model t={n} {label:16s} {row['step_ms']:8.2f} ms/step  "
                    f"{row['epoch_s']:8.1f} s/epoch"
                    + (f" (extrapolated from {len(chosen)} dialogues)" if out["extrapolated"] else ""))
    for n in threads:
        ref, fused = (next(r for r in out["rows"] if r["threads"] == n and r["mode"] == p)
                      for p in ("reference", f"fused ({default})"))
        fused["speedup"] = ref["step_ms"] / fused["step_ms"]
    return out
