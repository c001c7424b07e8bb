"""The public streaming API: :class:`StreamingRecognizer` (input checks, predictions, state
files) and :class:`Prediction`. The conversation table and ring store are a
:class:`~aghmn_fast.streaming.store.RingStore`; how a push is computed is a mode
(:mod:`.modes`).

Per conversation the recognizer keeps only what the next utterance needs: the reader vector and
the fusion-GRU input projections (every direction) of its last K utterances, in a ring of K slots
of a shared store. A new utterance costs its own reader pass and projection plus one window
recurrence over the stored projections (the incremental memory update), then attention, the
AGRU and the classifier; the conversation is never re-read. The arithmetic is that of the offline
model (:class:`aghmn_fast.models.AGHMN` in eval mode), so predictions match it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import ops
from .._io import atomic_torch_save
from ..data import Vocabulary, tokenize
from ..models import AGHMN
from ..models.checkpoint import load_checkpoint
from ..precision import check_precision
from .modes import DEFAULT_ORDER, MODES, Mode, fusion_weights
from .store import RingStore

STATE_FORMAT = "aghmn_fast.stream_state.v2"  # v2: the fingerprint hashes the weights' bytes


@dataclasses.dataclass
class Prediction:
    """The recognizer's answer for one utterance."""
    conversation_id: Hashable
    index: int            # position of the utterance in its conversation (0-based)
    label: str
    label_id: int
    probabilities: Dict[str, float]
    latency_ms: float     # wall time of the push / push_many call that produced it

    def to_dict(self) -> dict:
        """JSON-ready form (the ``aghmn-fast stream`` output line)."""
        return {"id": self.conversation_id, "index": self.index, "label": self.label,
                "probabilities": self.probabilities, "latency_ms": round(self.latency_ms, 4)}


class StreamingRecognizer:
    """Streams utterances of many live conversations through a trained AGHMN model.

    Args:
        model: an :class:`AGHMN` (used in eval mode; its weights are not modified).
        device: where to run (default: the model's device).
        vocab: the model's vocabulary (default: ``model.vocab``, set by :meth:`from_checkpoint`).
        label_names: class names (default: ``model.label_names``).
        mode: how a push is computed (the results agree within fp32 rounding):
            ``"push"``: one compiled call per push does everything, the reader included, and
            writes the ring store (CPU, float32/float64, "cpu" backend; weights are packed at
            construction, so a model changed afterwards needs a new recognizer);
            ``"graph"`` (CUDA only): the "step" mode with everything after the reader (memory
            update, summary, classifier, ring-store write) replayed as one CUDA graph per batch
            bucket (1, 2, 4, .., 1,024 conversations; larger rounds in chunks), captured on
            first use; see :class:`~aghmn_fast.streaming.modes.GraphMode`;
            ``"step"``: the reader in PyTorch, then one compiled call for the rest (CPU or CUDA);
            ``"ops"``: the model's own layers op by op (any backend). Default: the first of
            "push", "step", "ops" that is available ("graph" only when asked for: it has not
            run on a GPU yet).
        precision: ``"fp32"`` (default: the model's own dtype) or ``"bf16"``: the weights, the
            embedding table and the ring store in bfloat16, arithmetic in float32, half the
            state bytes per conversation (the "push" mode only: CPU, a float32 model, the
            compiled extension; the native runtime gives the same probabilities bit for bit).
        projection_cache: True (default): the ring store keeps each stored utterance's fusion
            input projections; False: the reader vectors only, and every push recomputes the
            window's projections (the "push" mode only): the same probabilities and state files
            bit for bit, 1 / (1 + 3 * directions) of the bytes per conversation (a seventh for
            BiF), more work per push (docs/results/serving-memory-compact.md).

    Text handling: utterances are tokenized as in training and truncated to the model's
    ``max_len`` (60) tokens, so a 10,000-word utterance costs as much as a 60-word one; empty or
    whitespace-only text raises ``ValueError`` and leaves every conversation untouched. A
    sentence reader (``reader="minilm"``) gets the whole text, encoded by the model's frozen
    sentence encoder (cached per text, shared with the offline model) in PyTorch.

    One recognizer is not safe to share between Python threads without a lock (its conversation
    table and store are updated in place); to serve from several threads, give each its own
    recognizer or serialise the calls. ``push_many`` already uses the torch threads for a batch.

    Attributes: ``compute``, the :class:`~aghmn_fast.streaming.modes.Mode` that computes the
    pushes (``compute.name == mode``); ``store``, the
    :class:`~aghmn_fast.streaming.store.RingStore` of the open conversations.
    """

    def __init__(self, model: AGHMN, device=None, *, vocab: Optional[Vocabulary] = None,
                 label_names: Optional[Sequence[str]] = None, mode: Optional[str] = None,
                 precision: str = "fp32", projection_cache: bool = True):
        self.precision = check_precision(precision)
        if not isinstance(projection_cache, bool):
            raise TypeError(f"projection_cache must be a bool, got {type(projection_cache).__name__}")
        self.projection_cache = projection_cache
        if not isinstance(model, AGHMN):
            raise TypeError(f"model must be an aghmn_fast.models.AGHMN, got {type(model).__name__}")
        self.vocab = vocab if vocab is not None else getattr(model, "vocab", None)
        self.label_names = list(label_names if label_names is not None
                                else getattr(model, "label_names", []))
        if self.vocab is None:
            raise ValueError("vocab is required (or use StreamingRecognizer.from_checkpoint)")
        if len(self.label_names) != model.config.num_classes:
            raise ValueError(f"label_names must name the model's {model.config.num_classes} classes")
        self.device = _usable_device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        cfg = model.config
        self.window, self.hidden = cfg.window, cfg.hidden_size
        self.dtype = next(model.parameters()).dtype
        if precision == "bf16":
            if mode not in (None, "push"):
                raise ValueError(f"precision='bf16' runs in mode 'push' only, got mode={mode!r}")
            mode = "push"
        if not projection_cache:
            if mode not in (None, "push"):
                raise ValueError(f"projection_cache=False runs in mode 'push' only, got mode={mode!r}")
            mode = "push"
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))} or None, "
                             f"got {mode!r}")
        w_ih, b_ih, _, _ = fusion_weights(self.model)
        store_dtype = torch.bfloat16 if precision == "bf16" else self.dtype
        self.store = RingStore(self.window, self.hidden, w_ih, b_ih, dtype=store_dtype,
                               device=self.device, projection_cache=projection_cache)
        self.num_dirs = self.store.num_dirs
        self.compute: Mode = self._choose_mode(mode)

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path, device=None, backend: Optional[str] = None,
                        precision: str = "fp32", projection_cache: bool = True) -> "StreamingRecognizer":
        """A recognizer for a checkpoint written by ``aghmn-fast train`` (for several checkpoints
        averaged: :func:`aghmn_fast.streaming.recognizer_from_checkpoints`).

        ``precision``: ``"fp32"`` or ``"bf16"``; ``projection_cache`` (see the class doc).

        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not
        a valid checkpoint, an unavailable ``device``, ``backend`` or ``precision``; ``TypeError``
        for a list of paths.
        """
        check_precision(precision)
        if isinstance(path, (list, tuple)):
            raise TypeError("StreamingRecognizer.from_checkpoint takes one checkpoint path; for "
                            "several use aghmn_fast.streaming.recognizer_from_checkpoints")
        if device is not None:
            device = _usable_device(device)
        model, vocab, labels, _ = load_checkpoint(path, backend=backend)
        return cls(model, device, vocab=vocab, label_names=labels, precision=precision,
                   projection_cache=projection_cache)

    def _choose_mode(self, mode: Optional[str]) -> Mode:
        # Modes pack or look up what they need here: a model changed afterwards needs a new
        # recognizer.
        for name in (mode,) if mode is not None else DEFAULT_ORDER:
            compute = MODES[name].create(self.model, self.store)
            if compute is not None:
                return compute
        if self.precision == "bf16" or not self.projection_cache:
            what = "precision='bf16'" if self.precision == "bf16" else "projection_cache=False"
            raise ValueError(f"{what} needs the 'push' mode (CPU, a float32 model, the "
                             f"compiled extension), not available here (device {self.device}, "
                             f"dtype {self.dtype}, backends loaded: {ops.backends()})")
        available = next(n for n in DEFAULT_ORDER
                         if MODES[n].create(self.model, self.store) is not None)
        raise ValueError(f"mode {mode!r} is not available here (device {self.device}, dtype "
                         f"{self.dtype}, model backend {self.model.config.backend!r}, "
                         f"backends loaded: {ops.backends()}); available: {available!r}")

    # ---- public API ----------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """How pushes are computed: ``"push"``, ``"graph"``, ``"step"`` or ``"ops"`` (see the
        class doc)."""
        return self.compute.name

    @property
    def conversations(self) -> List[Hashable]:
        """Ids of the open conversations."""
        return self.store.conversations

    def utterances_seen(self, conversation_id: Hashable) -> int:
        """How many utterances of the conversation were pushed (0 if unknown)."""
        return self.store.count(conversation_id)

    @property
    def bytes_per_conversation(self) -> int:
        """Bytes of state one open conversation holds (its K ring slots; see
        :class:`~aghmn_fast.streaming.store.RingStore`)."""
        return self.store.bytes_per_conversation

    @property
    def store_bytes(self) -> int:
        """Bytes the ring store holds now (its capacity, open or not): it doubles when full
        and halves, giving the memory back, once at most a quarter is open."""
        return self.store.nbytes

    def push(self, conversation_id: Hashable, utterance_text: str) -> Prediction:
        """Classify the next utterance of a conversation (opened on its first utterance)."""
        start = time.perf_counter()
        ids = self._encode(0, (conversation_id, utterance_text))
        with torch.no_grad():
            probs = self._step([conversation_id], [ids]).tolist()[0]
        prediction = self._prediction(conversation_id, self.store.count(conversation_id) - 1,
                                      probs)
        prediction.latency_ms = (time.perf_counter() - start) * 1e3
        return prediction

    def push_many(self, items: Iterable[Tuple[Hashable, str]]) -> List[Prediction]:
        """Classify a batch of (conversation_id, utterance_text) in one fused step per round.

        A conversation may appear several times; its utterances are then taken in order (one per
        round). Everything is validated before any state changes.
        """
        start = time.perf_counter()
        items = list(items)
        token_ids = [self._encode(i, item) for i, item in enumerate(items)]
        rounds: List[List[int]] = []
        seen: Dict[Hashable, int] = {}
        for i, (cid, _) in enumerate(items):
            r = seen.get(cid, 0)
            seen[cid] = r + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(i)
        out: List[Optional[Prediction]] = [None] * len(items)
        with torch.no_grad():
            for members in rounds:
                probs = self._step([items[i][0] for i in members],
                                   [token_ids[i] for i in members]).tolist()
                for i, p in zip(members, probs):
                    cid = items[i][0]
                    out[i] = self._prediction(cid, self.store.count(cid) - 1, p)
        latency = (time.perf_counter() - start) * 1e3
        for p in out:
            p.latency_ms = latency
        return out

    def close(self, conversation_id: Hashable) -> None:
        """Forget a conversation and free its slots. Unknown ids raise ``KeyError``."""
        self.store.close(conversation_id)

    def save_state(self, path: str) -> None:
        """Write every open conversation's state (loadable with :meth:`load_state`)."""
        ids, counts, u, proj = self.store.snapshot()
        state = {"format": STATE_FORMAT, "fingerprint": self._fingerprint(),
                 "ids": [_id_to_json(c) for c in ids], "counts": counts, "u": u, "proj": proj}
        atomic_torch_save(state, path)

    def load_state(self, path: str) -> None:
        """Replace all conversations with those saved by :meth:`save_state` of the same model.

        A missing file raises ``FileNotFoundError``. A file that is not a stream state, is
        corrupted (bad shapes, counts or ids, duplicate ids) or was saved by another model
        (different weights, configuration or dtype) raises ``ValueError``; in every case the
        current state is left untouched.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except Exception as exc:
            raise ValueError(f"{path} is not a readable stream state (corrupt, truncated or not "
                             f"written by save_state: {type(exc).__name__})") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not an aghmn_fast stream state ({STATE_FORMAT})")
        if state.get("fingerprint") != self._fingerprint():
            raise ValueError(f"{path} was saved by another model (weights, configuration or "
                             "dtype differ)")
        ids, counts, u, proj = (state.get(k) for k in ("ids", "counts", "u", "proj"))
        if isinstance(ids, list):
            ids = [_id_from_json(c) for c in ids]
        try:
            self.store.restore(ids, counts, u, proj)
        except ValueError as exc:
            raise ValueError(f"{path} is corrupted ({exc})") from None

    # ---- internals -----------------------------------------------------------------------------
    def _encode(self, position: int, item) -> List[int]:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"item {position} must be a (conversation_id, text) pair")
        cid, text = item
        try:
            hash(cid)
        except TypeError:
            raise TypeError(f"conversation_id of item {position} must be hashable") from None
        if not isinstance(text, str):
            raise TypeError(f"the text of item {position} must be a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"the text of item {position} is empty or whitespace only")
        if self.model.embedding is None:  # a sentence reader reads the text itself
            return text
        return self.vocab.encode(tokenize(text, self.model.config.max_len))

    def _fingerprint(self) -> str:
        """SHA-256 of the model's configuration and the exact bytes of every weight."""
        cfg = dataclasses.asdict(self.model.config)
        cfg.pop("backend", None)
        digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
        for name, tensor in self.model.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()

    def _step(self, cids: Sequence[Hashable], items: Sequence) -> Tensor:
        """Open unknown conversations, then one step of the mode (which also writes the store
        and advances the counts)."""
        for cid in cids:
            self.store.open(cid)
        return self.compute.step(cids, items)

    def _prediction(self, cid, index: int, p: List[float]) -> Prediction:
        best = max(range(len(p)), key=p.__getitem__)
        return Prediction(cid, index, self.label_names[best], best,
                          dict(zip(self.label_names, p)), 0.0)


def _id_to_json(cid):
    if isinstance(cid, (str, int)) and not isinstance(cid, bool):
        return cid
    raise TypeError(f"save_state supports str or int conversation ids, got {type(cid).__name__}")


def _usable_device(device) -> torch.device:
    """``device`` as a ``torch.device``; ``ValueError`` if it is malformed or not present."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} is not available: this torch "
                             f"({torch.__version__}) has no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} is not available: "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "meta"):
        raise ValueError(f"device {device!r} is not supported (use cpu or cuda)")
    return dev


def _id_from_json(cid):
    if isinstance(cid, bool) or not isinstance(cid, (str, int)):
        raise ValueError("stream state holds an invalid conversation id")
    return cid
