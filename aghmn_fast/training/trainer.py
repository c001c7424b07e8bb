"""Training and evaluation of AGHMN with the authors' recipe (AGHMN.md §7).

Adam (lr 5e-4), gradient-norm clip 5, one dialogue per step (``batch_dialogues`` > 1 is a speed
option), dialogues reshuffled every epoch, class-weighted NLL summed over the step's utterances
divided by their number, lr *= 0.95 after an epoch whose dev accuracy did not improve, model
selection on dev accuracy, one test evaluation with the selected checkpoint.
``TrainConfig.select_on = "weighted_f1"`` (an option, not the recipe) uses dev weighted F1 instead,
for both the selection and the lr decay.

Distillation (an option): with ``soft_targets`` (the averaged, tempered probabilities of teacher
checkpoints on the training dialogues,
:func:`aghmn_fast.training.distillation.teacher_targets`), the loss is
``(1 - w) * recipe loss + w * T^2 * cross-entropy(teacher_T, student_T)`` (class-weighted as the
recipe's loss), with T
``TrainConfig.distill_temperature`` and w ``TrainConfig.distill_weight``; nothing else changes,
so the student is an ordinary checkpoint of the usual size.
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

from ..data import (MELD_LABELS, Dialogue, Vocabulary, class_weights,
                   default_meld_root, load_json_dialogues, load_meld, tokenize)
from .._io import atomic_write
from .calibration import (DEFAULT_FIT_ON, DEFAULT_MAX_DROP, DEFAULT_RESAMPLES, check_fit_on, check_max_drop,
                          check_resamples, fit_logit_biases,
                          set_logit_biases)
from .metrics import classification_metrics, f1_scores, format_report
from ..models import AGHMN, make_batch
from ..models.checkpoint import save_checkpoint


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
    distill_temperature: float = 2.0
    distill_weight: float = 0.5
    teachers: List[Dict] = dataclasses.field(default_factory=list)  # recorded: file name, sha256
    teacher_weights: Optional[List[float]] = None  # the teachers' averaging weights (None: equal)
    calibrate: bool = False             # fit per-class logit biases after selection
    calibrate_max_drop: float = DEFAULT_MAX_DROP  # the weighted-F1 points calibration may give up
    calibrate_resamples: int = DEFAULT_RESAMPLES  # bootstrap fits averaged (0: one fit on all)
    calibrate_fit_on: str = DEFAULT_FIT_ON  # "train+dev" (pooled) or "dev"


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


def check_labels(path: str, labels: Sequence[str], label_names: Sequence[str],
                 what: str = "checkpoint") -> None:
    """``ValueError`` naming both label lists unless the ``what`` ("checkpoint", "teacher") at
    ``path`` predicts exactly the dataset's ``label_names``."""
    if list(labels) != list(label_names):
        raise ValueError(f"{what} {path} predicts {len(labels)} labels ({', '.join(labels)}), "
                         f"the dataset has {len(label_names)} ({', '.join(label_names)}): use the "
                         "dataset it was trained on (--dataset, --data)")


def train(model: AGHMN, train_set: Sequence[Dialogue], dev_set: Sequence[Dialogue],
          test_set: Sequence[Dialogue], vocab: Vocabulary, label_names: Sequence[str],
          config: TrainConfig = TrainConfig(), out_dir: Optional[str] = None, log=print,
          soft_targets: Optional[Sequence[torch.Tensor]] = None) -> Dict:
    """Train with the recipe, select on dev ``config.select_on`` (accuracy by default), evaluate
    the selected model on test.

    The lr decays after every epoch that does not strictly improve the selection metric; the first
    epoch reaching its best value is kept. Returns a dict with per-epoch history, the best dev
    metrics and epoch, the test metrics and seconds per epoch. With ``out_dir``, writes
    ``best.pt`` and ``metrics.json`` there. Raises ``ValueError`` for an empty training set or an
    unknown ``select_on``. ``soft_targets`` (one [utterances, C] tensor per training dialogue)
    turns on distillation (module doc); bad targets or distillation options raise ``ValueError``.
    """
    if not train_set:
        raise ValueError("the training set has no dialogues")
    if config.select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {SELECT_ON}, got {config.select_on!r}")
    if soft_targets is not None:
        _check_distillation(config, soft_targets, train_set, len(label_names))
    if config.calibrate:
        check_max_drop(config.calibrate_max_drop)
        check_resamples(config.calibrate_resamples)
        check_fit_on(config.calibrate_fit_on)
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
    log(f"{config.epochs} epochs of {len(train_set)} dialogues; * marks an epoch whose dev "
        f"{config.select_on.replace('_', ' ')} is the best so far (the model kept"
        f"{' as best.pt' if out_dir else ''})")
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
            if soft_targets is not None:
                loss = _distilled_loss(loss, log_probs, torch.cat([soft_targets[i] for i in chunk]),
                                       weights[batch.labels], config)
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
                                {"epoch": epoch, "dev": _summary(dev),
                                 "train_config": dataclasses.asdict(config)})
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
    calibration = uncalibrated = None
    if config.calibrate:
        pooled = (enc_train, train_set) if config.calibrate_fit_on == "train+dev" else None
        calibration = calibrate_model(model, enc_dev, dev_set, config.calibrate_max_drop,
                                      resamples=config.calibrate_resamples, pooled_with=pooled)
        uncalibrated = evaluate(model, enc_test, test_set, label_names, config.eval_batch_dialogues)
        set_logit_biases(model, calibration["logit_bias"])
        log(calibration_summary(calibration))
        if out_dir:
            save_checkpoint(os.path.join(out_dir, "best.pt"), model, vocab, label_names,
                            {"epoch": best_epoch, "dev": history[best_epoch - 1]["dev"],
                             "train_config": dataclasses.asdict(config), "calibration": calibration})
    test = evaluate(model, enc_test, test_set, label_names, config.eval_batch_dialogues)
    result = {"history": history, "best_dev": history[best_epoch - 1]["dev"], "best_epoch": best_epoch,
              "test": test, "seconds_per_epoch": float(np.mean(epoch_seconds)),
              "train_config": dataclasses.asdict(config),
              "model_config": dataclasses.asdict(model.config)}
    if calibration is not None:
        result.update(test_uncalibrated=uncalibrated, calibration=calibration)
    log("test: " + format_report(test))
    if out_dir:
        atomic_write(os.path.join(out_dir, "metrics.json"),
                     lambda f: json.dump(result, f, indent=1), mode="w")
    return result


def calibrate_model(model: AGHMN, encoded_dev, dev_set: Sequence[Dialogue], max_weighted_f1_drop: float,
                    previous: Sequence[float] = (), resamples: int = DEFAULT_RESAMPLES,
                    pooled_with=None) -> Dict:
    """Fit per-class logit biases of ``model`` (:mod:`aghmn_fast.training.calibration`) on the dev set, or
    on the dev set pooled with ``pooled_with`` = ``(encoded, dialogues)`` of another split (the
    training split for ``fit_on="train+dev"``), and return the record: the biases, ``fit_on``,
    the scores before and after on the fitted data (``before``, ``after``) and on dev alone
    (``dev``). ``previous``: biases already folded into the model, removed first so that the fit
    starts from the uncalibrated model (and left removed: fold the returned biases in with
    :func:`~aghmn_fast.training.calibration.set_logit_biases`).
    """
    set_logit_biases(model, (), previous)
    parts = [(encoded_dev, dev_set)] + ([pooled_with] if pooled_with is not None else [])
    scores = torch.cat([predict(model, encoded) for encoded, _ in parts])
    y = torch.tensor([l for _, split in parts for d in split for l in d.labels], dtype=torch.int64)
    record = fit_logit_biases(scores, y, model.config.num_classes, max_weighted_f1_drop,
                              resamples=resamples)
    n_dev = sum(len(d.labels) for d in dev_set)
    dev_scores, dev_y = scores[:n_dev].double().numpy(), y[:n_dev].numpy()
    shift = np.asarray(record["logit_bias"])
    record["dev"] = {name: dict(zip(("weighted_f1", "macro_f1"),
                                    f1_scores(dev_y, (dev_scores + b).argmax(1), len(shift))))
                     for name, b in (("before", 0.0), ("after", shift))}
    record["fit_on"] = "train+dev" if pooled_with is not None else "dev"
    return record


def calibration_summary(record: Dict) -> str:
    """One line: the dev scores before and after a calibration and the data it was fitted on."""
    before, after = record["dev"]["before"], record["dev"]["after"]
    return (f"calibrated (fitted on {record['fit_on']}): dev weighted F1 {before['weighted_f1']:.2f} "
            f"-> {after['weighted_f1']:.2f}, dev macro F1 {before['macro_f1']:.2f} -> "
            f"{after['macro_f1']:.2f}")


def check_distillation_options(temperature: float, weight: float) -> None:
    """``ValueError`` naming the option unless temperature is positive and finite and weight is in
    [0, 1]."""
    if not 0 < temperature < float("inf"):
        raise ValueError(f"--distill-temperature must be a positive finite number, got {temperature}")
    if not 0 <= weight <= 1:
        raise ValueError(f"--distill-weight must be in [0, 1], got {weight}")


def _check_distillation(config: TrainConfig, soft_targets, train_set, num_classes: int) -> None:
    check_distillation_options(config.distill_temperature, config.distill_weight)
    if len(soft_targets) != len(train_set) or any(
            tuple(t.shape) != (len(d.texts), num_classes) for t, d in zip(soft_targets, train_set)):
        raise ValueError("soft_targets must hold one [utterances, classes] tensor per training "
                         "dialogue, in order")


def _distilled_loss(hard: torch.Tensor, log_probs: torch.Tensor, targets: torch.Tensor,
                    utterance_weights: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """The recipe's loss mixed with the soft cross-entropy to the teachers at temperature T, with
    the recipe's class weight of each utterance's gold label (so both terms have one scale and
    the rare classes keep their weight) and times T^2 (so its gradient keeps that scale as T
    changes)."""
    T, w = config.distill_temperature, config.distill_weight
    student = torch.log_softmax(log_probs / T, dim=-1)  # log-probabilities are logits up to a constant
    soft = (utterance_weights * -(targets * student).sum(-1)).sum() / targets.shape[0]
    return (1 - w) * hard + w * T * T * soft


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
        from ..data import IEMOCAP_LABELS
        from ..data.datasets import require_directory
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
