"""Training and evaluation of AGHMN with the authors' recipe (AGHMN.md §7).

Adam (lr 5e-4), gradient-norm clip 5, one dialogue per step (``batch_dialogues`` > 1 is a speed
option), dialogues reshuffled every epoch, class-weighted NLL summed over the step's utterances
divided by their number, lr *= 0.95 after an epoch whose dev accuracy did not improve, model
selection on dev accuracy, one test evaluation with the selected checkpoint.
``TrainConfig.select_on = "weighted_f1"`` (an option, not the recipe) uses dev weighted F1 instead,
for both the selection and the lr decay.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
try:
    from tqdm.auto import tqdm
except ImportError:  # a declared dependency, but the lent GPU image runs the tests without it
    class tqdm:  # noqa: N801 - stands in for tqdm's bar: iterates, shows nothing
        def __init__(self, iterable, **_):
            self._iterable = iterable

        def __iter__(self):
            return iter(self._iterable)

        def set_postfix(self, **_):
            pass

from .data import (MELD_LABELS, Dialogue, Vocabulary, class_weights,
                   default_meld_root, load_json_dialogues, load_meld, tokenize)
from ._io import atomic_write
from .metrics import classification_metrics, format_report
from .models import AGHMN, make_batch
from .models.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint  # noqa: F401 (re-exported)


@dataclasses.dataclass
class TrainConfig:
    """Options of :func:`train`. Defaults are the authors' MELD recipe."""
    epochs: int = 20
    lr: float = 5e-4
    clip: float = 5.0
    lr_decay: float = 0.95
    class_weight_rate: float = 0.5
    batch_dialogues: int = 1
    seed: int = 1
    eval_batch_dialogues: int = 64
    progress: bool = True
    select_on: str = "accuracy"


SELECT_ON = ("accuracy", "weighted_f1")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encode_dialogues(dialogues: Sequence[Dialogue], vocab: Vocabulary, max_len: int,
                     model: Optional[AGHMN] = None) -> List[List[List[int]]]:
    """Token ids of every utterance of every dialogue; for a sentence-reader ``model``, its frozen
    sentence vector instead (each distinct text encoded once)."""
    encoder = None if model is None else model.sentence_encoder
    if encoder is not None:
        return encoder.encode_dialogues(dialogues)
    return [[vocab.encode(tokenize(text, max_len)) for text in d.texts] for d in dialogues]


def build_vocabulary(splits: Sequence[Sequence[Dialogue]], max_len: int = 60, min_count: int = 2) -> Vocabulary:
    """The vocabulary over the given splits' tokens (the authors use train+dev+test, min count 2)."""
    return Vocabulary.build((tokenize(t, max_len) for split in splits for d in split for t in d.texts),
                            min_count=min_count)


def _chunks(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def predict(model: AGHMN, encoded: Sequence[List[List[int]]], batch_dialogues: int = 64) -> torch.Tensor:
    """Log-probabilities [total utterances, C] for the encoded dialogues, in order (eval mode)."""
    was_training = model.training
    model.eval()
    out = [model(make_batch(chunk, model.config.window, max_len=model.config.max_len))
           for chunk in _chunks(list(encoded), batch_dialogues)]
    model.train(was_training)
    return torch.cat(out)


def evaluate(model: AGHMN, encoded, dialogues: Sequence[Dialogue], label_names, batch_dialogues=64) -> Dict:
    """Metrics (percent) and unweighted mean NLL of the model on the dialogues."""
    log_probs = predict(model, encoded, batch_dialogues)
    y = torch.tensor([l for d in dialogues for l in d.labels], dtype=torch.int64)
    metrics = classification_metrics(y.tolist(), log_probs.argmax(-1).tolist(), label_names)
    metrics["loss"] = float(nn.functional.nll_loss(log_probs, y))
    return metrics


def train(model: AGHMN, train_set: Sequence[Dialogue], dev_set: Sequence[Dialogue],
          test_set: Sequence[Dialogue], vocab: Vocabulary, label_names: Sequence[str],
          config: TrainConfig = TrainConfig(), out_dir: Optional[str] = None, log=print) -> Dict:
    """Train with the recipe, select on dev ``config.select_on`` (accuracy by default), evaluate
    the selected model on test.

    The lr decays after every epoch that does not strictly improve the selection metric; the first
    epoch reaching its best value is kept. Returns a dict with per-epoch history, the best dev
    metrics and epoch, the test metrics and seconds per epoch. With ``out_dir``, writes
    ``best.pt`` and ``metrics.json`` there. Raises ``ValueError`` for an empty training set or an
    unknown ``select_on``.
    """
    if not train_set:
        raise ValueError("the training set has no dialogues")
    if config.select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {SELECT_ON}, got {config.select_on!r}")
    set_seed(config.seed)
    max_len = model.config.max_len
    enc_train, enc_dev, enc_test = (encode_dialogues(split, vocab, max_len, model)
                                    for split in (train_set, dev_set, test_set))
    weights = class_weights(train_set, len(label_names), config.class_weight_rate)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused Adam: one kernel over all parameters instead of ~6 small ops per tensor per step
    optimizer = torch.optim.Adam(params, lr=config.lr, fused=True)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    best_score, best_epoch, best_state, history, epoch_seconds = -1.0, 0, None, [], []
    order = list(range(len(train_set)))
    rng = random.Random(config.seed)
    # One dialogue per step (the recipe): build each dialogue's batch once, not every epoch.
    single = None
    if config.batch_dialogues == 1:
        single = [make_batch([enc], model.config.window, [d.labels], max_len)
                  for enc, d in zip(enc_train, train_set)]
    for epoch in range(1, config.epochs + 1):
        model.train()
        rng.shuffle(order)
        start, total_loss, steps = time.perf_counter(), 0.0, 0
        bar = tqdm(list(_chunks(order, config.batch_dialogues)), desc=f"epoch {epoch}/{config.epochs}",
                   disable=not config.progress, leave=False, unit="step")
        for chunk in bar:
            batch = single[chunk[0]] if single is not None else make_batch(
                [enc_train[i] for i in chunk], model.config.window,
                [train_set[i].labels for i in chunk], max_len)
            log_probs = model(batch)
            nll = -log_probs.gather(1, batch.labels.unsqueeze(1)).squeeze(1)
            loss = (weights[batch.labels] * nll).sum() / batch.labels.numel()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, config.clip)
            optimizer.step()
            total_loss += loss.item()
            steps += 1
            if steps % 50 == 0:
                bar.set_postfix(loss=f"{total_loss / steps:.4f}")
        epoch_seconds.append(time.perf_counter() - start)
        dev = evaluate(model, enc_dev, dev_set, label_names, config.eval_batch_dialogues)
        improved = dev[config.select_on] > best_score
        if improved:
            best_score, best_epoch = dev[config.select_on], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if out_dir:
                save_checkpoint(os.path.join(out_dir, "best.pt"), model, vocab, label_names,
                                {"epoch": epoch, "dev": _summary(dev)})
        else:
            for group in optimizer.param_groups:
                group["lr"] *= config.lr_decay
        history.append({"epoch": epoch, "train_loss": total_loss / max(steps, 1),
                        "dev": _summary(dev), "seconds": epoch_seconds[-1],
                        "lr": optimizer.param_groups[0]["lr"]})
        log(f"epoch {epoch:2d}  train loss {total_loss / max(steps, 1):.4f}  dev loss {dev['loss']:.4f}  "
            f"dev acc {dev['accuracy']:.2f}  dev wF1 {dev['weighted_f1']:.2f}  "
            f"{'*' if improved else ' '}  {epoch_seconds[-1]:.1f}s")
    model.load_state_dict(best_state)
    test = evaluate(model, enc_test, test_set, label_names, config.eval_batch_dialogues)
    result = {"history": history, "best_dev": history[best_epoch - 1]["dev"], "best_epoch": best_epoch,
              "test": test, "seconds_per_epoch": float(np.mean(epoch_seconds)),
              "train_config": dataclasses.asdict(config),
              "model_config": dataclasses.asdict(model.config)}
    log("test: " + format_report(test))
    if out_dir:
        atomic_write(os.path.join(out_dir, "metrics.json"),
                     lambda f: json.dump(result, f, indent=1), mode="w")
    return result


def _summary(m: Dict) -> Dict:
    return {k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1", "loss")}


def load_dataset(dataset: str, data: Optional[str]):
    """(train, dev, test, label names) for ``dataset`` "meld" (CSV directory) or "json:<dir>"
    (the authors' JSON layout: <dir>/train.json, dev.json, test.json, labels from the files)."""
    if dataset == "meld":
        root = data or default_meld_root()
        return (load_meld(root, "train"), load_meld(root, "dev"), load_meld(root, "test"),
                list(MELD_LABELS))
    if dataset in ("iemocap", "meld-json"):
        from .data import IEMOCAP_LABELS
        from .data.datasets import require_directory
        labels = list(IEMOCAP_LABELS if dataset == "iemocap" else MELD_LABELS)
        if not data:
            raise ValueError(f"--data DIR is required for dataset {dataset!r} "
                             "(a directory with train.json, dev.json, test.json)")
        require_directory(data, f"--dataset {dataset} data directory",
                          "train.json, dev.json, test.json")
        splits = [load_json_dialogues(os.path.join(data, f"{s}.json"), labels)
                  for s in ("train", "dev", "test")]
        return (*splits, labels)
    raise ValueError(f"unknown dataset {dataset!r}: use meld, meld-json or iemocap")
