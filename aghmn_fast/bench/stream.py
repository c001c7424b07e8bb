"""Streaming latency: the recognizer vs the reference path that re-runs the model on the dialogue.

Per-utterance latency (median, p99) at K = 10 and K = 40 for one conversation and for many
concurrent conversations served by ``push_many``; the reference path (what the authors' code
does: re-run the model on the dialogue so far for every new utterance) measured in the same run;
and a memory-flatness run (many pushes over rotating conversations, resident memory sampled).
:func:`reader_latency` compares the readers (GloVe 50-d, wordllama 256-d, MiniLM sentence
vectors) on the same cases.
"""
from __future__ import annotations

import gc
import resource
import statistics
import time
from typing import Dict, List, Optional, Sequence

import torch

from .. import ops
from ..data import MELD_LABELS, Vocabulary, load_meld
from ..models import AGHMN, AGHMNConfig, make_batch
from ..streaming import StreamingRecognizer
from .timing import num_threads


def _percentiles(samples_ms: Sequence[float]) -> Dict[str, float]:
    s = sorted(samples_ms)
    p99 = s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]
    return {"median_ms": statistics.median(s), "p99_ms": p99, "n": len(s)}


def _dialogue_of_length(dialogues, n: int) -> List[str]:
    """Texts of a dialogue of exactly n utterances, concatenating test dialogues if needed."""
    for d in dialogues:
        if len(d.texts) == n:
            return list(d.texts)
    texts: List[str] = []
    for d in dialogues:
        texts.extend(d.texts)
        if len(texts) >= n:
            return texts[:n]
    raise ValueError(f"not enough utterances for a dialogue of {n}")


def build_model(window: int, vocab: Vocabulary, backend: Optional[str], seed: int = 0,
                embedding_dim: int = 50, hidden: int = 100, reader: str = "bigru") -> AGHMN:
    """A BiF-AGRU model of the paper's size with random weights (latency does not need training);
    ``reader="minilm"`` reads 384-d sentence vectors (``embedding_dim`` must then be 384)."""
    torch.manual_seed(seed)
    cfg = AGHMNConfig(vocab_size=len(vocab), embedding_dim=embedding_dim, num_classes=len(MELD_LABELS),
                      hidden_size=hidden, window=window, backend=backend, reader=reader)
    table = None if reader == "minilm" else torch.randn(len(vocab), embedding_dim)
    return AGHMN(cfg, table).eval()


def _forget_texts(model: AGHMN) -> None:
    # A sentence reader caches vectors per text; a live stream's utterances are new texts, so
    # the benchmark makes every timed push pay the sentence encoder.
    if model.sentence_encoder is not None:
        model.sentence_encoder.clear()


def single_conversation(model: AGHMN, vocab: Vocabulary, texts: Sequence[str], repeats: int) -> Dict:
    """Per-push latency of one conversation streamed ``repeats`` times (fresh id each time).

    ``full_window``: the same statistics over the utterances that have K earlier ones (the
    steady state of a long conversation, the most work per push). ``cpu_ms_mean``: the process's
    CPU time per timed push (on a shared machine, closer to the cost than wall time, which
    includes waiting for a core). A sentence reader's text cache is emptied before every push
    (not timed)."""
    rec = StreamingRecognizer(model, vocab=vocab, label_names=MELD_LABELS)
    samples, full, cpu = [], [], 0.0
    for r in range(repeats + 1):
        for i, text in enumerate(texts):
            _forget_texts(model)
            c0, t0 = time.process_time(), time.perf_counter()
            rec.push(r, text)
            if r:  # the first pass warms up
                samples.append((time.perf_counter() - t0) * 1e3)
                cpu += time.process_time() - c0
                if i >= model.config.window:
                    full.append(samples[-1])
        rec.close(r)
    return {**_percentiles(samples), "mode": rec.mode, "cpu_ms_mean": 1e3 * cpu / len(samples),
            "full_window": _percentiles(full) if full else None}


def reference_path(model: AGHMN, vocab: Vocabulary, texts: Sequence[str], repeats: int) -> Dict:
    """Per-utterance latency of re-running the model on the dialogue so far (tokenizing included),
    on the model's device."""
    from ..data import tokenize
    device = next(model.parameters()).device
    samples = []
    with torch.no_grad():
        for r in range(repeats + 1):
            for t in range(len(texts)):
                t0 = time.perf_counter()
                enc = [vocab.encode(tokenize(x)) for x in texts[: t + 1]]
                int(model(make_batch([enc], model.config.window).to(device))[-1].argmax())
                if r:
                    samples.append((time.perf_counter() - t0) * 1e3)
    return _percentiles(samples)


def concurrent(model: AGHMN, vocab: Vocabulary, dialogues, conversations: int, rounds: int,
               warmup: int = 1) -> Dict:
    """``conversations`` live conversations, one utterance each per ``push_many`` round; the first
    ``warmup`` rounds are not timed (``warmup`` >= K: every timed window is full, the steady
    state of long conversations)."""
    rec = StreamingRecognizer(model, vocab=vocab, label_names=MELD_LABELS)
    texts = [t for d in dialogues for t in d.texts]
    round_ms = []
    for r in range(warmup + rounds):
        batch = [(c, texts[(c * 7 + r) % len(texts)]) for c in range(conversations)]
        _forget_texts(model)
        t0 = time.perf_counter()
        rec.push_many(batch)
        if r >= warmup:
            round_ms.append((time.perf_counter() - t0) * 1e3)
    stats = _percentiles(round_ms)
    return {"conversations": conversations, "round_median_ms": stats["median_ms"],
            "round_p99_ms": stats["p99_ms"], "per_utterance_ms": stats["median_ms"] / conversations,
            "utterances_per_s": conversations / (stats["median_ms"] / 1e3), "rounds": rounds,
            "warmup_rounds": warmup, "full_windows": warmup >= model.config.window}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_flatness(model: AGHMN, vocab: Vocabulary, dialogues, pushes: int, live: int) -> Dict:
    """``pushes`` pushes over ``live`` rotating conversations (each closed and replaced after 20
    utterances); resident memory sampled at 10% and 100% of the run."""
    rec = StreamingRecognizer(model, vocab=vocab, label_names=MELD_LABELS)
    texts = [t for d in dialogues for t in d.texts]
    counts = [0] * live
    ids = list(range(live))
    next_id = live
    samples = {}
    t0 = time.perf_counter()
    for i in range(pushes):
        slot = i % live
        rec.push(ids[slot], texts[i % len(texts)])
        counts[slot] += 1
        if counts[slot] == 20:
            rec.close(ids[slot])
            ids[slot], counts[slot] = next_id, 0
            next_id += 1
        if i + 1 in (pushes // 10, pushes):
            gc.collect()
            samples[i + 1] = _rss_mb()
    return {"pushes": pushes, "live_conversations": live, "rss_mb": samples,
            "conversations_opened": next_id, "store_capacity": rec.store.capacity,
            "seconds": time.perf_counter() - t0}


def run(quick: bool = False, backend: Optional[str] = None, data: Optional[str] = None,
        flat_pushes: int = 0, log=print, threads: int = 1, device: str = "cpu",
        concurrency: Optional[int] = None) -> Dict:
    """The whole streaming benchmark; returns a JSON-ready dict.

    ``threads``: torch threads for the run (the previous count is restored after);
    ``device``: where the recognizer and the reference path run; ``concurrency``: live
    conversations of the ``push_many`` case (default 64 quick, 1,024 otherwise).
    """
    with num_threads(threads):
        return _run(quick, backend, data, flat_pushes, log, threads, device, concurrency)


def _run(quick, backend, data, flat_pushes, log, threads, device, concurrency) -> Dict:
    # Imported here: the training module needs tqdm, which build_model's users (the GPU suite,
    # on an image without it) do not.
    from ..training.trainer import build_vocabulary
    test = load_meld(data, "test")
    vocab = build_vocabulary([test])
    repeats = 2 if quick else 10
    conversations = concurrency or (64 if quick else 1024)
    result = {"threads": threads, "device": device,
              "backend": ops.resolve_backend(backend, torch.device(device)).name, "cases": []}
    for window, length in ((10, 18), (40, 60)):
        texts = _dialogue_of_length(test, length)
        model = build_model(window, vocab, backend).to(device)
        ref_model = build_model(window, vocab, "reference").to(device)
        stream = single_conversation(model, vocab, texts, repeats)
        ref = reference_path(ref_model, vocab, texts, max(1, repeats // 5))
        case = {"window": window, "dialogue_length": length, "stream": stream, "reference": ref,
                "speedup_median": ref["median_ms"] / stream["median_ms"],
                "concurrent": concurrent(model, vocab, test, conversations, 2 if quick else 10,
                                         warmup=1 if quick else window)}
        result["cases"].append(case)
        full = stream["full_window"]
        log(f"stream t={threads} K={window} ({stream['mode']}): stream median "
            f"{stream['median_ms']:.3f} ms p99 {stream['p99_ms']:.3f} ms"
            + (f" (full windows: {full['median_ms']:.3f} / {full['p99_ms']:.3f})" if full else "")
            + f" | reference median {ref['median_ms']:.2f} ms | "
            f"x{case['speedup_median']:.1f}")
    if flat_pushes:
        result["memory"] = memory_flatness(build_model(10, vocab, backend).to(device), vocab, test,
                                           flat_pushes, 1000)
        log(f"memory: {result['memory']}")
    return result


# Reader settings of the per-reader latency: (label, build_model keyword arguments).
READER_CASES = (("glove-50d", dict(embedding_dim=50)),
                ("wordllama-256d", dict(embedding_dim=256)),
                ("minilm", dict(reader="minilm", embedding_dim=384)))


def reader_latency(data: Optional[str] = None, threads: int = 1, repeats: int = 5,
                   conversations: int = 1024, sentence_conversations: int = 64,
                   log=print) -> Dict:
    """Streaming latency per reader (random weights of the trained models' sizes, CPU).

    For each reader and K in (10, 40): one conversation (a MELD test dialogue of 18 / 60
    utterances, ``repeats`` passes) and ``conversations`` concurrent ones in ``push_many``
    rounds (``sentence_conversations`` for the sentence reader, whose encoder runs once per
    new text: 1,024 would take minutes per round). Static readers are expected on the one-call
    ``push`` mode; the field ``path`` says which mode ran.
    """
    from ..training.trainer import build_vocabulary  # see _run
    with num_threads(threads):
        test = load_meld(data, "test")
        vocab = build_vocabulary([test])
        out = {"threads": threads, "readers": []}
        for label, kwargs in READER_CASES:
            sentence = kwargs.get("reader") == "minilm"
            for window, length in ((10, 18), (40, 60)):
                model = build_model(window, vocab, None, **kwargs)
                texts = _dialogue_of_length(test, length)
                stream = single_conversation(model, vocab, texts, repeats)
                n = sentence_conversations if sentence else conversations
                many = concurrent(model, vocab, test, n, 3 if sentence else 10,
                                  warmup=1 if sentence else window)
                out["readers"].append({"reader": label, "window": window, "stream": stream,
                                       "concurrent": many})
                full = stream["full_window"] or stream
                log(f"{label} K={window} ({stream['mode']}): one conversation median "
                    f"{stream['median_ms']:.3f} ms (full windows {full['median_ms']:.3f}, p99 "
                    f"{full['p99_ms']:.3f}; CPU {stream['cpu_ms_mean']:.3f}); {n} conversations {many['per_utterance_ms']:.4f} "
                    f"ms/utterance ({many['utterances_per_s']:.0f} utt/s)")
        return out
