"""``aghmn-fast stream``: conversation_id<TAB>utterance lines on stdin, one JSON line per utterance."""
from __future__ import annotations

import argparse
import json
import sys

from .options import BACKEND_HELP, CHECKPOINT_HELP, positive_int

STREAM_DESCRIPTION = """\
Reads lines `conversation_id<TAB>utterance` from stdin (UTF-8) and writes one JSON line per
utterance to stdout, as soon as it is classified. Only the past of each conversation is used.

Output fields:
  id             the conversation id, as given
  index          the utterance's position in its conversation (0-based)
  label          the predicted emotion
  probabilities  {emotion: probability} over every class
  latency_ms     wall time of the prediction, in milliseconds
A line that cannot be classified (no tab, empty text, invalid UTF-8) gets
  {"line": N, "error": "..."} instead, and the stream goes on; blank lines are skipped.
"""


def add_parser(sub) -> None:
    """Add the ``stream`` subcommand to the CLI's subparsers."""
    p = sub.add_parser("stream", help="stream utterances from stdin (id<TAB>text), JSON lines out",
                       description=STREAM_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--backend", default=None,
                   help=BACKEND_HELP)
    p.add_argument("--device", default=None,
                   help="torch device to run on, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default: %(default)s)")


def _lines(stdin):
    """(line number, text or None when the line is not valid UTF-8), blank lines included."""
    binary = getattr(stdin, "buffer", None)
    for number, raw in enumerate(binary if binary is not None else stdin, 1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None
                continue
        yield number, raw.rstrip("\r\n")


def run(args, stdin=None, stdout=None) -> int:
    """Serve stdin line by line; malformed lines get an ``{"error": ...}`` line, not a crash."""
    import torch
    from ..streaming import StreamingRecognizer

    torch.set_num_threads(args.threads)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    rec = StreamingRecognizer.from_checkpoint(args.checkpoint, device=getattr(args, "device", None),
                                              backend=args.backend)
    for number, line in _lines(stdin):
        if line is not None and not line.strip():
            continue
        try:
            if line is None:
                raise ValueError("not valid UTF-8")
            cid, sep, text = line.partition("\t")
            if not sep:
                raise ValueError("expected conversation_id<TAB>utterance")
            out = rec.push(cid, text).to_dict()
        except (TypeError, ValueError) as exc:
            out = {"line": number, "error": str(exc)}
        stdout.write(json.dumps(out) + "\n")
        stdout.flush()
    return 0


COMMANDS = {"stream": run}
