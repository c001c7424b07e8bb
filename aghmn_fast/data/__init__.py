"""The data layer: tokenizer, vocabulary, datasets (MELD, the authors' JSON), embeddings.

- :func:`tokenize`: the authors' text preprocessing (spec section 8);
- :class:`Vocabulary`: token <-> id, ``<pad>`` = 0, ``<unk>`` = 1, JSON-safe for checkpoints;
- :func:`load_meld`, :func:`load_json_dialogues`, :class:`Dialogue`, :func:`class_weights`;
- :func:`build_embeddings`: the frozen word-vector table (kumo GloVe 50-d, wordllama 256-d,
  GloVe .txt, word2vec .bin, or random);
- :mod:`.sentences`: frozen all-MiniLM-L6-v2 sentence vectors for the ``minilm`` reader,
  cached per text.
"""
from .datasets import (IEMOCAP_LABELS, MELD_LABELS, MELD_SPLITS, Dialogue, class_weights,
                       default_meld_root, label_counts, load_json_dialogues, load_meld)
from .embeddings import KUMO_SOURCE, build_embeddings
from .text import MAX_LEN, normalize, tokenize
from .vocab import Vocabulary

__all__ = [
    "tokenize", "normalize", "MAX_LEN",
    "Vocabulary",
    "Dialogue", "MELD_LABELS", "IEMOCAP_LABELS", "MELD_SPLITS", "default_meld_root", "load_meld",
    "load_json_dialogues", "label_counts", "class_weights",
    "build_embeddings", "KUMO_SOURCE",
]
