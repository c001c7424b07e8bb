"""The public streaming API: :class:`StreamingRecognizer` (conversation table, ring store, state
files) and :class:`Prediction`. How a push is computed is an engine (:mod:`.engines`).

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
from torch.nn import functional as F

from .. import ops
from .._io import atomic_torch_save
from ..data import Vocabulary, tokenize
from ..models import AGHMN, pad_token_ids
from .engines import DEFAULT_ORDER, ENGINES, Engine

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
        path: how a push is computed (the results agree within fp32 rounding):
            ``"push"``: one compiled call per push does everything, the reader included, and
            writes the ring store (CPU, float32/float64, "cpu" backend; weights are packed at
            construction, so a model changed afterwards needs a new recognizer);
            ``"graph"`` (CUDA only): the "step" path with everything after the reader (memory
            update, summary, classifier, ring-store write) replayed as one CUDA graph per batch
            bucket (1, 2, 4, .., 1,024 conversations; larger rounds in chunks), captured on
            first use; see :class:`~aghmn_fast.streaming.engines.GraphEngine`;
            ``"step"``: the reader in PyTorch, then one compiled call for the rest (CPU or CUDA);
            ``"ops"``: the model's own layers op by op (any backend). Default: the first of
            "push", "step", "ops" that is available ("graph" only when asked for: it has not
            run on a GPU yet).

    Text handling: utterances are tokenized as in training and truncated to the model's
    ``max_len`` (60) tokens, so a 10,000-word utterance costs as much as a 60-word one; empty or
    whitespace-only text raises ``ValueError`` and leaves every conversation untouched. A
    sentence reader (``reader="minilm"``) gets the whole text, encoded by the model's frozen
    sentence encoder (cached per text, shared with the offline model) in PyTorch.

    One recognizer is not safe to share between Python threads without a lock (its conversation
    table and store are updated in place); to serve from several threads, give each its own
    recognizer or serialise the calls. ``push_many`` already uses the torch threads for a batch.

    Attributes: ``engine``, the :class:`~aghmn_fast.streaming.engines.Engine` that computes the
    pushes (``engine.name == path``).
    """

    def __init__(self, model: AGHMN, device=None, *, vocab: Optional[Vocabulary] = None,
                 label_names: Optional[Sequence[str]] = None, path: Optional[str] = None):
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
        self.num_dirs = 0 if model.fusion is None else (2 if model.fusion.bidirectional else 1)
        self._fusion_weights()
        if path is not None and path not in ENGINES:
            raise ValueError(f"path must be one of {', '.join(map(repr, ENGINES))} or None, "
                             f"got {path!r}")
        self.engine: Engine = self._choose_engine(path)
        self._blocks: Dict[Hashable, int] = {}      # conversation -> block of K store slots
        self._counts: Dict[Hashable, int] = {}      # conversation -> utterances seen
        self._free: List[int] = []
        self._capacity = 0
        self._u = torch.zeros(0, self.hidden, dtype=self.dtype, device=self.device)
        self._proj = torch.zeros(max(self.num_dirs, 1), 0, 3 * self.hidden, dtype=self.dtype,
                                 device=self.device)
        self._grow(4)

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path, device=None, backend: Optional[str] = None) -> "StreamingRecognizer":
        """A recognizer for a checkpoint written by ``aghmn-fast train``; for a list of two or more
        paths, an :class:`~aghmn_fast.streaming.EnsembleRecognizer` averaging them (opt-in: N
        times the work per push).

        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not
        a valid checkpoint, an unavailable ``device`` or an unavailable ``backend`` (and, for an
        ensemble, members of different labels or windows).
        """
        from ..train import load_checkpoint
        if isinstance(path, (list, tuple)):
            if len(path) == 1:
                path = path[0]
            else:
                from .ensemble import EnsembleRecognizer
                return EnsembleRecognizer.from_checkpoints(path, device=device, backend=backend)
        if device is not None:
            device = _usable_device(device)
        model, vocab, labels, _ = load_checkpoint(path, backend=backend)
        return cls(model, device, vocab=vocab, label_names=labels)

    def _fusion_weights(self) -> None:
        if self.num_dirs == 0:
            return
        flat = [w.detach() for w in self.model.fusion._flat_weights]
        d = range(self.num_dirs)
        self._w_ih = [flat[4 * i] for i in d]
        self._b_ih = [flat[4 * i + 2] for i in d]
        self._pad_proj = torch.stack(self._b_ih)
        self._w_hh = torch.stack([flat[4 * i + 1] for i in d])
        self._b_hh = torch.stack([flat[4 * i + 3] for i in d])

    def _choose_engine(self, path: Optional[str]) -> Engine:
        # Engines pack or look up what they need here: a model changed afterwards needs a new
        # recognizer.
        for name in (path,) if path is not None else DEFAULT_ORDER:
            engine = ENGINES[name].create(self)
            if engine is not None:
                return engine
        available = next(n for n in DEFAULT_ORDER if ENGINES[n].create(self) is not None)
        raise ValueError(f"path {path!r} is not available here (device {self.device}, dtype "
                         f"{self.dtype}, model backend {self.model.config.backend!r}, "
                         f"backends loaded: {ops.backends()}); available: {available!r}")

    def _agru_weights(self) -> List[Tensor]:
        """The AGRU cells' (weight_ih, weight_hh, bias_ih, bias_hh), forward cell first."""
        agru = self.model.agru
        return [] if agru is None else [
            getattr(agru, f"{n}_l0{s}") for s in agru.suffixes
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def _grow(self, capacity: int) -> None:
        K = self.window
        extra = capacity - self._capacity
        self._u = torch.cat([self._u, self._u.new_zeros(extra * K, self.hidden)])
        self._proj = torch.cat([self._proj, self._proj.new_zeros(self._proj.shape[0], extra * K,
                                                                 3 * self.hidden)], dim=1)
        self._free.extend(range(capacity - 1, self._capacity - 1, -1))
        self._capacity = capacity

    # ---- public API ----------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """How pushes are computed: ``"push"``, ``"graph"``, ``"step"`` or ``"ops"`` (see the
        class doc)."""
        return self.engine.name

    @property
    def conversations(self) -> List[Hashable]:
        """Ids of the open conversations."""
        return list(self._blocks)

    def utterances_seen(self, conversation_id: Hashable) -> int:
        """How many utterances of the conversation were pushed (0 if unknown)."""
        return self._counts.get(conversation_id, 0)

    def push(self, conversation_id: Hashable, utterance_text: str) -> Prediction:
        """Classify the next utterance of a conversation (opened on its first utterance)."""
        start = time.perf_counter()
        ids = self._encode(0, (conversation_id, utterance_text))
        with torch.no_grad():
            probs = self._step([conversation_id], [ids]).tolist()[0]
        prediction = self._prediction(conversation_id, self._counts[conversation_id] - 1, probs)
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
                    out[i] = self._prediction(cid, self._counts[cid] - 1, p)
        latency = (time.perf_counter() - start) * 1e3
        for p in out:
            p.latency_ms = latency
        return out

    def close(self, conversation_id: Hashable) -> None:
        """Forget a conversation and free its slots. Unknown ids raise ``KeyError``."""
        if conversation_id not in self._blocks:
            raise KeyError(f"unknown conversation_id {conversation_id!r}")
        self._free.append(self._blocks.pop(conversation_id))
        del self._counts[conversation_id]

    def save_state(self, path: str) -> None:
        """Write every open conversation's state (loadable with :meth:`load_state`)."""
        ids = list(self._blocks)
        K = self.window
        slots = torch.tensor([self._blocks[c] * K + k for c in ids for k in range(K)], dtype=torch.int64)
        state = {"format": STATE_FORMAT, "fingerprint": self._fingerprint(),
                 "ids": [_id_to_json(c) for c in ids], "counts": [self._counts[c] for c in ids],
                 "u": self._u[slots.to(self.device)].cpu(),
                 "proj": self._proj[:, slots.to(self.device)].cpu()}
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
        K, width = self.window, self._proj.shape[0]
        if not isinstance(ids, list) or not isinstance(counts, list) or len(ids) != len(counts):
            raise ValueError(f"{path} is corrupted (ids and counts must be lists of one length)")
        n = len(ids)
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts):
            raise ValueError(f"{path} is corrupted (counts must be positive integers)")
        if (not isinstance(u, Tensor) or not isinstance(proj, Tensor)
                or tuple(u.shape) != (n * K, self.hidden)
                or tuple(proj.shape) != (width, n * K, 3 * self.hidden)
                or not u.is_floating_point() or not proj.is_floating_point()):
            raise ValueError(f"{path} is corrupted (stored tensors have the wrong shape or type)")
        ids = [_id_from_json(c) for c in ids]
        if len(set(ids)) != n:
            raise ValueError(f"{path} is corrupted (a conversation id appears twice)")
        self._blocks, self._counts, self._free, self._capacity = {}, {}, [], 0
        self._u = self._u.new_zeros(0, self.hidden)
        self._proj = self._proj.new_zeros(width, 0, 3 * self.hidden)
        self._grow(max(4, n))
        for b, (cid, count) in enumerate(zip(ids, counts)):
            self._free.remove(b)
            self._blocks[cid], self._counts[cid] = b, count
        self._u[: n * K] = u.to(self.device, self.dtype)
        self._proj[:, : n * K] = proj.to(self.device, self.dtype)

    # ---- internals -----------------------------------------------------------------------------
    def _encode(self, position: int, item) -> List[int]:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"item {position} must be a (conversation_id, utterance_text) pair")
        cid, text = item
        try:
            hash(cid)
        except TypeError:
            raise TypeError(f"conversation_id of item {position} must be hashable") from None
        if not isinstance(text, str):
            raise TypeError(f"utterance_text of item {position} must be a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"utterance_text of item {position} is empty or whitespace only")
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

    def _window_rows(self, cids: Sequence[Hashable]) -> Tensor:
        K, rows = self.window, []
        for cid in cids:
            n, base = self._counts[cid], self._blocks[cid] * K
            m = min(n, K)
            rows.append([-1] * (K - m) + [base + (i % K) for i in range(n - m, n)])
        return torch.tensor(rows, dtype=torch.int64, device=self.device).reshape(-1, K)

    def _step(self, cids: Sequence[Hashable], items: Sequence) -> Tensor:
        """Open unknown conversations, then one engine step (which also writes the store and
        advances the counts)."""
        for cid in cids:
            if cid not in self._blocks:
                if not self._free:
                    self._grow(2 * self._capacity)
                self._blocks[cid], self._counts[cid] = self._free.pop(), 0
        return self.engine.step(cids, items)

    def _reader_vectors(self, items: Sequence) -> Tensor:
        """Reader vectors u [B, H] of the pushed utterances (token ids, or texts for a sentence
        reader), computed by the model's own reader."""
        model = self.model
        if model.embedding is None:
            return model.encode_texts(items)
        tokens, lengths = pad_token_ids(items, model.config.max_len)
        return model.encode_utterances(tokens.to(self.device), lengths)

    def _slots(self, cids: Sequence[Hashable]) -> Tensor:
        """The store slot each conversation's next utterance goes to."""
        K = self.window
        return torch.tensor([self._blocks[c] * K + self._counts[c] % K for c in cids],
                            dtype=torch.int64, device=self.device)

    def _write(self, slots: Tensor, u: Tensor) -> None:
        """Store reader vectors and their fusion projections (every engine but the one-call push,
        whose kernel writes the same values itself)."""
        self._u.index_copy_(0, slots, u)
        for d in range(self.num_dirs):
            self._proj[d].index_copy_(0, slots, F.linear(u, self._w_ih[d], self._b_ih[d]))

    def _advance(self, cids: Sequence[Hashable]) -> None:
        for c in cids:
            self._counts[c] += 1

    def _remember(self, cids: Sequence[Hashable], u: Tensor) -> None:
        """Write the new utterances of ``cids`` into the store and count them."""
        self._write(self._slots(cids), u)
        self._advance(cids)

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
