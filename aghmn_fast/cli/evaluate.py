"""``aghmn-fast eval``: a checkpoint's metrics on a split."""
from __future__ import annotations

import json

from .options import BACKEND_HELP, CHECKPOINT_HELP, DATA_HELP, DATASETS, show_encoding_progress

def add_parser(sub) -> None:
    """Register ``aghmn-fast eval`` on the CLI's subparsers."""
    p = sub.add_parser("eval", help="evaluate a checkpoint on a split")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--dataset", default="meld", choices=DATASETS,
                   help="dataset layout (default: %(default)s)")
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--split", default="test", choices=["train", "dev", "test"],
                   help="split to evaluate (default: %(default)s)")
    p.add_argument("--backend", default=None,
                   help=BACKEND_HELP)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar while a sentence reader encodes new texts")


def run(args) -> int:
    """Print the metrics of ``--checkpoint`` on ``--split``."""
    from ..training.metrics import format_report
    from ..models.checkpoint import load_checkpoint
    from ..training.trainer import check_labels, encode_dialogues, evaluate, load_dataset

    model, vocab, labels, _ = load_checkpoint(args.checkpoint, backend=args.backend)
    show_encoding_progress(model, not args.no_progress)
    *data, dataset_labels = load_dataset(args.dataset, args.data)
    check_labels(args.checkpoint, labels, dataset_labels)
    splits = dict(zip(("train", "dev", "test"), data))
    dialogues = splits[args.split]
    metrics = evaluate(model, encode_dialogues(dialogues, vocab, model.config.max_len, model),
                       dialogues, labels)
    print(json.dumps(metrics) if args.json else format_report(metrics))
    return 0


COMMANDS = {"eval": run}
