"""``aghmn-fast export``: a checkpoint as one ``.aghmn`` model file for the native runtime."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    """Register ``aghmn-fast export`` on the CLI's subparsers."""
    p = sub.add_parser("export", help="export a checkpoint as one .aghmn file for the native runtime")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by aghmn-fast train (best.pt)")
    p.add_argument("--out", required=True, help="model file to write (e.g. model.aghmn)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="fp32 (default) or bf16: weight matrices and embedding table in bfloat16, "
                        "about half the file (docs/RUNTIME.md)")


def run(args) -> int:
    """``aghmn-fast export``: write the file and print one JSON summary line."""
    from ..export import export_checkpoint
    print(json.dumps(export_checkpoint(args.checkpoint, args.out, args.precision)))
    return 0


COMMANDS = {"export": run}
