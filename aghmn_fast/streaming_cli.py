"""``aghmn-fast stream``: conversation_id<TAB>utterance lines on stdin, one JSON line per utterance."""
from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    """Add the ``stream`` subcommand to the CLI's subparsers."""
    p = sub.add_parser("stream", help="stream utterances from stdin (id<TAB>text), JSON lines out")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--backend", default=None)
    p.add_argument("--threads", type=int, default=1)


def run(args, stdin=None, stdout=None) -> int:
    """Serve stdin line by line; malformed lines get an ``{"error": ...}`` line, not a crash."""
    import torch
    from .streaming import StreamingRecognizer

    torch.set_num_threads(args.threads)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    rec = StreamingRecognizer.from_checkpoint(args.checkpoint, backend=args.backend)
    for number, line in enumerate(stdin, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        cid, sep, text = line.partition("\t")
        try:
            if not sep:
                raise ValueError("expected conversation_id<TAB>utterance")
            out = rec.push(cid, text).to_dict()
        except (TypeError, ValueError) as exc:
            out = {"line": number, "error": str(exc)}
        stdout.write(json.dumps(out) + "\n")
        stdout.flush()
    return 0


COMMANDS = {"stream": run}
