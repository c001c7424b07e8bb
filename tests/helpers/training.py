"""Tiny synthetic dialogues, models and teachers for the training, distillation, calibration and
contextual-teacher tests."""
import json

import torch

from aghmn_fast.data import IEMOCAP_LABELS, MELD_LABELS, Dialogue
from aghmn_fast.models import AGHMN, AGHMNConfig
from aghmn_fast.training.trainer import TrainConfig, build_vocabulary, train

#: label -> the words of its utterances: the words carry the label, so a tiny model learns it.
WORDS = {0: "calm fine okay sure", 1: "wow really what no way", 2: "scared afraid help",
         3: "sad sorry miss", 4: "great love happy yay", 5: "gross ugh eww", 6: "angry hate stop"}

#: A few hand-written dialogues (texts only) with real punctuation and contractions.
SCRIPTED_TEXTS = [
    ["Hey, how was the interview?", "Terrible. I froze on the first question.",
     "Oh no, I'm so sorry!", "It's fine. Whatever.", "Do you want some ice cream?",
     "Yes! Chocolate, please."],
    ["Did you eat my sandwich?!", "What sandwich?", "Ugh, that's disgusting, it had mold on it."],
    ["I'm scared of the dark.", "There's nothing there.", "Are you sure?", "Yes.",
     "Okay... goodnight.", "Goodnight!", "Wait, what was that noise?!", "It's the cat."],
    ["Wow."],
]


def tiny_dialogues(n, seed):
    """``n`` dialogues of 1-6 utterances drawn from :data:`WORDS` by ``seed``, labels 0-6."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        size = int(torch.randint(1, 7, (1,), generator=g))
        labels = torch.randint(0, 7, (size,), generator=g).tolist()
        texts = [" ".join(WORDS[l].split()[: 1 + j % 3]) + "!" for j, l in enumerate(labels)]
        out.append(Dialogue(f"d{seed}-{i}", ["A"] * size, texts, labels))
    return out


def tiny_setup(summary="agru"):
    """(model, train, dev, test, vocabulary): a 10-unit reference-backend AGHMN over random
    12-d word vectors (drawn from the global generator, then seeded 0) and 30 / 6 / 6 dialogues."""
    tr, dv, te = tiny_dialogues(30, 1), tiny_dialogues(6, 2), tiny_dialogues(6, 3)
    vocab = build_vocabulary([tr, dv, te], min_count=1)
    emb = torch.randn(len(vocab), 12)  # unit-scale vectors: the words carry the label
    cfg = AGHMNConfig(vocab_size=len(vocab), embedding_dim=12, num_classes=7, hidden_size=10,
                      window=3, summary=summary, backend="reference")
    torch.manual_seed(0)
    return AGHMN(cfg, emb), tr, dv, te, vocab


def write_json_split(path, dialogues, labels):
    """``dialogues`` as one split file of the authors' JSON layout (speaker, utterance, emotion)."""
    data = [[{"speaker": s, "utterance": t, "emotion": labels[l]}
             for s, t, l in zip(d.speakers, d.texts, d.labels)] for d in dialogues]
    path.write_text(json.dumps(data))


def iemocap_train_args(tmp_path):
    """Writes a tiny IEMOCAP-layout dataset under ``tmp_path``; returns the ``aghmn-fast train``
    arguments (without ``--out``) that train on it in seconds."""
    for split, seed in (("train", 1), ("dev", 2), ("test", 3)):
        ds = tiny_dialogues(5, seed)
        for d in ds:
            d.labels[:] = [l % 6 for l in d.labels]
        write_json_split(tmp_path / f"{split}.json", ds, list(IEMOCAP_LABELS))
    return ["train", "--dataset", "iemocap", "--data", str(tmp_path), "--epochs", "2",
            "--embeddings", "random", "--embedding-dim", "8", "--hidden", "6", "--window", "4",
            "--no-progress", "--backend", "reference"]


def train_tiny_teacher(tmp_path, name, seed):
    """Trains :func:`tiny_setup`'s model for 2 epochs (``seed``) into ``tmp_path/name``; returns
    the path of its ``best.pt``."""
    model, tr, dv, te, vocab = tiny_setup()
    train(model, tr, dv, te, vocab, list(MELD_LABELS),
          TrainConfig(epochs=2, lr=5e-3, progress=False, seed=seed),
          out_dir=str(tmp_path / name), log=lambda s: None)
    return str(tmp_path / name / "best.pt")
