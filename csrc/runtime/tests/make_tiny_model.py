"""Write a tiny random-initialised checkpoint and export it as a .aghmn model with the real
exporter (`aghmn-fast export`), for the runtime's ctests (example program, fuzz test).

    python csrc/runtime/tests/make_tiny_model.py OUT.aghmn [--reader bigru|cnn]
"""
import argparse
import os
import sys
import tempfile

import torch

from aghmn_fast.cli import main as cli_main
from aghmn_fast.data import Vocabulary
from aghmn_fast.models import AGHMN, AGHMNConfig
from aghmn_fast.models.checkpoint import save_checkpoint

WORDS = ["<pad>", "<unk>", "", "hi", "there", "!", "?", "how", "are", "you", "i", "am", "fine",
         "oh", "my", "god", "what", "cafe", "senor", "naive", "no", "way", "okay", "hello"]
LABELS = ["neutral", "joy", "sadness", "anger"]


def main() -> int:
    """Command line: OUT path and the reader."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--reader", default="bigru", choices=["bigru", "cnn"])
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = AGHMNConfig(vocab_size=len(WORDS), embedding_dim=8, num_classes=len(LABELS),
                      hidden_size=12, window=4, reader=args.reader, cnn_filters=6, max_len=20)
    model = AGHMN(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "tiny.pt")
        save_checkpoint(ckpt, model, Vocabulary(WORDS), LABELS)
        return cli_main(["export", "--checkpoint", ckpt, "--out", args.out])


if __name__ == "__main__":
    sys.exit(main())
