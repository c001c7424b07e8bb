"""Real-time streaming recognition: one utterance in, its emotion out, many conversations at once.

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

from . import ops
from ._io import atomic_torch_save
from .data import Vocabulary, tokenize
from .models import AGHMN, pad_token_ids
from .models.aghmn import BiGRUReader

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
            first use; see :class:`_GraphedStep`;
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
        if path not in (None, "push", "graph", "step", "ops"):
            raise ValueError(f"path must be 'push', 'graph', 'step', 'ops' or None, got {path!r}")
        self._engine = path in (None, "push") and self._find_engine()
        self._fused_step = None
        if path in (None, "graph", "step") and not self._engine:
            self._fused_step = self._find_fused_step()
        self._graph = _GraphedStep.for_recognizer(self, path)
        if path is not None and path != self.path:
            raise ValueError(f"path {path!r} is not available here (device {self.device}, dtype "
                             f"{self.dtype}, model backend {self.model.config.backend!r}, "
                             f"backends loaded: {ops.backends()}); available: {self.path!r}")
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
    def from_checkpoint(cls, path: str, device=None, backend: Optional[str] = None) -> "StreamingRecognizer":
        """A recognizer for a checkpoint written by ``aghmn-fast train``.

        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not
        a valid checkpoint, an unavailable ``device`` or an unavailable ``backend``.
        """
        from .train import load_checkpoint
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

    def _find_engine(self) -> bool:
        # The CPU one-call push (reader included) needs the compiled CPU kernels; it packs the
        # weights once, here: a model changed after this needs a new recognizer.
        model, cfg = self.model, self.model.config
        if (self.device.type != "cpu" or self.dtype not in (torch.float32, torch.float64)
                or ops.resolve_backend(cfg.backend, self.device).name != "cpu"):
            return False
        try:
            self._push_op = torch.ops.aghmn_fast.stream_push
            pack = torch.ops.aghmn_fast.stream_pack
        except (AttributeError, RuntimeError):
            return False
        self._bigru = isinstance(model.reader, BiGRUReader)
        weights = []
        if self._bigru:
            gru = model.reader.gru
            weights += [getattr(gru, f"{n}_l0{s}") for s in ("", "_reverse")
                        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            weights += [model.reader.proj.weight, model.reader.proj.bias]
        if self.num_dirs:
            weights += list(model.fusion._flat_weights)  # (w_ih, w_hh, b_ih, b_hh) per direction
        summary = self._agru_weights()
        weights += summary + [model.classifier.weight, model.classifier.bias]
        self._dims = [self.hidden, cfg.embedding_dim, cfg.num_classes, self.window, self.num_dirs,
                      len(summary) // 4, cfg.hops, cfg.max_len, int(self._bigru)]
        with torch.no_grad():
            self._packed = pack([w.detach().contiguous() for w in weights], self._dims)
        # A sentence reader has no word table; the push then takes u, and never reads this.
        table = (model.embedding.weight if model.embedding is not None
                 else torch.zeros(0, cfg.embedding_dim, dtype=self.dtype))
        self._embedding = table.detach().contiguous()
        return True

    def _find_fused_step(self):
        # The one-op step needs the compiled recurrences for this device; else the ops path.
        backend = ops.resolve_backend(self.model.config.backend, self.device).name
        if backend not in ("cpu", "cuda") or not self.model.config.has_context:
            return None
        try:
            step = torch.ops.aghmn_fast.stream_step
        except (AttributeError, RuntimeError):
            return None
        self._summary_weights = [w.detach() for w in self._agru_weights()]
        return step

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
        if self._engine:
            return "push"
        if self._graph is not None:
            return "graph"
        return "step" if self._fused_step is not None else "ops"

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

    def _step(self, cids: Sequence[Hashable], token_ids: Sequence[List[int]]) -> Tensor:
        model = self.model
        for cid in cids:
            if cid not in self._blocks:
                if not self._free:
                    self._grow(2 * self._capacity)
                self._blocks[cid], self._counts[cid] = self._free.pop(), 0
        if self._engine:
            return self._engine_step(cids, token_ids)
        u = self._reader_vectors(token_ids)
        has_past = [self._counts[c] > 0 for c in cids]
        if model.config.has_context and all(has_past):  # the steady state: one fused call
            if self._graph is not None:  # the same call and the store write, graph-replayed
                return self._graph.step(cids, u)
            probs = self._context_probs(u, self._window_rows(cids))
        else:
            probs = F.softmax(model.classifier(u), dim=-1)
            if model.config.has_context and any(has_past):
                q_idx = torch.tensor([i for i, h in enumerate(has_past) if h], device=self.device)
                windows = self._window_rows([c for c, h in zip(cids, has_past) if h])
                probs = probs.index_copy(0, q_idx, self._context_probs(u[q_idx], windows))
        self._remember(cids, u)
        return probs

    def _engine_step(self, cids: Sequence[Hashable], token_ids: Sequence[List[int]]) -> Tensor:
        """One call of the compiled push: reader, memory update, summary, classifier, ring write."""
        blocks = [self._blocks[c] for c in cids]
        counts = [self._counts[c] for c in cids]
        if self._bigru:
            max_len = self.model.config.max_len
            ids = [t[:max_len] if t else [1] for t in token_ids]  # empty -> one <unk>, as offline
            flat = ids[0] if len(ids) == 1 else [i for t in ids for i in t]
            probs = self._push_op(self._packed, self._dims, self._embedding, flat,
                                  [len(t) for t in ids], None, blocks, counts, self._u, self._proj)
        else:
            u = self._reader_vectors(token_ids).contiguous()
            probs = self._push_op(self._packed, self._dims, self._embedding, [], [], u, blocks,
                                  counts, self._u, self._proj)
        for c in cids:
            self._counts[c] += 1
        return probs

    def _reader_vectors(self, items: Sequence) -> Tensor:
        """Reader vectors u [B, H] of the pushed utterances (token ids, or texts for a sentence
        reader), computed by the model's own reader."""
        model = self.model
        if model.embedding is None:
            return model.encode_texts(items)
        tokens, lengths = pad_token_ids(items, model.config.max_len)
        return model.encode_utterances(tokens.to(self.device), lengths)

    def _context_probs(self, q: Tensor, windows: Tensor) -> Tensor:
        """Class probabilities of queries q [B, H] over their windows of stored utterances."""
        model = self.model
        if self._fused_step is not None:
            return self._fused_step(q, windows, self._u, self._proj, self._pad_proj, self._w_hh,
                                    self._b_hh, self._summary_weights, model.config.hops,
                                    model.classifier.weight, model.classifier.bias)
        keep = (windows >= 0).unsqueeze(-1).to(q.dtype)
        memory = self._u[windows.clamp(min=0)] * keep + ops.window_gru(
            self._proj, self._pad_proj, self._w_hh, self._b_hh, windows,
            backend=model.config.backend).sum(0)
        e = model.summarize(q, memory, windows >= 0)
        return F.softmax(model.classifier(e), dim=-1)

    def _remember(self, cids: Sequence[Hashable], u: Tensor) -> None:
        K = self.window
        slots = torch.tensor([self._blocks[c] * K + self._counts[c] % K for c in cids],
                             dtype=torch.int64, device=self.device)
        self._u[slots] = u
        for d in range(self.num_dirs):
            self._proj[d, slots] = F.linear(u, self._w_ih[d], self._b_ih[d])
        for c in cids:
            self._counts[c] += 1

    def _prediction(self, cid, index: int, p: List[float]) -> Prediction:
        best = max(range(len(p)), key=p.__getitem__)
        return Prediction(cid, index, self.label_names[best], best,
                          dict(zip(self.label_names, p)), 0.0)


class _GraphedStep:
    """The post-reader part of a steady-state push as CUDA graphs, one per batch bucket.

    A step of B conversations that all have a past is: the fused ``stream_step`` call over the
    ring store, then the store write of the new utterances (their vectors and fusion
    projections). Eagerly that is dozens of kernel launches; here it is one graph replay per
    bucket of up to 1,024 conversations (``BUCKETS``; larger rounds run in chunks, which
    touch disjoint conversations). Inputs go through static buffers; the rows that pad B up to
    the bucket repeat row 0, so they compute and write exactly what row 0 does (duplicate,
    identical writes) and their outputs are dropped.

    Graphs hold the store's addresses: when the store is reallocated (it grew, or a state was
    loaded) they are dropped and captured again. Capture needs CUDA; with ``capture=False``
    (tests on the CPU) the same buffers and bucketing run eagerly instead of being replayed.
    """

    BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

    def __init__(self, rec: "StreamingRecognizer", capture: bool = True):
        self.rec = rec
        self.capture = capture
        self._graphs: Dict[int, tuple] = {}
        self._store = None
        self._pool = None

    @classmethod
    def for_recognizer(cls, rec: "StreamingRecognizer", path: Optional[str]):
        """The graph step when ``path`` asks for it (or is None) and it can run, else None."""
        # Opt-in until measured on a GPU (benchmarks/gpu_suite.sh compares it with "step").
        if path != "graph" or rec._fused_step is None or rec._engine:
            return None
        if rec.device.type != "cuda" or not torch.cuda.is_available():
            return None
        return cls(rec)

    def step(self, cids: Sequence[Hashable], u: Tensor) -> Tensor:
        """Class probabilities [B, C] of u [B, H] (every conversation has a past); writes the
        store and advances the counts as ``_remember`` does."""
        rec, K = self.rec, self.rec.window
        windows = rec._window_rows(cids)
        slots = torch.tensor([rec._blocks[c] * K + rec._counts[c] % K for c in cids],
                             dtype=torch.int64, device=rec.device)
        store = (rec._u.data_ptr(), rec._proj.data_ptr(), rec._u.shape[0])
        if store != self._store:
            self._graphs.clear()
            self._store = store
        top = self.BUCKETS[-1]
        probs = [self._run(u[i:i + top], windows[i:i + top], slots[i:i + top])
                 for i in range(0, u.shape[0], top)]
        for c in cids:
            rec._counts[c] += 1
        return probs[0] if len(probs) == 1 else torch.cat(probs)

    def _run(self, u: Tensor, windows: Tensor, slots: Tensor) -> Tensor:
        B = u.shape[0]
        bucket = next(b for b in self.BUCKETS if b >= B)
        entry = self._graphs.get(bucket)
        if entry is None:
            entry = self._graphs[bucket] = self._build(bucket, u.dtype)
        graph, q, win, slot, out = entry
        q[:B].copy_(u)
        win[:B].copy_(windows)
        slot[:B].copy_(slots)
        if B < bucket:  # pad with row 0: the same computation and the same write
            q[B:].copy_(u[:1].expand(bucket - B, -1))
            win[B:].copy_(windows[:1].expand(bucket - B, -1))
            slot[B:].copy_(slots[:1].expand(bucket - B))
        if graph is None:
            out = self._body(q, win, slot)
        else:
            graph.replay()
        return out[:B].clone()

    def _body(self, q: Tensor, win: Tensor, slot: Tensor, write: bool = True) -> Tensor:
        rec = self.rec
        probs = rec._context_probs(q, win)
        if write:
            rec._u.index_copy_(0, slot, q)
            for d in range(rec.num_dirs):
                rec._proj[d].index_copy_(0, slot, F.linear(q, rec._w_ih[d], rec._b_ih[d]))
        return probs

    def _build(self, bucket: int, dtype: torch.dtype) -> tuple:
        rec = self.rec
        q = torch.zeros(bucket, rec.hidden, dtype=dtype, device=rec.device)
        win = torch.full((bucket, rec.window), -1, dtype=torch.int64, device=rec.device)
        slot = torch.zeros(bucket, dtype=torch.int64, device=rec.device)
        if not self.capture:
            return None, q, win, slot, None
        # Warm-up off the capture (library handles, kernel attributes), without the store
        # write: every window is empty, so nothing stored is read either.
        side = torch.cuda.Stream(rec.device)
        side.wait_stream(torch.cuda.current_stream(rec.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._body(q, win, slot, write=False)
        torch.cuda.current_stream(rec.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._body(q, win, slot)
        return graph, q, win, slot, out


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
