"""``aghmn-fast demo-stream``: one MELD test dialogue streamed through a checkpoint."""
from __future__ import annotations

from .options import CHECKPOINT_HELP, DATA_HELP

def add_parser(sub) -> None:
    """Register ``aghmn-fast demo-stream`` on the CLI's subparsers."""
    p = sub.add_parser("demo-stream", help="print a test dialogue utterance by utterance with predictions")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--dialogue", type=int, default=None,
                   help="index of the MELD test dialogue (default: the first with >= 8 utterances)")


def run(args) -> int:
    """Stream one MELD test dialogue through a checkpoint, printing prediction and gold label."""
    from ..data import default_meld_root, load_meld
    from ..models.checkpoint import load_checkpoint

    model, vocab, labels, _ = load_checkpoint(args.checkpoint)
    test = load_meld(args.data or default_meld_root(), "test")
    if args.dialogue is not None:
        if not 0 <= args.dialogue < len(test):
            raise ValueError(f"--dialogue must be in [0, {len(test) - 1}], got {args.dialogue}")
        dialogue = test[args.dialogue]
    else:
        dialogue = next(d for d in test if len(d.texts) >= 8)
    from ..streaming import StreamingRecognizer
    print(f"MELD test dialogue {dialogue.id}, streamed one utterance at a time:")
    rec = StreamingRecognizer(model, vocab=vocab, label_names=labels)
    for speaker, text, gold in zip(dialogue.speakers, dialogue.texts, dialogue.labels):
        pred = rec.push(dialogue.id, text)
        print(f"  [{pred.label:>8s} | gold {labels[gold]:>8s}] {speaker}: {text}")
    return 0


COMMANDS = {"demo-stream": run}
