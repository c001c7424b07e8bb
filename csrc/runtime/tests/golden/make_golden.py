"""Writes the golden model files of the runtime's tests: tiny random-initialised models (a BiGRU
reader with BiF + AGRU and hops 2, a CNN reader with UniF + BiAGRU) exported in model format 2
by the real exporter, and the torch StreamingRecognizer's probabilities for the fixed dialogue
``dialogue.tsv`` (one line per utterance, the label names first).

    python csrc/runtime/tests/golden/make_golden.py [--out csrc/runtime/tests/golden]

The committed files are the contract: ctest (golden_test) and pytest (tests/runtime/
test_golden.py) load them with the runtime, the Python module and the torch side and compare
the probabilities, so a change of the layout, the loader or the tokenizer that breaks files
already written fails a test. Regenerate only for a deliberate format change (and say so).
"""
import argparse
import os
import sys
import tempfile

import torch

from aghmn_fast.data import Vocabulary
from aghmn_fast.export import export_checkpoint
from aghmn_fast.models import AGHMN, AGHMNConfig
from aghmn_fast.models.checkpoint import save_checkpoint
from aghmn_fast.streaming import StreamingRecognizer

HERE = os.path.dirname(os.path.abspath(__file__))
# Tokens of the dialogue's normalised words, some left out so <unk> is exercised.
WORDS = ["<pad>", "<unk>", "hi", "there", "!", "?", "how", "are", "you", "i", "am", "fine", "oh",
         "my", "god", "what", "cafe", "naive", "no", "way", "okay", "the", "job"]
LABELS = ["neutral", "joy", "sadness", "anger"]
MODELS = {
    "bigru": dict(reader="bigru", fusion="bif", summary="agru", hops=2),
    "cnn": dict(reader="cnn", fusion="unif", summary="biagru", hops=1, cnn_filters=3),
}


def read_dialogue(path: str):
    """(conversation id, text) pairs of a tab-separated dialogue file."""
    with open(path, encoding="utf-8") as f:
        return [tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip()]


def main() -> int:
    """Command line: the output folder (default: this script's)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=HERE)
    args = parser.parse_args()
    dialogue = read_dialogue(os.path.join(HERE, "dialogue.tsv"))
    for name, kw in MODELS.items():
        torch.manual_seed(7)
        cfg = AGHMNConfig(vocab_size=len(WORDS), embedding_dim=5, num_classes=len(LABELS),
                          hidden_size=4, window=3, max_len=8, **kw)
        model = AGHMN(cfg)
        with torch.no_grad():   # larger weights than the initialisation: distinct probabilities
            for p in model.parameters():
                p.mul_(2.0)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, f"{name}.pt")
            save_checkpoint(ckpt, model, Vocabulary(WORDS), LABELS)
            export_checkpoint(ckpt, os.path.join(args.out, f"{name}.aghmn"))
            rec = StreamingRecognizer.from_checkpoint(ckpt)
        with open(os.path.join(args.out, f"{name}.expected"), "w", encoding="utf-8") as f:
            f.write("\t".join(LABELS) + "\n")
            for cid, text in dialogue:
                p = rec.push(cid, text)
                f.write("\t".join("%.9g" % p.probabilities[n] for n in LABELS) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
