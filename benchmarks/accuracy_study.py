#!/usr/bin/env python
"""Scores a group of checkpoints (e.g. five seeds of one setting) on MELD test, as issue 21 reports
them: each model (accuracy, weighted and macro F1, per-class F1, best epoch), mean and sample
std over the group, the same after post-hoc calibration (per-class logit biases fitted on
``--fit-on``, train+dev by default, ``aghmn_fast.training.calibration``, as ``aghmn-fast calibrate`` does),
and the group's ensemble (the mean of the members' probabilities), uncalibrated and calibrated
(biases fitted on the ensemble's scores). ``test_fitted``: biases fitted on test itself, an upper
bound of what any per-class bias can do for that model (evidence for the ceiling, not a result).
Writes nothing but the JSON it is asked for.

    python benchmarks/accuracy_study.py --data DIR --checkpoint A.pt --checkpoint B.pt ...
        [--max-drop 0.5] [--resamples 30] [--fit-on train+dev|dev] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics

import torch

from aghmn_fast.cli.options import add_calibration_options
from aghmn_fast.training.calibration import fit_logit_biases
from aghmn_fast.data import load_meld
from aghmn_fast.training.metrics import classification_metrics
from aghmn_fast.models.checkpoint import load_checkpoint
from aghmn_fast.training.trainer import encode_dialogues, predict

SUMMARY = ("accuracy", "weighted_f1", "macro_f1")


def _scores(gold, scores, labels) -> dict:
    m = classification_metrics(gold, scores.argmax(-1).tolist(), labels)
    return {**{k: round(m[k], 2) for k in SUMMARY},
            "per_class_f1": {n: round(m["per_class"][n]["f1"], 2) for n in labels}}


def _calibrated(fit_scores, fit_gold, test_scores, test_gold, labels, max_drop, resamples) -> dict:
    """Biases fitted on (fit_scores, fit_gold), scored on test; ``fit_before``/``fit_after``: the
    scores on the fitted data."""
    fit = fit_logit_biases(fit_scores, torch.tensor(fit_gold), len(labels), max_drop,
                           resamples=resamples)
    shifted = test_scores + torch.tensor(fit["logit_bias"], dtype=test_scores.dtype)
    return {**_scores(test_gold, shifted, labels), "logit_bias": fit["logit_bias"],
            "fit_before": fit["before"], "fit_after": fit["after"]}


def _mean_std(rows, key):
    values = [r[key] for r in rows]
    return {"mean": round(statistics.fmean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="MELD directory (default: $AGHMN_DATA)")
    parser.add_argument("--checkpoint", action="append", required=True, help="repeat per model")
    add_calibration_options(parser)  # the same options and defaults as `aghmn-fast calibrate`
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # dev first, as `aghmn-fast calibrate` pools them: the same bootstrap draws, the same biases
    fitted = ("dev", "train") if args.fit_on == "train+dev" else ("dev",)
    splits = {s: load_meld(args.data, s) for s in (*fitted, "test")}
    gold = {s: [l for d in ds for l in d.labels] for s, ds in splits.items()}
    gold["fit"] = [y for s in fitted for y in gold[s]]
    models, probs, labels = [], {"fit": [], "test": []}, None
    for path in args.checkpoint:
        model, vocab, labels, extra = load_checkpoint(path)
        logp = {s: predict(model, encode_dialogues(ds, vocab, model.config.max_len, model)).double()
                for s, ds in splits.items()}
        logp["fit"] = torch.cat([logp[s] for s in fitted])
        if (extra.get("calibration") or {}).get("logit_bias"):
            raise SystemExit(f"{path} is already calibrated: give the uncalibrated checkpoint")
        row = {"checkpoint": path, "best_epoch": extra.get("epoch"),
               **_scores(gold["test"], logp["test"], labels),
               "calibrated": _calibrated(logp["fit"], gold["fit"], logp["test"], gold["test"],
                                         labels, args.max_drop, args.resamples),
               "test_fitted": _calibrated(logp["test"], gold["test"], logp["test"], gold["test"],
                                          labels, args.max_drop, args.resamples)}
        models.append(row)
        for s in probs:
            probs[s].append(logp[s].exp())
        print(f"{path}: {row['accuracy']:.2f} / {row['weighted_f1']:.2f} / {row['macro_f1']:.2f}; "
              f"calibrated {row['calibrated']['weighted_f1']:.2f} / {row['calibrated']['macro_f1']:.2f}",
              flush=True)
    ensemble = {s: torch.stack(p).mean(0).log() for s, p in probs.items()}
    out = {
        "models": models,
        "mean_std": {k: _mean_std(models, k) for k in SUMMARY},
        "calibrated_mean_std": {k: _mean_std([m["calibrated"] for m in models], k) for k in SUMMARY},
        "test_fitted_mean_std": {k: _mean_std([m["test_fitted"] for m in models], k) for k in SUMMARY},
        "per_class_f1_mean": {n: round(statistics.fmean(m["per_class_f1"][n] for m in models), 2)
                              for n in labels},
        "ensemble": {**_scores(gold["test"], ensemble["test"], labels),
                     "calibrated": _calibrated(ensemble["fit"], gold["fit"], ensemble["test"],
                                               gold["test"], labels, args.max_drop, args.resamples),
                     "test_fitted": _calibrated(ensemble["test"], gold["test"], ensemble["test"],
                                                gold["test"], labels, args.max_drop, args.resamples)},
        "max_drop": args.max_drop, "resamples": args.resamples, "fit_on": args.fit_on,
    }
    for name in ("mean_std", "calibrated_mean_std", "test_fitted_mean_std"):
        print(name, " / ".join(f"{v['mean']:.2f} ± {v['std']:.2f}" for v in out[name].values()))
    e = out["ensemble"]
    print(f"ensemble {e['accuracy']:.2f} / {e['weighted_f1']:.2f} / {e['macro_f1']:.2f}; calibrated "
          f"{e['calibrated']['accuracy']:.2f} / {e['calibrated']['weighted_f1']:.2f} / "
          f"{e['calibrated']['macro_f1']:.2f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
