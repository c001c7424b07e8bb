"""``aghmn-fast train-teacher``: fine-tune a contextual MiniLM teacher (for ``train --teacher``).

The parser reads the torch-free :mod:`aghmn_fast.training.contextual_config`; the training module
(:mod:`aghmn_fast.training.contextual_teacher`) is imported only when the command runs.
"""
from __future__ import annotations

import os
import sys

from ..training.contextual_config import ContextualConfig, check_config
from .options import DATA_HELP, add_out_dir_options, check_out_dir, positive_int

TEACHER_FILES = ("best.pt", "last.pt", "metrics.json")


def add_parser(sub) -> None:
    """Register ``aghmn-fast train-teacher`` on the CLI's subparsers."""
    d = ContextualConfig()
    p = sub.add_parser("train-teacher", help="fine-tune a contextual MiniLM teacher (for train "
                       "--teacher only; needs the readers extra)")
    p.add_argument("--data", default=None, help=DATA_HELP)
    add_out_dir_options(p, written=TEACHER_FILES)
    p.add_argument("--context", type=int, default=d.context,
                   help=f"previous utterances read with each one (default {d.context})")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens,
                   help=f"tokens per sequence; the oldest context is cut first (default {d.max_tokens})")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW lr (default {d.lr:g})")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help=f"utterances per step (default {d.batch_size})")
    p.add_argument("--seed", type=int, default=d.seed,
                   help=f"seed of the classifier's initialisation and the batch order (default {d.seed})")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="continue from this contextual teacher (a further stage of fine-tuning, "
                        "with its own warm-up and decay) instead of the pre-trained MiniLM")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    """``aghmn-fast train-teacher``: fine-tune, print the selected epoch's dev and test scores."""
    from ..training.trainer import load_dataset
    config = ContextualConfig(context=args.context, max_tokens=args.max_tokens, epochs=args.epochs,
                              lr=args.lr, batch_size=args.batch_size, seed=args.seed, init=args.init,
                              progress=not args.no_progress and sys.stderr.isatty())
    check_config(config)
    check_out_dir(args.out, TEACHER_FILES, args.overwrite)
    import torch
    from ..training.contextual_teacher import train_contextual_teacher
    if args.threads:
        torch.set_num_threads(args.threads)
    train_set, dev_set, test_set, labels = load_dataset("meld", args.data)
    print(f"data: {len(train_set)}/{len(dev_set)}/{len(test_set)} dialogues; context "
          f"{config.context} utterances, {config.max_tokens} tokens", flush=True)
    result = train_contextual_teacher(train_set, dev_set, test_set, labels, config, args.out,
                                      log=lambda line: print(line, flush=True))
    t = result["test"]
    print(f"TEST (epoch {result['best_epoch']}, selected on dev)  accuracy {t['accuracy']:.2f}  "
          f"weighted F1 {t['weighted_f1']:.2f}  macro F1 {t['macro_f1']:.2f}  (checkpoint "
          f"{os.path.join(args.out, 'best.pt')})")
    return 0


COMMANDS = {"train-teacher": run}
