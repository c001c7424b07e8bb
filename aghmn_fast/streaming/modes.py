"""How a push is computed: one named mode per way of computing it, all with the same contract.

A mode is built over a model and a :class:`~aghmn_fast.streaming.store.RingStore` (it reads
and writes the store only through the store's public contract). ``Mode.step(cids, items)``
takes conversations that are already open in the store and one utterance each (token ids, or the
text for a sentence reader), returns the class probabilities [B, C], writes the new utterances
into the store and advances the conversations' counts. The modes, fastest first:

- :class:`PushMode` ("push"): one compiled call does everything, the reader and the store
  write included (CPU, float32/float64, the "cpu" backend);
- :class:`GraphMode` ("graph", opt-in, CUDA): :class:`StepMode` with the steady state
  replayed as CUDA graphs;
- :class:`StepMode` ("step"): the reader in PyTorch, then one compiled call for the memory
  update, the summary and the classifier (CPU or CUDA);
- :class:`OpsMode` ("ops"): the model's own layers op by op (any backend).
"""
from __future__ import annotations

from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from .. import ops
from ..models import AGHMN, pad_token_ids
from ..models.aghmn import BiGRUReader
from ..precision import to_bfloat16
from .store import RingStore


class Mode:
    """The contract of every mode (see the module doc); ``create`` returns None where the
    mode cannot run (device, dtype, backend, model or a missing compiled op)."""

    name = ""

    def __init__(self, model: AGHMN, store: RingStore):
        self.model, self.store = model, store

    @classmethod
    def create(cls, model: AGHMN, store: RingStore) -> Optional["Mode"]:
        """This mode for ``model`` over ``store``, or None if it cannot run there."""
        return cls(model, store)

    def step(self, cids: Sequence[Hashable], items: Sequence) -> Tensor:
        """Probabilities [B, C] of one utterance per conversation; writes the store, counts."""
        raise NotImplementedError


class OpsMode(Mode):
    """The model's layers op by op: runs wherever the model runs."""

    name = "ops"

    def __init__(self, model: AGHMN, store: RingStore):
        super().__init__(model, store)
        self.w_hh, self.b_hh = fusion_weights(model)[2:]

    def step(self, cids: Sequence[Hashable], items: Sequence) -> Tensor:
        model, store = self.model, self.store
        u = reader_vectors(model, items, store.device)
        has_past = [n > 0 for n in store.counts(cids)]
        if model.config.has_context and all(has_past):
            return self.steady_step(cids, u)
        probs = F.softmax(model.classifier(u), dim=-1)
        if model.config.has_context and any(has_past):
            q_idx = torch.tensor([i for i, h in enumerate(has_past) if h], device=store.device)
            windows = store.window_rows([c for c, h in zip(cids, has_past) if h])
            probs = probs.index_copy(0, q_idx, self.context_probs(u[q_idx], windows))
        store.remember(cids, u)
        return probs

    def steady_step(self, cids: Sequence[Hashable], u: Tensor) -> Tensor:
        """Every conversation has a past: context probabilities, then the store write."""
        probs = self.context_probs(u, self.store.window_rows(cids))
        self.store.remember(cids, u)
        return probs

    def context_probs(self, q: Tensor, windows: Tensor) -> Tensor:
        """Class probabilities of queries q [B, H] over their windows of stored utterances."""
        model, store = self.model, self.store
        keep = (windows >= 0).unsqueeze(-1).to(q.dtype)
        memory = store.u[windows.clamp(min=0)] * keep + ops.window_gru(
            store.proj, store.pad_proj, self.w_hh, self.b_hh, windows,
            backend=model.config.backend).sum(0)
        e = model.summarize(q, memory, windows >= 0)
        return F.softmax(model.classifier(e), dim=-1)


class StepMode(OpsMode):
    """The reader in PyTorch, then the compiled ``stream_step`` op for the rest."""

    name = "step"

    def __init__(self, model: AGHMN, store: RingStore, op):
        super().__init__(model, store)
        self.op = op
        self.summary_weights = [w.detach() for w in agru_weights(model)]

    @classmethod
    def create(cls, model: AGHMN, store: RingStore) -> Optional["StepMode"]:
        backend = ops.resolve_backend(model.config.backend, store.device).name
        if backend not in ("cpu", "cuda") or not model.config.has_context:
            return None
        try:
            op = torch.ops.aghmn_fast.stream_step
        except (AttributeError, RuntimeError):
            return None
        return cls(model, store, op)

    def context_probs(self, q: Tensor, windows: Tensor) -> Tensor:
        model, store = self.model, self.store
        return self.op(q, windows, store.u, store.proj, store.pad_proj, self.w_hh, self.b_hh,
                       self.summary_weights, model.config.hops, model.classifier.weight,
                       model.classifier.bias)


class GraphMode(StepMode):
    """:class:`StepMode` whose steady state (every conversation has a past) is replayed as
    CUDA graphs, one per batch bucket.

    That step is the fused ``stream_step`` call over the ring store, then the store write of the
    new utterances; eagerly dozens of kernel launches, here one graph replay per bucket of up to
    1,024 conversations (``BUCKETS``; larger rounds run in chunks, which touch disjoint
    conversations). Inputs go through static buffers; the rows that pad B up to the bucket
    repeat row 0, so they compute and write exactly what row 0 does (duplicate, identical writes)
    and their outputs are dropped.

    Graphs hold the store's addresses: when the store is reallocated (it grew, or a state was
    loaded) they are dropped and captured again. Capture needs CUDA; with ``capture=False``
    (tests on the CPU) the same buffers and bucketing run eagerly instead of being replayed.
    """

    name = "graph"
    BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

    def __init__(self, model: AGHMN, store: RingStore, op, capture: bool = True):
        super().__init__(model, store, op)
        self.capture = capture
        self._graphs: Dict[int, tuple] = {}
        self._store = None
        self._pool = None

    @classmethod
    def create(cls, model: AGHMN, store: RingStore,
               capture: bool = True) -> Optional["GraphMode"]:
        # Opt-in until measured on a GPU (benchmarks/gpu_suite.sh compares it with "step").
        if capture and (store.device.type != "cuda" or not torch.cuda.is_available()):
            return None
        step = StepMode.create(model, store)
        return None if step is None else cls(model, store, step.op, capture)

    def steady_step(self, cids: Sequence[Hashable], u: Tensor) -> Tensor:
        store = self.store
        windows = store.window_rows(cids)
        slots = store.slots(cids)
        layout = (store.u.data_ptr(), store.proj.data_ptr(), store.u.shape[0])
        if layout != self._store:
            self._graphs.clear()
            self._store = layout
        top = self.BUCKETS[-1]
        probs = [self._run(u[i:i + top], windows[i:i + top], slots[i:i + top])
                 for i in range(0, u.shape[0], top)]
        store.advance(cids)
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
        probs = self.context_probs(q, win)
        if write:
            self.store.write(slot, q)
        return probs

    def _build(self, bucket: int, dtype: torch.dtype) -> tuple:
        store = self.store
        device = store.device
        q = torch.zeros(bucket, store.hidden, dtype=dtype, device=device)
        win = torch.full((bucket, store.window), -1, dtype=torch.int64, device=device)
        slot = torch.zeros(bucket, dtype=torch.int64, device=device)
        if not self.capture:
            return None, q, win, slot, None
        # Warm-up off the capture (library handles, kernel attributes), without the store
        # write: every window is empty, so nothing stored is read either.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._body(q, win, slot, write=False)
        torch.cuda.current_stream(device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._body(q, win, slot)
        return graph, q, win, slot, out


class PushMode(Mode):
    """One compiled call per push: reader, memory update, summary, classifier and ring write,
    over weights packed once at construction. A bfloat16 store (precision "bf16") packs the
    weights and the embedding table as bf16 and computes in float32 (the only mode that can)."""

    name = "push"

    def __init__(self, model: AGHMN, store: RingStore, op, packed: Tensor, sizes: Dict[str, int],
                 embedding: Tensor, bigru: bool):
        super().__init__(model, store)
        self.op, self.packed, self.sizes, self.embedding, self.bigru = (op, packed, sizes,
                                                                        embedding, bigru)

    @classmethod
    def create(cls, model: AGHMN, store: RingStore) -> Optional["PushMode"]:
        cfg = model.config
        bf16 = store.dtype == torch.bfloat16
        model_dtype = next(model.parameters()).dtype
        if (store.device.type != "cpu"
                or store.dtype not in (torch.float32, torch.float64, torch.bfloat16)
                or (bf16 and model_dtype != torch.float32)
                or ops.resolve_backend(cfg.backend, store.device).name != "cpu"):
            return None
        try:
            op = torch.ops.aghmn_fast.stream_push
            pack = torch.ops.aghmn_fast.stream_pack
            project = torch.ops.aghmn_fast.stream_project
        except (AttributeError, RuntimeError):
            return None
        bigru = isinstance(model.reader, BiGRUReader)
        weights = []
        if bigru:
            gru = model.reader.gru
            weights += [getattr(gru, f"{n}_l0{s}") for s in ("", "_reverse")
                        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            weights += [model.reader.proj.weight, model.reader.proj.bias]
        if store.num_dirs:
            weights += list(model.fusion._flat_weights)  # (w_ih, w_hh, b_ih, b_hh) per direction
        summary = agru_weights(model)
        weights += summary + [model.classifier.weight, model.classifier.bias]
        # The model's sizes: named arguments of both ops (docs/OPS.md).
        sizes = dict(H=store.hidden, E=cfg.embedding_dim, C=cfg.num_classes, K=store.window,
                     D=store.num_dirs, S=len(summary) // 4, hops=cfg.hops, max_len=cfg.max_len,
                     bigru_reader=bigru)
        with torch.no_grad():
            packed = pack([w.detach().contiguous() for w in weights], **sizes,
                          precision="bf16" if bf16 else "fp32")
        # A sentence reader has no word table; the push then takes u, and never reads this.
        table = (model.embedding.weight.detach() if model.embedding is not None
                 else torch.zeros(0, cfg.embedding_dim, dtype=model_dtype))
        table = to_bfloat16(table) if bf16 else table.contiguous()
        store.project = lambda u: project(packed, u.contiguous(), **sizes)
        return cls(model, store, op, packed, sizes, table, bigru)

    def step(self, cids: Sequence[Hashable], items: Sequence) -> Tensor:
        store = self.store
        blocks, counts = store.blocks(cids), store.counts(cids)
        if self.bigru:
            max_len = self.model.config.max_len
            ids = [t[:max_len] if t else [1] for t in items]  # empty -> one <unk>, as offline
            flat = ids[0] if len(ids) == 1 else [i for t in ids for i in t]
            probs = self.op(self.packed, self.embedding, flat, [len(t) for t in ids], None,
                            blocks, counts, store.u, store.proj, **self.sizes)
        else:
            u = reader_vectors(self.model, items, store.device).to(self.packed.dtype).contiguous()
            probs = self.op(self.packed, self.embedding, [], [], u, blocks, counts, store.u,
                            store.proj, **self.sizes)
        store.advance(cids)
        return probs


def reader_vectors(model: AGHMN, items: Sequence, device: torch.device) -> Tensor:
    """Reader vectors u [B, H] of utterances (token ids, or texts for a sentence reader),
    computed by the model's own reader."""
    if model.embedding is None:
        return model.encode_texts(items)
    tokens, lengths = pad_token_ids(items, model.config.max_len)
    return model.encode_utterances(tokens.to(device), lengths)


def agru_weights(model: AGHMN) -> List[Tensor]:
    """The AGRU cells' (weight_ih, weight_hh, bias_ih, bias_hh), forward cell first."""
    agru = model.agru
    return [] if agru is None else [
        getattr(agru, f"{n}_l0{s}") for s in agru.suffixes
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def fusion_weights(model: AGHMN) -> Tuple[List[Tensor], List[Tensor], Optional[Tensor],
                                          Optional[Tensor]]:
    """The fusion GRU's ``(w_ih, b_ih, w_hh, b_hh)``: the input weights and biases as lists (one
    per direction, what the store projects with), the recurrent ones stacked [D, ...] (None
    without fusion)."""
    if model.fusion is None:
        return [], [], None, None
    flat = [w.detach() for w in model.fusion._flat_weights]
    d = range(2 if model.fusion.bidirectional else 1)
    return ([flat[4 * i] for i in d], [flat[4 * i + 2] for i in d],
            torch.stack([flat[4 * i + 1] for i in d]), torch.stack([flat[4 * i + 3] for i in d]))


MODES = {"push": PushMode, "graph": GraphMode, "step": StepMode, "ops": OpsMode}
DEFAULT_ORDER = ("push", "step", "ops")  # "graph" only when asked for: not yet run on a GPU
