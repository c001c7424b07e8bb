"""``aghmn-fast calibrate``: fit per-class logit biases of a checkpoint (rare classes)."""
from __future__ import annotations

import os

from .options import CHECKPOINT_HELP, DATA_HELP, DATASETS, add_calibration_options


def add_parser(sub) -> None:
    """Register ``aghmn-fast calibrate`` on the CLI's subparsers."""
    p = sub.add_parser("calibrate", help="fit per-class logit biases of a checkpoint (rare "
                                         "classes) on train+dev or dev and store them in it")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--dataset", default="meld", choices=DATASETS,
                   help="dataset layout (default: %(default)s)")
    p.add_argument("--data", default=None, help=DATA_HELP)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", default=None,
                       help="where to write the calibrated checkpoint (default: NAME-calibrated.pt "
                            "beside --checkpoint NAME.pt)")
    where.add_argument("--in-place", action="store_true",
                       help="replace --checkpoint itself (its previous biases are recorded, so "
                            "calibrating again starts from the uncalibrated model)")
    add_calibration_options(p)


def calibrated_path(args) -> str:
    """Where the calibrated checkpoint goes: ``--out``, ``--checkpoint`` itself with
    ``--in-place``, else ``NAME-calibrated.pt`` beside it."""
    if args.in_place:
        return args.checkpoint
    if args.out:
        return args.out
    stem, ext = os.path.splitext(args.checkpoint)
    return f"{stem}-calibrated{ext or '.pt'}"


def run(args) -> int:
    """Fit per-class logit biases of a checkpoint on train+dev or dev and write it calibrated."""
    from ..training.calibration import check_max_drop, check_resamples, set_logit_biases
    from ..models.checkpoint import load_checkpoint, save_checkpoint
    from ..training.trainer import (calibrate_model, calibration_summary, check_labels,
                                    encode_dialogues, load_dataset)

    check_max_drop(args.max_drop)
    check_resamples(args.resamples)
    model, vocab, labels, extra = load_checkpoint(args.checkpoint)
    train_set, dev, _, dataset_labels = load_dataset(args.dataset, args.data)
    check_labels(args.checkpoint, labels, dataset_labels)
    previous = (extra.get("calibration") or {}).get("logit_bias", ())

    def encode(split):
        return encode_dialogues(split, vocab, model.config.max_len, model)

    pooled = (encode(train_set), train_set) if args.fit_on == "train+dev" else None
    record = calibrate_model(model, encode(dev), dev, args.max_drop, previous,
                             resamples=args.resamples, pooled_with=pooled)
    set_logit_biases(model, record["logit_bias"])
    out = calibrated_path(args)
    save_checkpoint(out, model, vocab, labels, {**extra, "calibration": record})
    print(calibration_summary(record) + "; logit biases "
          + ", ".join(f"{n} {v:+.2f}" for n, v in zip(labels, record["logit_bias"]))
          + f"; written to {out}")
    return 0


COMMANDS = {"calibrate": run}
